"""What the host itself uses, so it is never granted to a pod, whatever the config says.

Two guards, both pure apart from reading the roots they are given:

**Host use** (:func:`read_host_use`), by device number ``(major, minor)``:

- Every mount in the host's mount table counts (``/``, ``/boot``, ``/var``,
  ``/sysroot``, kubelet's and the container runtime's directories, anything):
  field 3 of ``<proc-root>/1/mountinfo`` is the mounted file system's device.
  Majors 0 are anonymous devices (proc, tmpfs, overlay, ...) and are skipped; for
  those the mount source is still looked up when it names a ``/dev`` block device
  known to sysfs (btrfs mounts carry an anonymous ``0:N`` but their source is the
  device).
- Every active swap area in ``<proc-root>/swaps``: a partition path
  (``/dev/sda2``, ``/dev/dm-3``, ``/dev/mapper/x``) is mapped to its device number
  through sysfs; a swap file lives on a mounted file system, already counted.
- The whole stack carrying one of those is the host's too, by transitive closure
  over sysfs relations, walked from the used devices through
  ``<sys-root>/dev/block/M:m`` (the whole ``<sys-root>/block`` listing only when
  ``dev/block`` is absent): a partition's disk, a disk's
  partitions (a disk carrying a host file system is wholly the host's), the
  devices a dm/md device is built on (``slaves/``) and those built on top of it
  (``holders/``: LVM, multipath, dm-crypt), recursively, cycles ignored.
  Each derived entry says why ("disk of sda1 (mounted at /boot)").

The host's ``/proc`` is mounted read-only into the plugin's container (e.g. at
``/host/proc``); ``<proc-root>/1/mountinfo`` is then the host init's mount table
(``self/mountinfo``, the plugin's own namespace, is the fallback). Reading
mountinfo and swaps needs no privilege.

Fail closed: when the mount table or the swap table cannot be read, or an active
swap partition cannot be mapped to a device number, :attr:`HostUse.error` is set
and every block device must be refused with that text as the reason. A scan
never raises for a file vanishing or holding odd content.

Limits (what this guard does not see):

- btrfs and ZFS report anonymous ``0:N`` devices in mountinfo; a btrfs mount is
  caught through its source device (one member of a multi-device file system;
  its other members only through sysfs relations, which btrfs does not create),
  a ZFS pool's disks not at all.
- Devices the host uses without mounting or swapping: raw devices opened by a
  host process (databases, iSCSI/NVMe-oF targets, Ceph OSDs), inactive LVM
  physical volumes, loop devices' backing files beyond their mounted file system.
- A pass-through node reaches the host's disk by another name. Those with a
  sysfs class of their own are traced (:func:`trace_passthrough`): ``/dev/sg*``,
  ``/dev/bsg/*`` and NVMe generic nodes ``/dev/ng*n*`` to their one disk, which
  decides; NVMe controller nodes ``/dev/nvme0`` and anything not traced to exactly
  one disk are refused. Other character devices that can reach a disk (a vendor's
  own passthrough driver) are not known here: name them exactly only when sure.

**Built-in deny list** (:func:`denied_reason`, :func:`denied_char_device`): host
device nodes that no config can grant, because they reach kernel memory,
hardware registers, the host's consoles, virtualisation, firmware or kernel
control interfaces. See :data:`DENY_LIST`. NVMe controller nodes and passthrough
nodes not traced to exactly one disk are refused by it too, by their sysfs class
(:func:`trace_passthrough`), whatever their name.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .small_files import list_dir as _list_dir
from .small_files import read_text as _read_text

DeviceNumber = tuple[int, int]  # (major, minor)

DENY_LIST_RULE = "built-in deny list"
_MAPPER_PREFIX = "/dev/mapper/"
_DEV_PREFIX = "/dev/"


@dataclass(frozen=True)
class HostUse:
    """What the host itself uses, by device number, with the reason for each."""

    # rdev -> reason: "mounted at /sysroot", "active swap (/dev/sda2)",
    # "holder of sda1 (mounted at /)", ...
    in_use: Mapping[DeviceNumber, str] = field(default_factory=dict)
    # Non-empty when the host's mount table or swaps could not be read (or an active
    # swap partition could not be identified): then EVERY block device must be
    # refused, with this text as the reason.
    error: str = ""

    def reason_for(self, rdev: DeviceNumber | None) -> str | None:
        """The in-use reason, or the error when the table is unreadable (fail closed), else None."""
        if self.error:
            return self.error
        if rdev is None:
            return None
        return self.in_use.get(rdev)


# --- reading files without ever raising ------------------------------------------------


def _read_table(path: str) -> tuple[str | None, str]:
    """(content, "") or (None, "<path>: <strerror>")."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(), ""
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. an embedded NUL in a fake path
        return None, f"{path}: {exc}"


def parse_device_number(text: str) -> DeviceNumber | None:
    """``"8:1"`` (a sysfs ``dev`` file or mountinfo field 3) -> ``(8, 1)``; None when malformed."""
    major, sep, minor = text.strip().partition(":")
    if not sep or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


def unescape_octal(text: str) -> str:
    r"""Undo the kernel's octal escapes in mount points and swap paths (``\040`` is a space)."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        chunk = text[i + 1 : i + 4]
        if text[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# --- the host's mount table and swaps -------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """One mountinfo line, as far as the guard needs it."""

    rdev: DeviceNumber
    mount_point: str
    source: str  # the mount source after the " - fstype " separator ("/dev/sda1", "tmpfs")


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts in a mountinfo text; malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        rdev = parse_device_number(fields[2])
        if rdev is None:
            continue
        source = ""
        if "-" in fields[6:]:
            after = fields[fields.index("-", 6) + 1 :]
            if len(after) >= 2:
                source = unescape_octal(after[1])
        mounts.append(Mount(rdev, unescape_octal(fields[4]), source))
    return mounts


@dataclass(frozen=True)
class Swap:
    path: str
    is_partition: bool


def parse_swaps(text: str) -> list[Swap]:
    """The active swap areas in a /proc/swaps text (header and malformed lines skipped)."""
    swaps: list[Swap] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] == "Filename":
            continue
        swaps.append(Swap(unescape_octal(fields[0]), fields[1] == "partition"))
    return swaps


# --- sysfs: names, numbers and relations ----------------------------------------------

# Relation words, read as "<neighbour> is the <relation> <marked device>".
_PARTITION_OF = "partition of"
_DISK_OF = "disk of"
_HOLDER_OF = "holder of"
_UNDER = "under"


@dataclass(frozen=True)
class BlockGraph:
    """Block devices in sysfs by kernel name (``!`` for ``/``), and how they relate."""

    rdev_of: Mapping[str, DeviceNumber]
    name_of: Mapping[DeviceNumber, str]
    mapper_names: Mapping[str, str]  # /dev/mapper name -> kernel name (dm-N)
    # name -> [(relation, neighbour)]: marking name marks neighbour, whose reason is
    # "<relation> <name> (...)", e.g. sda -> ("partition of", sda1).
    edges: Mapping[str, tuple[tuple[str, str], ...]]


def read_block_graph(sys_root: Path) -> BlockGraph:
    """Disks, partitions and dm/md devices under ``<sys-root>/block`` with their relations.

    ``slaves/`` and ``holders/`` entries are symlinks in sysfs; only their names are used.
    ``<sys-root>/dev/block`` is not needed.
    """
    block_dir = os.path.join(str(sys_root), "block")
    rdev_of: dict[str, DeviceNumber] = {}
    mapper_names: dict[str, str] = {}
    edges: dict[str, list[tuple[str, str]]] = {}

    def link(name: str, relation: str, neighbour: str) -> None:
        edges.setdefault(name, []).append((relation, neighbour))

    def read_device(name: str, entry: str) -> None:
        rdev = parse_device_number(_read_text(os.path.join(entry, "dev")) or "")
        if rdev is not None:
            rdev_of[name] = rdev
        for slave in _list_dir(os.path.join(entry, "slaves")):
            link(name, _UNDER, slave)  # name is built on slave
            link(slave, _HOLDER_OF, name)
        for holder in _list_dir(os.path.join(entry, "holders")):
            link(name, _HOLDER_OF, holder)  # holder is built on name
            link(holder, _UNDER, name)

    for disk in _list_dir(block_dir):
        entry = os.path.join(block_dir, disk)
        read_device(disk, entry)
        children = _list_dir(entry)
        if "dm" in children:
            dm_name = (_read_text(os.path.join(entry, "dm", "name")) or "").strip()
            if dm_name:
                mapper_names[dm_name] = disk
        for child in children:
            part_entry = os.path.join(entry, child)
            if os.path.isfile(os.path.join(part_entry, "partition")):
                read_device(child, part_entry)
                link(disk, _PARTITION_OF, child)
                link(child, _DISK_OF, disk)
    name_of = {rdev: name for name, rdev in sorted(rdev_of.items(), reverse=True)}
    frozen = {name: tuple(pairs) for name, pairs in edges.items()}
    return BlockGraph(rdev_of, name_of, mapper_names, frozen)


def kernel_name_for_path(graph: BlockGraph, host_path: str) -> str | None:
    """``/dev/sda2`` -> ``sda2``, ``/dev/cciss/c0d0`` -> ``cciss!c0d0``,
    ``/dev/mapper/x`` -> ``dm-N`` by ``dm/name``; None when sysfs does not know it."""
    path = posixpath.normpath(host_path)
    if path.startswith(_MAPPER_PREFIX):
        return graph.mapper_names.get(path[len(_MAPPER_PREFIX) :])
    if not path.startswith(_DEV_PREFIX):
        return None
    name = path[len(_DEV_PREFIX) :].replace("/", "!")
    return name if name in graph.rdev_of else None


# --- sysfs walked from the used devices only -------------------------------------------


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _sysfs_dir_for_rdev(sys_root: str, rdev: DeviceNumber) -> str | None:
    """The device's sysfs directory through the ``<sys-root>/dev/block/M:m`` link."""
    target = os.path.realpath(os.path.join(sys_root, "dev", "block", f"{rdev[0]}:{rdev[1]}"))
    return target if _is_dir(target) else None


def _sysfs_dir_for_name(sys_root: str, name: str) -> str | None:
    """A block device's sysfs directory by kernel name: ``class/block/<name>`` (every
    disk and partition in a real sysfs), ``block/<name>`` (disks), else a partition
    ``block/<disk>/<name>`` (fake trees without ``class/block``)."""
    for candidate in (
        os.path.join(sys_root, "class", "block", name),
        os.path.join(sys_root, "block", name),
    ):
        target = os.path.realpath(candidate)
        if _is_dir(target):
            return target
    block_dir = os.path.join(sys_root, "block")
    for disk in _list_dir(block_dir):
        entry = os.path.join(block_dir, disk, name)
        if os.path.isfile(os.path.join(entry, "partition")):
            return os.path.realpath(entry)
    return None


def _sysfs_dir_for_mapper_name(sys_root: str, mapper_name: str) -> str | None:
    """The ``dm-N`` whose ``dm/name`` is ``mapper_name``; stops at the first match."""
    block_dir = os.path.join(sys_root, "block")
    for disk in _list_dir(block_dir):
        if not disk.startswith("dm-"):
            continue
        entry = os.path.join(block_dir, disk)
        if (_read_text(os.path.join(entry, "dm", "name")) or "").strip() == mapper_name:
            return os.path.realpath(entry)
    return None


def _sysfs_dir_for_path(sys_root: str, host_path: str) -> str | None:
    """``/dev/sda2``, ``/dev/cciss/c0d0``, ``/dev/mapper/x`` -> its sysfs directory."""
    path = posixpath.normpath(host_path)
    if path.startswith(_MAPPER_PREFIX):
        return _sysfs_dir_for_mapper_name(sys_root, path[len(_MAPPER_PREFIX) :])
    if not path.startswith(_DEV_PREFIX):
        return None
    return _sysfs_dir_for_name(sys_root, path[len(_DEV_PREFIX) :].replace("/", "!"))


def _rdev_in(device_dir: str) -> DeviceNumber | None:
    return parse_device_number(_read_text(os.path.join(device_dir, "dev")) or "")


def walk_block_graph(sys_root: Path, start: Iterable[DeviceNumber]) -> BlockGraph:
    """The part of the sysfs block graph connected to the ``start`` devices, found
    through ``<sys-root>/dev/block/M:m`` and followed through partitions, a partition's
    disk, ``slaves/`` and ``holders/``: the same relations as :func:`read_block_graph`,
    without reading the devices the host does not use (thousands of SAN paths)."""
    root = str(sys_root)
    rdev_of: dict[str, DeviceNumber] = {}
    edges: dict[str, list[tuple[str, str]]] = {}
    pending: deque[str] = deque()
    visited: set[str] = set()

    def link(name: str, relation: str, neighbour: str) -> None:
        edges.setdefault(name, []).append((relation, neighbour))

    def reach(device_dir: str | None) -> None:
        if device_dir is not None and device_dir not in visited:
            visited.add(device_dir)
            pending.append(device_dir)

    def related_dir(entry: str, name: str) -> str | None:
        # A real sysfs links slaves/ and holders/ entries to the device's directory.
        target = os.path.realpath(entry)
        if os.path.islink(entry) and _is_dir(target):
            return target
        return _sysfs_dir_for_name(root, name)

    for used in sorted(set(start)):
        reach(_sysfs_dir_for_rdev(root, used))
    while pending:
        device_dir = pending.popleft()
        name = os.path.basename(device_dir)
        device_number = _rdev_in(device_dir)
        if device_number is not None:
            rdev_of[name] = device_number
        for slave in _list_dir(os.path.join(device_dir, "slaves")):
            link(name, _UNDER, slave)  # name is built on slave
            link(slave, _HOLDER_OF, name)
            reach(related_dir(os.path.join(device_dir, "slaves", slave), slave))
        for holder in _list_dir(os.path.join(device_dir, "holders")):
            link(name, _HOLDER_OF, holder)  # holder is built on name
            link(holder, _UNDER, name)
            reach(related_dir(os.path.join(device_dir, "holders", holder), holder))
        if os.path.isfile(os.path.join(device_dir, "partition")):
            disk_dir = os.path.dirname(device_dir)
            disk = os.path.basename(disk_dir)
            link(disk, _PARTITION_OF, name)
            link(name, _DISK_OF, disk)
            reach(disk_dir)
            continue
        for child in _list_dir(device_dir):
            part_dir = os.path.join(device_dir, child)
            if os.path.isfile(os.path.join(part_dir, "partition")):
                link(name, _PARTITION_OF, child)
                link(child, _DISK_OF, name)
                reach(part_dir)
    name_of = {rdev: name for name, rdev in sorted(rdev_of.items(), reverse=True)}
    frozen = {name: tuple(pairs) for name, pairs in edges.items()}
    return BlockGraph(rdev_of, name_of, {}, frozen)


# --- putting it together ---------------------------------------------------------------


def _seed_reasons(
    mounts: list[Mount], swaps: list[Swap], rdev_for_path: Callable[[str], DeviceNumber | None]
) -> tuple[dict[DeviceNumber, str], str]:
    """Directly used devices with their reasons, and an error for an unidentified swap."""
    mount_points: dict[DeviceNumber, str] = {}

    def note(rdev: DeviceNumber, mount_point: str) -> None:
        known = mount_points.get(rdev)
        # The shortest mount point names the use best ("/" rather than "/var/lib/docker").
        if known is None or len(mount_point) < len(known):
            mount_points[rdev] = mount_point

    for mount in mounts:
        if mount.rdev[0] != 0:
            note(mount.rdev, mount.mount_point)
        elif mount.source.startswith(_DEV_PREFIX):
            # Anonymous device (btrfs): the source names the block device carrying it.
            source_rdev = rdev_for_path(mount.source)
            if source_rdev is not None:
                note(source_rdev, mount.mount_point)
    seeds = {rdev: f"mounted at {point}" for rdev, point in mount_points.items()}
    unmapped: list[str] = []
    for swap in swaps:
        if not swap.is_partition:
            continue  # a swap file: its file system is mounted, so already counted
        swap_rdev = rdev_for_path(swap.path)
        if swap_rdev is None:
            unmapped.append(swap.path)
            continue
        seeds.setdefault(swap_rdev, f"active swap ({swap.path})")
    error = ""
    if unmapped:
        error = (
            "active swap partition not found in sysfs: "
            + ", ".join(unmapped)
            + " (cannot tell which device the host swaps to)"
        )
    return seeds, error


def close_over_relations(
    seeds: Mapping[DeviceNumber, str], graph: BlockGraph
) -> dict[DeviceNumber, str]:
    """Seeds plus every device related to one through sysfs, breadth first (the shortest
    chain explains); each derived reason names its neighbour and the original use:
    "disk of sda1 (mounted at /boot)", then "partition of sda (sda1 mounted at /boot)"."""
    in_use: dict[DeviceNumber, str] = dict(seeds)
    # (kernel name, the seed it was reached from, the seed's reason)
    queue: deque[tuple[str, str, str]] = deque()
    for rdev, reason in sorted(seeds.items()):
        name = graph.name_of.get(rdev)
        if name is not None:
            queue.append((name, name, reason))
    seen = {name for name, _, _ in queue}
    while queue:
        name, seed, seed_reason = queue.popleft()
        origin = seed_reason if name == seed else f"{_shown(seed)} {seed_reason}"
        for relation, neighbour in graph.edges.get(name, ()):
            if neighbour in seen:
                continue  # also what ends cycles
            seen.add(neighbour)
            neighbour_rdev = graph.rdev_of.get(neighbour)
            if neighbour_rdev is not None:
                in_use.setdefault(neighbour_rdev, f"{relation} {_shown(name)} ({origin})")
            queue.append((neighbour, seed, seed_reason))
    return in_use


def _shown(kernel_name: str) -> str:
    """Kernel names as the host's /dev shows them (cciss!c0d0 -> cciss/c0d0)."""
    return kernel_name.replace("!", "/")


def read_host_use(proc_root: Path, sys_root: Path) -> HostUse:
    """Read ``<proc-root>/1/mountinfo`` (falling back to ``<proc-root>/self/mountinfo``)
    and ``<proc-root>/swaps``, then follow the sysfs chains under ``<sys-root>``.

    Never raises for filesystem races or odd content: an unreadable mount table or swap
    table gives ``HostUse(error=...)`` (fail closed).
    """
    proc = str(proc_root)
    problems: list[str] = []
    mountinfo: str | None = None
    mountinfo_path = ""
    for pid in ("1", "self"):
        mountinfo_path = os.path.join(proc, pid, "mountinfo")
        text, problem = _read_table(mountinfo_path)
        if text is not None:
            mountinfo = text
            break
        problems.append(problem)
    if mountinfo is None:
        return HostUse({}, "host mount table unreadable: " + "; ".join(problems))
    mounts = parse_mountinfo(mountinfo)
    if not mounts:
        # Every Linux host mounts at least its root: an empty table is not the host's.
        return HostUse({}, f"host mount table has no mounts: {mountinfo_path}")
    swaps_text, swaps_problem = _read_table(os.path.join(proc, "swaps"))
    swaps = parse_swaps(swaps_text) if swaps_text is not None else []
    root = str(sys_root)
    if _is_dir(os.path.join(root, "dev", "block")):
        # Walk from the used devices only: a SAN node's thousands of paths are not read.
        def rdev_for_path(host_path: str) -> DeviceNumber | None:
            device_dir = _sysfs_dir_for_path(root, host_path)
            return _rdev_in(device_dir) if device_dir is not None else None

        seeds, swap_error = _seed_reasons(mounts, swaps, rdev_for_path)
        graph = walk_block_graph(sys_root, seeds)
    else:
        # No dev/block (some fake trees): the whole graph, from the block/ listing.
        graph = read_block_graph(sys_root)

        def rdev_for_path(host_path: str) -> DeviceNumber | None:
            name = kernel_name_for_path(graph, host_path)
            return graph.rdev_of[name] if name is not None else None

        seeds, swap_error = _seed_reasons(mounts, swaps, rdev_for_path)
    in_use = close_over_relations(seeds, graph)
    if swaps_text is None:
        return HostUse(in_use, "host swap table unreadable: " + swaps_problem)
    return HostUse(in_use, swap_error)


# --- passthrough character nodes: the disk each one reaches ------------------------------

# Character interfaces that send commands straight to a storage device, by sysfs class.
SCSI_GENERIC_CLASS = "scsi_generic"  # /dev/sgN: SCSI commands to one SCSI device
BSG_CLASS = "bsg"  # /dev/bsg/H:C:T:L (or a transport's host): SG_IO v4
NVME_GENERIC_CLASS = "nvme-generic"  # /dev/ngXnY: NVMe I/O commands to one namespace
NVME_CLASS = "nvme"  # /dev/nvmeX: the controller (admin commands, every namespace)
PASSTHROUGH_CLASSES = (SCSI_GENERIC_CLASS, BSG_CLASS, NVME_GENERIC_CLASS, NVME_CLASS)
# The sg driver's character major is fixed (Documentation/admin-guide/devices.txt).
SCSI_GENERIC_MAJOR = 21
# Host names udev gives these nodes: a node by one of them that sysfs does not trace
# is refused, not taken for an ordinary character device.
_PASSTHROUGH_NAME = re.compile(r"/dev/(sg[0-9]+|bsg/.+|ng[0-9]+n[0-9]+|nvme[0-9]+)")
_NVME_GENERIC_NAME = re.compile(r"ng([0-9]+)n([0-9]+)")
_NVME_NAMESPACE_NAME = re.compile(r"nvme[0-9]+(c[0-9]+)?n[0-9]+")
_LABELS = {
    SCSI_GENERIC_CLASS: "SCSI generic",
    BSG_CLASS: "bsg",
    NVME_GENERIC_CLASS: "NVMe generic",
    NVME_CLASS: "NVMe controller",
}
# At most this many names in one reason (a controller may have hundreds of namespaces).
_MAX_NAMES_SHOWN = 4


@dataclass(frozen=True)
class PassthroughTarget:
    """What a passthrough character node reaches: exactly one disk, or a refusal."""

    node: str  # "SCSI generic sg0", "bsg 0:0:0:0", "NVMe generic ng0n1", "NVMe controller nvme0"
    disk: str = ""  # kernel name of the one disk it reaches ("sda", "nvme0n1")
    disk_rdev: DeviceNumber | None = None
    disk_dir: str = ""  # the disk's sysfs directory (its health and identity are read there)
    # Why no config may grant it (a controller, or not traced to exactly one disk);
    # "" when it reaches one disk.
    refusal: str = ""

    def in_use(self, host_use: HostUse) -> str | None:
        """Why the host's use of its disk refuses it ("in use: ... reaches /dev/sda
        (mounted at /)"), or the host use error (fail closed); None when the disk is free."""
        if host_use.error:
            return f"cannot tell whether the host uses its disk: {host_use.error}"
        reason = host_use.reason_for(self.disk_rdev)
        if reason is None:
            return None
        return f"in use: {self.node} reaches /dev/{_shown(self.disk)} ({reason})"


def _names_shown(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    if len(names) > _MAX_NAMES_SHOWN:
        shown += f" and {len(names) - _MAX_NAMES_SHOWN} more"
    return shown


def _class_device_dir(root: str, rdev: DeviceNumber) -> tuple[str, str] | None:
    """(sysfs directory, class) of a character device by number, through
    ``<sys-root>/dev/char/M:m``: the class from its ``subsystem`` link, else from the
    passthrough classes' listings, else ""; None when sysfs does not know the number."""
    device_dir = os.path.realpath(os.path.join(root, "dev", "char", f"{rdev[0]}:{rdev[1]}"))
    if not _is_dir(device_dir):
        return None
    subsystem = os.path.join(device_dir, "subsystem")
    if os.path.islink(subsystem):
        return device_dir, os.path.basename(os.path.realpath(subsystem))
    name = os.path.basename(device_dir)
    for cls in PASSTHROUGH_CLASSES:
        if os.path.realpath(os.path.join(root, "class", cls, name)) == device_dir:
            return device_dir, cls
    return device_dir, ""


def _disk_of_scsi_node(label: str, device_dir: str) -> PassthroughTarget:
    """sg and bsg: the class device's ``device`` is the SCSI device, whose ``block/``
    names its disk (a tape, an enclosure or a SCSI host has none)."""
    device_link = os.path.join(device_dir, "device")
    scsi_device = os.path.realpath(device_link)
    if not os.path.islink(device_link) or not _is_dir(scsi_device):
        return PassthroughTarget(label, refusal=f"{label} has no device in sysfs")
    reached = os.path.basename(scsi_device)
    disks = _list_dir(os.path.join(scsi_device, "block"))
    if len(disks) != 1:
        what = "no disk" if not disks else f"{len(disks)} disks ({_names_shown(disks)})"
        return PassthroughTarget(
            label, refusal=f"{label} reaches {reached}, which has {what}: not one disk to check"
        )
    disk_dir = os.path.realpath(os.path.join(scsi_device, "block", disks[0]))
    return _disk_target(label, disks[0], disk_dir)


def _disk_target(label: str, disk: str, disk_dir: str) -> PassthroughTarget:
    disk_rdev = _rdev_in(disk_dir)
    if disk_rdev is None:
        refusal = f"{label} reaches {disk}, which has no device number in sysfs"
        return PassthroughTarget(label, refusal=refusal)
    return PassthroughTarget(label, disk, disk_rdev, disk_dir)


def _namespace_of_generic_node(label: str, device_dir: str) -> PassthroughTarget:
    """ngXnY: the namespace's block device nvmeXnY sits beside it in sysfs (under its
    controller, or under the subsystem for a multipath head)."""
    match = _NVME_GENERIC_NAME.fullmatch(os.path.basename(device_dir))
    disk = f"nvme{match.group(1)}n{match.group(2)}" if match else ""
    disk_dir = os.path.join(os.path.dirname(device_dir), disk)
    if not disk or not _is_dir(disk_dir):
        return PassthroughTarget(
            label, refusal=f"{label}: no namespace block device beside it in sysfs"
        )
    return _disk_target(label, disk, os.path.realpath(disk_dir))


def _controller(label: str, device_dir: str) -> PassthroughTarget:
    namespaces = [n for n in _list_dir(device_dir) if _NVME_NAMESPACE_NAME.fullmatch(n)]
    behind = _names_shown(namespaces) if namespaces else "none now"
    return PassthroughTarget(
        label,
        refusal=f"{label} reaches the controller and every namespace behind it ({behind})",
    )


def trace_passthrough(
    sys_root: Path, rdev: DeviceNumber, host_paths: Iterable[str]
) -> PassthroughTarget | None:
    """The disk a passthrough character node reaches, from its number through sysfs:

    - ``/dev/sgN`` (``scsi_generic``) and ``/dev/bsg/*`` (``bsg``): the class device's
      ``device`` (the SCSI device), whose ``block/`` holds the disk;
    - ``/dev/ngXnY`` (``nvme-generic``): the namespace's block device ``nvmeXnY`` beside it;
    - ``/dev/nvmeX`` (``nvme``): a controller, which reaches every namespace: refused.

    A node reaching anything but exactly one disk is refused (fail closed), as is one
    that sysfs does not know while its number (sg's major) or one of its ``host_paths``
    says it is such a node. None for any other character device (read: no sysfs at all)."""
    root = str(sys_root)
    device_dir, cls = _class_device_dir(root, rdev) or ("", "")
    if cls not in PASSTHROUGH_CLASSES:
        if cls and rdev[0] != SCSI_GENERIC_MAJOR:
            return None  # sysfs says it is a device of another kind
        looks_like = [p for p in host_paths if _PASSTHROUGH_NAME.fullmatch(posixpath.normpath(p))]
        if rdev[0] != SCSI_GENERIC_MAJOR and not looks_like:
            return None
        shown = looks_like[0] if looks_like else f"character device {rdev[0]}:{rdev[1]}"
        label = f"passthrough node {shown}"
        return PassthroughTarget(
            label,
            refusal=f"{label}: sysfs does not trace {rdev[0]}:{rdev[1]} to a scsi_generic, bsg, "
            "nvme-generic or nvme device: cannot tell which disk it reaches",
        )
    label = f"{_LABELS[cls]} {os.path.basename(device_dir)}"
    if cls in (SCSI_GENERIC_CLASS, BSG_CLASS):
        return _disk_of_scsi_node(label, device_dir)
    if cls == NVME_GENERIC_CLASS:
        return _namespace_of_generic_node(label, device_dir)
    return _controller(label, device_dir)


# --- the built-in deny list ---------------------------------------------------------------

# Host paths (glob, ``*`` never crosses ``/``) that no config can grant, with why.
DENY_LIST: tuple[tuple[str, str], ...] = (
    # Kernel and physical memory, I/O ports, the kernel log.
    ("/dev/mem", "physical memory"),
    ("/dev/kmem", "kernel memory"),
    ("/dev/port", "I/O ports"),
    ("/dev/kmsg", "kernel log"),
    ("/dev/snapshot", "hibernation image (kernel memory)"),
    ("/dev/mcelog", "machine check log"),
    ("/dev/cpu/*/msr", "CPU model-specific registers"),
    ("/dev/cpu/*/cpuid", "CPU identification registers"),
    ("/dev/cpu/microcode", "CPU microcode loader"),
    ("/dev/cpu_dma_latency", "host-wide power management QoS"),
    ("/dev/nvram", "firmware NVRAM"),
    ("/dev/hpet", "host timer hardware"),
    ("/dev/rtc*", "host clock (rtc, rtc0, ...)"),
    ("/dev/watchdog*", "host watchdog, can reboot the node"),
    ("/dev/hwrng", "host hardware RNG"),
    ("/dev/tpm*", "host TPM (node identity; tpm0 and tpmrm0)"),
    ("/dev/ipmi*", "baseboard management controller"),
    ("/dev/papr-*", "Power firmware (RTAS) interface"),
    ("/dev/vmcp", "z/VM CP commands (hypervisor)"),
    ("/dev/hmcdrv", "IBM Z HMC drive"),
    # Kernel control interfaces for devices and file systems.
    ("/dev/mapper/control", "device-mapper control (all dm devices)"),
    ("/dev/nvme-fabrics", "NVMe over Fabrics control (connects the host to remote storage)"),
    ("/dev/loop-control", "loop device control"),
    ("/dev/btrfs-control", "btrfs control"),
    ("/dev/ublk-control", "ublk control"),
    ("/dev/zfs", "ZFS control"),
    ("/dev/fuse", "FUSE (user file systems)"),
    ("/dev/autofs", "automount control"),
    ("/dev/userfaultfd", "userfaultfd"),
    ("/dev/uinput", "input injection"),
    ("/dev/input/uinput", "input injection"),
    ("/dev/uhid", "input injection"),
    ("/dev/rfkill", "host radios"),
    # Virtualisation and networking.
    ("/dev/kvm", "KVM"),
    ("/dev/vhost-*", "vhost (host kernel data path)"),
    ("/dev/vfio/*", "VFIO (device DMA pass-through)"),
    ("/dev/net/tun", "TUN/TAP (host networking)"),
    ("/dev/ppp", "PPP (host networking)"),
    # Consoles and terminals: keystroke injection, the host's login sessions.
    ("/dev/console", "host console"),
    ("/dev/tty*", "terminal (/dev/tty, virtual consoles, serial lines)"),
    ("/dev/ptmx", "pseudo-terminal master"),
    ("/dev/pts/*", "pseudo-terminal"),
    ("/dev/hvc*", "hypervisor console"),
    ("/dev/hvsi*", "hypervisor console"),
    ("/dev/sclp*", "IBM Z SCLP console"),
    ("/dev/3270/*", "IBM Z 3270 console"),
    ("/dev/vcs*", "virtual console memory"),
    # What every container runtime provides itself.
    ("/dev/null", "provided by the container runtime"),
    ("/dev/zero", "provided by the container runtime"),
    ("/dev/full", "provided by the container runtime"),
    ("/dev/random", "provided by the container runtime"),
    ("/dev/urandom", "provided by the container runtime"),
)


def host_glob_match(pattern: str, host_path: str) -> bool:
    """Glob semantics on host paths: ``*`` never crosses a ``/`` (as in glob, unlike fnmatch).

    The deny list and the config's include/exclude patterns (discovery) match alike."""
    pattern_parts = pattern.split("/")
    path_parts = host_path.split("/")
    if len(pattern_parts) != len(path_parts):
        return False
    return all(fnmatch.fnmatchcase(p, g) for g, p in zip(pattern_parts, path_parts))


def denied_reason(host_path: str) -> str | None:
    """``"built-in deny list: /dev/mem (physical memory)"`` for a denied host path, else None.

    The path is normalised first (``/dev//mem``, ``/dev/./mem``). Callers check every
    name of a device: its host path, its aliases and the target of its symlinks
    (:func:`first_denied_reason`).
    """
    path = posixpath.normpath(host_path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    for pattern, why in DENY_LIST:
        if host_glob_match(pattern, path):
            return f"{DENY_LIST_RULE}: {path} ({why})"
    return None


def first_denied_reason(host_paths: Iterable[str]) -> str | None:
    """The deny reason of the first denied name among a device's names, else None."""
    for host_path in host_paths:
        reason = denied_reason(host_path)
        if reason is not None:
            return reason
    return None


# Character device numbers fixed by the kernel (Documentation/admin-guide/devices.txt),
# so a node made under another name is still caught.
_DENIED_CHAR_MAJORS: Mapping[int, str] = {
    1: "memory devices (mem, kmem, port, null, zero, random, kmsg, ...)",
    4: "terminal",
    5: "terminal or console",
    7: "virtual console memory",
    **{major: "pseudo-terminal" for major in range(136, 144)},
    202: "CPU model-specific registers",
    203: "CPU identification registers",
}
_DENIED_MISC_MINORS: Mapping[int, str] = {
    130: "watchdog",
    135: "host clock",
    144: "firmware NVRAM",
    183: "host hardware RNG",
    196: "VFIO",
    200: "TUN/TAP",
    223: "input injection (uinput)",
    227: "machine check log",
    228: "host timer hardware",
    229: "FUSE",
    231: "hibernation image",
    232: "KVM",
    234: "btrfs control",
    235: "automount control",
    236: "device-mapper control",
    237: "loop device control",
    238: "vhost-net",
    241: "vhost-vsock",
}
_MISC_MAJOR = 10


def denied_char_device(rdev: DeviceNumber) -> str | None:
    """The deny reason for a character device by number, whatever its name, else None."""
    major, minor = rdev
    why = _DENIED_CHAR_MAJORS.get(major)
    if why is None and major == _MISC_MAJOR:
        why = _DENIED_MISC_MINORS.get(minor)
    if why is None:
        return None
    return f"{DENY_LIST_RULE}: character device {major}:{minor} ({why})"
