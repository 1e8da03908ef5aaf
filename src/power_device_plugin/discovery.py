"""Pure scan of the host's devices: what would be advertised, and why.

All host access goes through two roots, so the scan runs the same on a fake tree
in tests and on ``/host/dev`` + ``/host/sys`` in the DaemonSet:

- ``<sys-root>/block`` lists the block devices: disks, their partitions
  (sub-directories holding a ``partition`` file) and device-mapper ``dm-*``
  devices, whose ``/dev/mapper`` name is in ``<sys-root>/block/dm-N/dm/name``.
- ``<dev-root>`` is where the host's ``/dev`` is visible. Config globs are written
  in host terms (``/dev/dm-*``) and matched at ``<dev-root>/dm-*``.

Selection: with no ``include-devices`` every block device from sysfs is a
candidate; with includes, only what the include globs match under dev-root is
(block devices they miss are reported as excluded). ``nx-gzip`` adds
``/dev/crypto/nx-gzip``.

Identity is the device number (``rdev``): however many names reach one device
(``/dev/dm-1``, a ``/dev/mapper/mpatha`` link or a second real node made by
``dmsetup mknodes``), it is advertised once, under the first name the config
selected (include patterns in config order). ``exclude-devices`` matches any of
those names, the ``/dev/mapper`` name and symlink targets included.

Each found path is judged by these rules, first match wins:

1. not matched by any include pattern: excluded (``include-devices``);
2. any of its names on the built-in deny list (``host_use.denied_reason``):
   refused, whatever the config;
3. an exclude pattern matches one of its names: excluded;
4. not a real device node inside dev-root (symlinks are followed, absolute
   targets read in host terms, and must stay inside dev-root; a node or link
   that vanishes mid-scan): refused;
5. a block device the host uses (mounted, active swap, or in their chain; see
   ``host_use``), or any block device when the host's use cannot be read: refused;
6. a character device found by a glob: refused (character devices only when
   named exactly, or ``nx-gzip``);
7. a passthrough character node named exactly (``/dev/sg*``, ``/dev/bsg/*``,
   ``/dev/ng*n*``, ``/dev/nvme*``; ``host_use.trace_passthrough``): refused by the
   deny list when it reaches a controller or not exactly one disk, refused as in
   use when its disk is (or when the host's use cannot be read);
8. a device already advertised under another name: excluded;
9. otherwise advertised, with its identity and any health problem from sysfs
   (a passthrough node's come from its disk).

Only passthrough candidates cost sysfs reads beyond the block devices' own: a few
for each character device named exactly in ``include-devices``.

The scan never raises for what it finds on the trees: every filesystem race is a
refused candidate.
"""

from __future__ import annotations

import glob
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import HOST_DEV_PREFIX, NX_GZIP_HOST_PATH, PluginConfig
from .host_use import (
    DENY_LIST,
    DeviceNumber,
    HostUse,
    PassthroughTarget,
    denied_char_device,
    denied_reason,
    host_glob_match,
    trace_passthrough,
)
from .small_files import list_dir as _list_dir
from .small_files import read_text

ADVERTISED = "advertised"
EXCLUDED = "excluded"
REFUSED = "refused"

SOURCE_SYSFS = "sysfs"
SOURCE_INCLUDE = "include"
SOURCE_NX_GZIP = "nx-gzip"

RULE_SYSFS = "sysfs block"
RULE_NX_GZIP = "nx-gzip"
RULE_NOT_INCLUDED = "include-devices"
RULE_IN_USE = "in use"
RULE_DENY_LIST = "built-in deny list"
RULE_CHAR_BY_NAME = "character devices by exact name"

VANISHED = "vanished during the scan"
# device/state values of a SCSI or NVMe device that can do I/O.
LIVE_DEVICE_STATES = ("running", "live")
MULTIPATH_UUID_PREFIX = "mpath-"

KIND_BLOCK = "block"
KIND_CHAR = "char"

MAX_SYMLINK_HOPS = 40

# The deny list is ~50 globs matched part by part: ~150 us per name, a third of a
# 1000-device scan. A glob part that starts with a literal character only matches
# a name part starting with it, so each pattern is reduced to those first
# characters (None where the part starts with a wildcard or is empty), by part
# count and by the first character of the last part: most names then meet no
# pattern that could match, and only the others go through the real check.
# Optional, not "str | None": an alias is evaluated at run time, on Python 3.9 too.
_Sketch = tuple[Optional[str], ...]
_WILDCARD_START = "*?["


def _sketch(pattern: str) -> _Sketch:
    return tuple(
        part[0] if part and part[0] not in _WILDCARD_START else None for part in pattern.split("/")
    )


def _deny_sketches() -> dict[tuple[int, str | None], tuple[_Sketch, ...]]:
    by_key: dict[tuple[int, str | None], list[_Sketch]] = {}
    for pattern, _why in DENY_LIST:
        sketch = _sketch(pattern)
        by_key.setdefault((len(sketch), sketch[-1]), []).append(sketch)
    return {key: tuple(sketches) for key, sketches in by_key.items()}


_DENY_SKETCHES = _deny_sketches()


def _may_be_denied(path: str) -> bool:
    """False only when no deny pattern can match ``path`` (normalised as
    ``denied_reason`` does); True sends it through the real check."""
    parts = path.split("/")
    last = parts[-1][:1] or None
    candidates = _DENY_SKETCHES.get((len(parts), last), ()) + _DENY_SKETCHES.get(
        (len(parts), None), ()
    )
    return any(
        all(want is None or part[:1] == want for want, part in zip(sketch, parts))
        for sketch in candidates
    )


def _denied_reason(host_path: str) -> str | None:
    path = posixpath.normpath(host_path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return denied_reason(host_path) if _may_be_denied(path) else None


@dataclass(frozen=True)
class Candidate:
    """One thing a scan looked at, with the verdict and the rule that decided it."""

    path: str  # as found, under dev-root (e.g. /host/dev/dm-0)
    host_path: str  # the host's view (e.g. /dev/dm-0)
    verdict: str  # ADVERTISED | EXCLUDED | REFUSED
    rule: str  # which rule decided ("include /dev/dm-*", "sysfs block", ...)
    reason: str  # human words ("not a device node (regular file)", ...)
    kind: str = ""  # KIND_BLOCK | KIND_CHAR for device nodes, "" otherwise
    aliases: tuple[str, ...] = ()  # other host names: /dev/mapper/<name>, link target
    source: str = ""  # SOURCE_SYSFS | SOURCE_INCLUDE | SOURCE_NX_GZIP
    # The node's device number (major, minor); one unit per rdev, whichever names reach it.
    rdev: DeviceNumber | None = None
    # The device's own identity where sysfs has one ("dm-uuid:<uuid>", "wwid:<wwid>"),
    # so a minor number reused for another LUN gets a new ID; "" when there is none.
    identity: str = ""
    # Why a present device is not fit for use ("device/state is offline", "size is 0",
    # "dm/suspended is 1", "no live multipath path"); "" when it is healthy.
    problem: str = ""
    # The NUMA nodes sysfs attaches the device to (device/numa_node >= 0; a dm map's
    # paths'); () when sysfs does not say.
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScanResult:
    candidates: tuple[Candidate, ...]

    def advertised(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.verdict == ADVERTISED)


def first_match(patterns: tuple[str, ...], names: tuple[str, ...]) -> str | None:
    """The first pattern matching any of the names, or None."""
    for pattern in patterns:
        if any(host_glob_match(pattern, name) for name in names):
            return pattern
    return None


def selected_by_config(
    config: PluginConfig, host_path: str, aliases: tuple[str, ...], source: str
) -> bool:
    """Whether the config still selects a device, without looking at the host.

    Used for a device that vanished: it stays on record (Unhealthy) only while the
    config would still advertise it if it came back.
    """
    names = (host_path, *aliases)
    if first_match(config.exclude_devices, names) is not None:
        return False
    if source == SOURCE_NX_GZIP:
        return config.nx_gzip and host_path == NX_GZIP_HOST_PATH
    if config.include_devices:
        return first_match(config.include_devices, names) is not None
    return source == SOURCE_SYSFS


@dataclass(frozen=True)
class _BlockDevice:
    host_path: str
    aliases: tuple[str, ...]
    entry: str = ""  # its directory in <sys-root>/block
    disk_entry: str = ""  # the disk's directory (the parent for a partition)
    rdev: DeviceNumber | None = None  # from its sysfs ``dev`` file


def _read_text(path: str) -> str | None:
    text = read_text(path)
    return None if text is None else text.strip()


def parse_device_number(text: str | None) -> DeviceNumber | None:
    """``"8:16"`` (a sysfs ``dev`` file) -> (8, 16); None when it is not that."""
    major, sep, minor = (text or "").partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return (int(major), int(minor))


def _mapper_aliases(entry: str) -> tuple[str, ...]:
    dm_name = _read_text(entry + "/dm/name")
    return (HOST_DEV_PREFIX + "mapper/" + dm_name,) if dm_name else ()


def sysfs_block_devices(sys_root: Path) -> list[_BlockDevice]:
    """Disks, their partitions and dm devices listed in ``<sys-root>/block``."""
    block_dir = os.path.join(str(sys_root), "block")
    found: list[_BlockDevice] = []
    for name in _list_dir(block_dir):
        entry = os.path.join(block_dir, name)
        # sysfs writes '/' in kernel names as '!' (cciss!c0d0 is /dev/cciss/c0d0).
        host_path = HOST_DEV_PREFIX + name.replace("!", "/")
        rdev = parse_device_number(_read_text(os.path.join(entry, "dev")))
        found.append(_BlockDevice(host_path, _mapper_aliases(entry), entry, entry, rdev))
        for child in _list_dir(entry):
            # Partitions are named after their disk (sda1 in sda); skip the attribute files.
            part = os.path.join(entry, child)
            if child.startswith(name) and os.path.isfile(os.path.join(part, "partition")):
                part_rdev = parse_device_number(_read_text(os.path.join(part, "dev")))
                host_part = HOST_DEV_PREFIX + child.replace("!", "/")
                found.append(_BlockDevice(host_part, (), part, entry, part_rdev))
    return found


def _sysfs_by_number(sys_root: Path, rdev: DeviceNumber) -> _BlockDevice | None:
    """A block device's sysfs entry from ``<sys-root>/dev/block/M:m`` (for nodes found
    by a glob whose device number ``<sys-root>/block`` did not list)."""
    link = os.path.join(str(sys_root), "dev", "block", f"{rdev[0]}:{rdev[1]}")
    if not os.path.isdir(link):
        return None
    entry = os.path.realpath(link)
    name = os.path.basename(entry)
    is_partition = os.path.isfile(os.path.join(entry, "partition"))
    disk_entry = os.path.dirname(entry) if is_partition else entry
    return _BlockDevice(
        HOST_DEV_PREFIX + name.replace("!", "/"), _mapper_aliases(entry), entry, disk_entry, rdev
    )


def sysfs_identity(entry: str, dm_uuid: str | None = None) -> str:
    """The device's own identity where sysfs has one: ``dm-uuid:<uuid>``, ``wwid:<wwid>``.

    ``dm_uuid`` is ``dm/uuid`` when the caller has read it already."""
    uuid = _read_text(entry + "/dm/uuid") if dm_uuid is None else dm_uuid
    if uuid:
        return f"dm-uuid:{uuid}"
    wwid = _read_text(entry + "/device/wwid")
    if wwid:
        return f"wwid:{wwid}"
    return ""


def sysfs_problem(entry: str, disk_entry: str, dm_uuid: str | None = None) -> str:
    """Why a present block device is not fit for use, from sysfs; "" when healthy.

    ``dm_uuid`` is ``dm/uuid`` when the caller has read it already."""
    state = _read_text((disk_entry or entry) + "/device/state")
    if state is not None and state not in LIVE_DEVICE_STATES:
        return f"device/state is {state}"
    if _read_text(entry + "/dm/suspended") == "1":
        return "dm/suspended is 1"
    if _read_text(entry + "/size") == "0":
        return "size is 0"
    uuid = (_read_text(entry + "/dm/uuid") if dm_uuid is None else dm_uuid) or ""
    if uuid.startswith(MULTIPATH_UUID_PREFIX):
        slaves_dir = entry + "/slaves"
        slaves = _list_dir(slaves_dir)
        if not slaves:
            return "no live multipath path (the map has no paths)"
        states = {s: _read_text(os.path.join(slaves_dir, s, "device", "state")) for s in slaves}
        if not any(state in LIVE_DEVICE_STATES for state in states.values()):
            paths = ", ".join(
                f"{s} {state or 'has no device/state'}" for s, state in states.items()
            )
            return f"no live multipath path ({paths})"
    return ""


def _numa_node_of(entry: str) -> int | None:
    text = _read_text(entry + "/device/numa_node")
    try:
        node = int(text) if text is not None else -1
    except ValueError:
        return None
    return node if node >= 0 else None


def sysfs_numa_nodes(entry: str, disk_entry: str) -> tuple[int, ...]:
    """The NUMA nodes of a block device: its disk's ``device/numa_node`` (a partition's
    is its disk's), or, for a dm map with none of its own, those of the paths under it.

    -1 (no affinity) and a missing file say nothing, and give ()."""
    own = _numa_node_of(disk_entry or entry)
    if own is not None:
        return (own,)
    slaves_dir = entry + "/slaves"
    nodes = {_numa_node_of(os.path.join(slaves_dir, slave)) for slave in _list_dir(slaves_dir)}
    return tuple(sorted(n for n in nodes if n is not None))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def to_host_path(path: str, dev_root: str) -> str:
    """``<dev-root>/x/y`` -> ``/dev/x/y`` (lexically, so escapes show as what they reach)."""
    normal = posixpath.normpath(path)
    inside = dev_root.rstrip("/") + "/"
    if normal.startswith(inside) and posixpath.isabs(dev_root):
        # What relpath gives for a path below an absolute root, without its two abspath calls.
        return posixpath.normpath(HOST_DEV_PREFIX + normal[len(inside) :])
    relative = posixpath.relpath(normal, dev_root)
    return posixpath.normpath(HOST_DEV_PREFIX + relative)


def to_dev_root_path(host_path: str, dev_root: str) -> str:
    """``/dev/x/y`` -> ``<dev-root>/x/y``."""
    return dev_root.rstrip("/") + host_path[len("/dev") :]


@dataclass(frozen=True)
class _Inspection:
    real_path: str  # resolved path under dev-root ("" when refused)
    kind: str
    refusal: str  # "" when the path is a usable device node
    rdev: DeviceNumber | None = None


def _refused(reason: str) -> _Inspection:
    return _Inspection("", "", reason)


def _follow_links(path: str, dev_root: str) -> tuple[str, str]:
    """Follow symlinks of the last component, keeping inside dev-root: (path, refusal)."""
    current = path
    for _ in range(MAX_SYMLINK_HOPS):
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return "", "dangling symlink" if current != path else "does not exist"
        except OSError as exc:
            return "", f"cannot be read: {exc.strerror}"
        if not stat.S_ISLNK(mode):
            return current, ""
        try:
            target = os.readlink(current)
        except FileNotFoundError:
            # Removed between lstat and readlink (udev renaming, a map going away).
            return "", VANISHED
        except OSError as exc:
            return "", f"cannot be read: {exc.strerror}"
        if target.startswith("/"):
            # Absolute links on the host point into the host's /dev, i.e. dev-root here.
            if not _inside(posixpath.normpath(target), "/dev"):
                return "", f"symlink escapes dev-root (points to {target})"
            following = to_dev_root_path(posixpath.normpath(target), dev_root)
        else:
            following = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        if not _inside(following, dev_root):
            return "", f"symlink escapes dev-root (points to {target})"
        current = following
    return "", "too many levels of symlinks"


class _RealDirs:
    """realpath of directories, remembered for one scan (most nodes share a directory)."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def real_path(self, path: str) -> str:
        parent, name = posixpath.split(path)
        real_parent = self._known.get(parent)
        if real_parent is None:
            real_parent = self._known[parent] = os.path.realpath(parent)
        return posixpath.join(real_parent, name)


def inspect_node(
    path: str, dev_root: str, dev_root_real: str, real_dirs: _RealDirs | None = None
) -> _Inspection:
    """Decide whether ``path`` is a real device node inside dev-root."""
    if not _inside(posixpath.normpath(path), dev_root):
        return _refused("path escapes dev-root")
    followed, refusal = _follow_links(path, dev_root)
    if refusal:
        return _refused(refusal)
    # Directory symlinks earlier in the path are resolved here and must stay inside too.
    # The last component is no symlink any more, so resolving its directory is enough.
    real = (real_dirs or _RealDirs()).real_path(followed)
    if not _inside(real, dev_root_real):
        return _refused("symlink escapes dev-root")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return _refused(VANISHED)
    except OSError as exc:
        return _refused(f"cannot be read: {exc.strerror}")
    rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if stat.S_ISBLK(st.st_mode):
        return _Inspection(real, KIND_BLOCK, "", rdev)
    if stat.S_ISCHR(st.st_mode):
        return _Inspection(real, KIND_CHAR, "", rdev)
    if stat.S_ISDIR(st.st_mode):
        return _refused("not a device node (directory)")
    if stat.S_ISREG(st.st_mode):
        return _refused("not a device node (regular file)")
    return _refused("not a device node")


@dataclass(frozen=True)
class _Found:
    path: str
    host_path: str
    rule: str
    source: str
    aliases: tuple[str, ...] = ()
    pattern: str = ""  # the include pattern that found it


def _include_matches(config: PluginConfig, dev_root: str) -> list[_Found]:
    found: list[_Found] = []
    for pattern in config.include_devices:
        under_root = glob.escape(dev_root.rstrip("/")) + pattern[len("/dev") :]
        matches = sorted(glob.glob(under_root))
        if not matches and not glob.has_magic(pattern):
            # A literal path that is missing is worth a line in `scan`.
            matches = [to_dev_root_path(pattern, dev_root)]
        for match in matches:
            host_path = to_host_path(match, dev_root)
            rule = f"include {pattern}"
            found.append(_Found(match, host_path, rule, SOURCE_INCLUDE, pattern=pattern))
    return found


def _found_things(config: PluginConfig, dev_root: str, blocks: list[_BlockDevice]) -> list[_Found]:
    """Every path to judge, in the order that decides which name a device is granted
    under: include patterns in config order, then sysfs, then nx-gzip."""
    found: list[_Found] = []
    if config.include_devices:
        found.extend(_include_matches(config, dev_root))
        for block in blocks:
            names = (block.host_path, *block.aliases)
            if first_match(config.include_devices, names) is None:
                path = to_dev_root_path(block.host_path, dev_root)
                found.append(_Found(path, block.host_path, "", SOURCE_SYSFS, block.aliases))
    else:
        for block in blocks:
            path = to_dev_root_path(block.host_path, dev_root)
            found.append(_Found(path, block.host_path, RULE_SYSFS, SOURCE_SYSFS, block.aliases))
    if config.nx_gzip:
        path = to_dev_root_path(NX_GZIP_HOST_PATH, dev_root)
        found.append(_Found(path, NX_GZIP_HOST_PATH, RULE_NX_GZIP, SOURCE_NX_GZIP))
    return found


# One physical device: its kind and number (block 8:0 and char 8:0 are different things).
_DeviceKey = tuple[str, DeviceNumber]


@dataclass(frozen=True)
class _Looked:
    """One found path after inspection, with what sysfs says about its device."""

    item: _Found
    inspection: _Inspection
    names: tuple[str, ...]  # its own other names: sysfs aliases and link target
    sysfs: _BlockDevice | None
    # What a character node named exactly reaches when it is a passthrough node.
    passthrough: PassthroughTarget | None = None

    @property
    def key(self) -> _DeviceKey | None:
        if self.inspection.rdev is None:
            return None
        return (self.inspection.kind, self.inspection.rdev)


class _SysfsIndex:
    """A block device's sysfs entry by device number: from the ``<sys-root>/block``
    listing when the scan made one, else from ``<sys-root>/dev/block/M:m``, and from a
    listing made on first need when that link is missing (a tree without it)."""

    def __init__(self, sys_root: Path, blocks: list[_BlockDevice] | None) -> None:
        self._sys_root = sys_root
        self._listed = blocks is not None
        self._by_number = {b.rdev: b for b in blocks or () if b.rdev is not None}

    def entry(self, rdev: DeviceNumber, kernel_name: str = "") -> _BlockDevice | None:
        """``kernel_name`` (the node's name under dev-root, ``/`` as ``!``) is tried
        first: a disk or dm node is usually named as its ``<sys-root>/block`` entry,
        and one read of its ``dev`` file confirms it."""
        known = self._by_number.get(rdev)
        if known is not None:
            return known
        if kernel_name and not self._listed:
            entry = f"{self._sys_root}/block/{kernel_name}"
            if parse_device_number(_read_text(entry + "/dev")) == rdev:
                host_path = HOST_DEV_PREFIX + kernel_name.replace("!", "/")
                return _BlockDevice(host_path, _mapper_aliases(entry), entry, entry, rdev)
        found = _sysfs_by_number(self._sys_root, rdev)
        if found is None and not self._listed:
            self._listed = True
            for block in sysfs_block_devices(self._sys_root):
                if block.rdev is not None:
                    self._by_number.setdefault(block.rdev, block)
            found = self._by_number.get(rdev)
        return found


def _look(
    item: _Found,
    inspection: _Inspection,
    dev_root_real: str,
    sysfs_index: _SysfsIndex,
    sys_root: Path,
) -> _Looked:
    real_host_path = ""
    if inspection.real_path:
        # Inside dev-root by now, so the host path is a plain prefix swap.
        real_host_path = "/dev" + inspection.real_path[len(dev_root_real.rstrip("/")) :]
    sysfs = None
    if inspection.kind == KIND_BLOCK and inspection.rdev is not None:
        kernel_name = real_host_path[len(HOST_DEV_PREFIX) :].replace("/", "!")
        sysfs = sysfs_index.entry(inspection.rdev, kernel_name)
    names = list(item.aliases)
    if real_host_path:
        names.append(real_host_path)
    if sysfs is not None:
        names.extend((sysfs.host_path, *sysfs.aliases))
    own = tuple(dict.fromkeys(n for n in names if n != item.host_path))
    passthrough = None
    if (
        inspection.kind == KIND_CHAR
        and inspection.rdev is not None
        and item.source == SOURCE_INCLUDE
        and not glob.has_magic(item.pattern)
    ):
        # Only a character node named exactly can be advertised: only those are traced.
        passthrough = trace_passthrough(sys_root, inspection.rdev, (item.host_path, *own))
    return _Looked(item, inspection, own, sysfs, passthrough)


def scan(
    config: PluginConfig,
    dev_root: Path,
    sys_root: Path,
    host_use: HostUse,
    explain_unmatched: bool = True,
) -> ScanResult:
    """Every candidate device with its verdict; pure apart from reading the two trees
    (``host_use`` is what the host's mount table and swaps said, read by the caller).

    With ``include-devices`` and ``explain_unmatched=False`` (the watcher), block
    devices no include matches are not looked at: ``<sys-root>/block`` is not listed,
    and the sysfs entry of each matched node is found by its device number
    (``<sys-root>/dev/block/M:m``). The advertised candidates are the same; only the
    ``excluded (include-devices)`` lines the ``scan`` command shows are left out.
    """
    root = posixpath.normpath(str(dev_root))
    root_real = os.path.realpath(root)
    skip_unmatched = bool(config.include_devices) and not explain_unmatched
    blocks = None if skip_unmatched else sysfs_block_devices(sys_root)
    sysfs_index = _SysfsIndex(sys_root, blocks)
    real_dirs = _RealDirs()
    looked = [
        _look(
            item,
            inspect_node(item.path, root, root_real, real_dirs),
            root_real,
            sysfs_index,
            sys_root,
        )
        for item in _found_things(config, root, blocks or [])
    ]
    # Every name seen reaching each device, so excludes and the deny list see them all.
    names_of: dict[_DeviceKey, dict[str, None]] = {}
    for one in looked:
        if one.key is not None:
            names_of.setdefault(one.key, {}).update(dict.fromkeys((one.item.host_path, *one.names)))
    candidates: list[Candidate] = []
    claimed: dict[_DeviceKey, str] = {}  # device -> host path that advertised it first
    for one in looked:
        item, inspection = one.item, one.inspection
        all_names = names_of.get(one.key, {}) if one.key is not None else {}
        aliases = tuple(dict.fromkeys(n for n in (*one.names, *all_names) if n != item.host_path))
        verdict, rule, reason = _judge(config, one, aliases, host_use, claimed)
        identity = problem = ""
        numa_nodes: tuple[int, ...] = ()
        if verdict == ADVERTISED:
            assert one.key is not None  # an advertised path is a device node
            claimed[one.key] = item.host_path
            if one.sysfs is not None:
                dm_uuid = _read_text(one.sysfs.entry + "/dm/uuid") or ""
                identity = sysfs_identity(one.sysfs.entry, dm_uuid)
                problem = sysfs_problem(one.sysfs.entry, one.sysfs.disk_entry, dm_uuid)
                numa_nodes = sysfs_numa_nodes(one.sysfs.entry, one.sysfs.disk_entry)
            elif one.passthrough is not None:
                # A passthrough node is as fit for use as its disk, and names it.
                disk_dir = one.passthrough.disk_dir
                identity = sysfs_identity(disk_dir)
                problem = sysfs_problem(disk_dir, disk_dir)
                numa_nodes = sysfs_numa_nodes(disk_dir, disk_dir)
        candidates.append(
            Candidate(
                path=item.path,
                host_path=item.host_path,
                verdict=verdict,
                rule=rule,
                reason=reason,
                kind=inspection.kind,
                aliases=aliases,
                source=item.source,
                rdev=inspection.rdev,
                identity=identity,
                problem=problem,
                numa_nodes=numa_nodes,
            )
        )
    return ScanResult(tuple(candidates))


def _judge(
    config: PluginConfig,
    one: _Looked,
    aliases: tuple[str, ...],
    host_use: HostUse,
    claimed: dict[_DeviceKey, str],
) -> tuple[str, str, str]:
    """(verdict, rule, reason) for one found path, by the rules in the module docstring.

    The deny list comes first because no config may override it; exclusion comes
    before the state of the node so `scan` shows an operator's intent first."""
    item, inspection = one.item, one.inspection
    if not item.rule:
        return EXCLUDED, RULE_NOT_INCLUDED, "not matched by any include-devices pattern"
    for name in (item.host_path, *aliases):
        denied = _denied_reason(name)
        if denied is not None:
            return (
                REFUSED,
                RULE_DENY_LIST,
                denied if name == item.host_path else f"{denied} ({name})",
            )
    excluded_by = first_match(config.exclude_devices, (item.host_path, *aliases))
    if excluded_by is not None:
        return EXCLUDED, f"exclude {excluded_by}", "matched an exclude pattern"
    if inspection.refusal:
        return REFUSED, item.rule, inspection.refusal
    if inspection.kind == KIND_BLOCK:
        if host_use.error:
            return REFUSED, RULE_IN_USE, f"cannot tell whether the host uses it: {host_use.error}"
        in_use = host_use.reason_for(inspection.rdev)
        if in_use is not None:
            return REFUSED, RULE_IN_USE, f"in use: {in_use}"
    if inspection.kind == KIND_CHAR:
        # A node of a kernel-internal number (mem, kmsg, a tty, kvm) under any name.
        denied_number = denied_char_device(inspection.rdev) if inspection.rdev else None
        if denied_number is not None:
            return REFUSED, RULE_DENY_LIST, denied_number
        if item.source == SOURCE_SYSFS:
            return REFUSED, item.rule, "not a block device node (character device)"
        if item.source == SOURCE_INCLUDE and glob.has_magic(item.pattern):
            return (
                REFUSED,
                RULE_CHAR_BY_NAME,
                f"character device matched by the glob {item.pattern}; name it exactly "
                "in include-devices to grant it",
            )
        passthrough = one.passthrough
        if passthrough is not None:
            if passthrough.refusal:
                return REFUSED, RULE_DENY_LIST, f"{RULE_DENY_LIST}: {passthrough.refusal}"
            in_use = passthrough.in_use(host_use)
            if in_use is not None:
                return REFUSED, RULE_IN_USE, in_use
    assert one.key is not None  # a usable device node has a number
    if one.key in claimed:
        return EXCLUDED, item.rule, f"same device as {claimed[one.key]}"
    return ADVERTISED, item.rule, f"{inspection.kind} device node"
