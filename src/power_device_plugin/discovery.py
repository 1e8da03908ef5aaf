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
``/dev/crypto/nx-gzip``. ``exclude-devices`` removes candidates whose host path,
``/dev/mapper`` name or symlink target matches.

Only real device nodes are advertised: block or character special files under
dev-root. Symlinks are followed (absolute targets in host terms, ``/dev/...``, are
read relative to dev-root) and must stay inside dev-root. Everything else is
refused and reported with the reason.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from .config import HOST_DEV_PREFIX, NX_GZIP_HOST_PATH, PluginConfig

ADVERTISED = "advertised"
EXCLUDED = "excluded"
REFUSED = "refused"

SOURCE_SYSFS = "sysfs"
SOURCE_INCLUDE = "include"
SOURCE_NX_GZIP = "nx-gzip"

RULE_SYSFS = "sysfs block"
RULE_NX_GZIP = "nx-gzip"
RULE_NOT_INCLUDED = "include-devices"

KIND_BLOCK = "block"
KIND_CHAR = "char"

MAX_SYMLINK_HOPS = 40


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
    rdev: tuple[int, int] | None = None
    # The device's own identity where sysfs has one ("dm-uuid:<uuid>", "wwid:<wwid>"),
    # so a minor number reused for another LUN gets a new ID; "" when there is none.
    identity: str = ""
    # Why a present device is not fit for use ("device/state is offline", "size is 0",
    # "dm/suspended is 1", "no live multipath path"); "" when it is healthy.
    problem: str = ""


@dataclass(frozen=True)
class ScanResult:
    candidates: tuple[Candidate, ...]

    def advertised(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.verdict == ADVERTISED)


def host_glob_match(pattern: str, host_path: str) -> bool:
    """Glob semantics on host paths: ``*`` never crosses a ``/`` (as in glob, unlike fnmatch)."""
    pattern_parts = pattern.split("/")
    path_parts = host_path.split("/")
    if len(pattern_parts) != len(path_parts):
        return False
    return all(fnmatch.fnmatchcase(p, g) for g, p in zip(pattern_parts, path_parts))


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


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _list_dir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def sysfs_block_devices(sys_root: Path) -> list[_BlockDevice]:
    """Disks, their partitions and dm devices listed in ``<sys-root>/block``."""
    block_dir = os.path.join(str(sys_root), "block")
    found: list[_BlockDevice] = []
    for name in _list_dir(block_dir):
        entry = os.path.join(block_dir, name)
        # sysfs writes '/' in kernel names as '!' (cciss!c0d0 is /dev/cciss/c0d0).
        host_path = HOST_DEV_PREFIX + name.replace("!", "/")
        aliases: tuple[str, ...] = ()
        children = _list_dir(entry)
        dm_name = _read_text(os.path.join(entry, "dm", "name")) if "dm" in children else None
        if dm_name:
            aliases = (HOST_DEV_PREFIX + "mapper/" + dm_name,)
        found.append(_BlockDevice(host_path, aliases))
        for child in children:
            # Partitions are named after their disk (sda1 in sda); skip the attribute files.
            if child.startswith(name) and os.path.isfile(os.path.join(entry, child, "partition")):
                found.append(_BlockDevice(HOST_DEV_PREFIX + child.replace("!", "/"), ()))
    return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def to_host_path(path: str, dev_root: str) -> str:
    """``<dev-root>/x/y`` -> ``/dev/x/y`` (lexically, so escapes show as what they reach)."""
    relative = posixpath.relpath(posixpath.normpath(path), dev_root)
    return posixpath.normpath(HOST_DEV_PREFIX + relative)


def to_dev_root_path(host_path: str, dev_root: str) -> str:
    """``/dev/x/y`` -> ``<dev-root>/x/y``."""
    return dev_root.rstrip("/") + host_path[len("/dev") :]


@dataclass(frozen=True)
class _Inspection:
    real_path: str  # resolved path under dev-root ("" when refused)
    kind: str
    refusal: str  # "" when the path is a usable device node


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
        target = os.readlink(current)
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
        mode = os.stat(real).st_mode
    except OSError as exc:
        return _refused(f"cannot be read: {exc.strerror}")
    if stat.S_ISBLK(mode):
        return _Inspection(real, KIND_BLOCK, "")
    if stat.S_ISCHR(mode):
        return _Inspection(real, KIND_CHAR, "")
    if stat.S_ISDIR(mode):
        return _refused("not a device node (directory)")
    if stat.S_ISREG(mode):
        return _refused("not a device node (regular file)")
    return _refused("not a device node")


@dataclass(frozen=True)
class _Found:
    path: str
    host_path: str
    rule: str
    source: str
    aliases: tuple[str, ...] = ()


def _include_matches(config: PluginConfig, dev_root: str) -> list[_Found]:
    found: list[_Found] = []
    for pattern in config.include_devices:
        under_root = glob.escape(dev_root.rstrip("/")) + pattern[len("/dev") :]
        matches = sorted(glob.glob(under_root))
        if not matches and not glob.has_magic(pattern):
            # A literal path that is missing is worth a line in `scan`.
            matches = [to_dev_root_path(pattern, dev_root)]
        for match in matches:
            found.append(
                _Found(match, to_host_path(match, dev_root), f"include {pattern}", SOURCE_INCLUDE)
            )
    return found


def _found_things(config: PluginConfig, dev_root: str, blocks: list[_BlockDevice]) -> list[_Found]:
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


def scan(config: PluginConfig, dev_root: Path, sys_root: Path) -> ScanResult:
    """Every candidate device with its verdict; pure apart from reading the two trees."""
    root = posixpath.normpath(str(dev_root))
    root_real = os.path.realpath(root)
    blocks = sysfs_block_devices(sys_root)
    found = _found_things(config, root, blocks)
    # dm devices found through an include glob still carry their /dev/mapper name.
    sysfs_aliases = {
        os.path.realpath(to_dev_root_path(b.host_path, root)): b.aliases
        for b in blocks
        if b.aliases
    }
    candidates: list[Candidate] = []
    claimed: dict[str, str] = {}  # real path -> host path that advertised it first
    real_dirs = _RealDirs()
    for item in found:
        inspection = inspect_node(item.path, root, root_real, real_dirs)
        aliases = item.aliases or sysfs_aliases.get(inspection.real_path, ())
        if inspection.real_path:
            # Inside dev-root by now, so the host path is a plain prefix swap.
            target_host = "/dev" + inspection.real_path[len(root_real.rstrip("/")) :]
            if target_host != item.host_path and target_host not in aliases:
                aliases = (*aliases, target_host)
        verdict, rule, reason = _judge(config, item, inspection, aliases, claimed)
        if verdict == ADVERTISED:
            claimed[inspection.real_path] = item.host_path
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
            )
        )
    return ScanResult(tuple(candidates))


def _judge(
    config: PluginConfig,
    item: _Found,
    inspection: _Inspection,
    aliases: tuple[str, ...],
    claimed: dict[str, str],
) -> tuple[str, str, str]:
    """(verdict, rule, reason) for one found path; exclusion is decided before refusal
    so `scan` shows an operator's intent before the state of the node."""
    if not item.rule:
        return EXCLUDED, RULE_NOT_INCLUDED, "not matched by any include-devices pattern"
    excluded_by = first_match(config.exclude_devices, (item.host_path, *aliases))
    if excluded_by is not None:
        return EXCLUDED, f"exclude {excluded_by}", "matched an exclude pattern"
    if inspection.refusal:
        return REFUSED, item.rule, inspection.refusal
    if inspection.real_path in claimed:
        return EXCLUDED, item.rule, f"same device as {claimed[inspection.real_path]}"
    return ADVERTISED, item.rule, f"{inspection.kind} device node"
