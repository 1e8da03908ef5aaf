"""Kernel uevents: the block layer saying a disk, partition or dm map was added, removed
or changed, read from a ``NETLINK_KOBJECT_UEVENT`` socket.

Interface (what ``notify.ChangeNotifier`` uses)::

    source = UeventSocket.open()                     # UeventsUnavailable: do without
    batch = source.drain()                           # Drained(events=[Uevent, ...], lost=False)
    source.close()

Why a raw socket and not pyudev: the plugin image carries grpcio and protobuf
only. pyudev needs ``libudev.so.1`` through ctypes (another package in both
bases, and a C library parsing input in our address space), and its kernel
monitor is this same socket bound to the same group. What we need from a message
is five fields; the parser below is short, bounded and tested on its own.

The socket is bound to group 1, the kernel's own broadcast (udevd's re-broadcast,
group 2, never reaches a pod in its own network namespace, and comes from
userspace). A container in its own network namespace with no capabilities
receives these (see docs/plugin.md). Every datagram is checked:

- the sender is the kernel: netlink port id 0, sent to group 1 (a process in the
  pod's namespace cannot forge that; a datagram from any port id but 0 is dropped);
- at most ``MAX_MESSAGE_BYTES`` (a truncated datagram is dropped), at most
  ``MAX_FIELDS`` ``KEY=value`` fields, keys of capitals, digits and ``_``, ASCII;
- the header ``action@devpath`` agrees with ``ACTION=`` and ``DEVPATH=``.

A message is ``change@/devices/virtual/block/loop3\\0ACTION=change\\0DEVPATH=...\\0
SUBSYSTEM=block\\0MAJOR=7\\0MINOR=3\\0DEVNAME=loop3\\0DEVTYPE=disk\\0SEQNUM=4711\\0``.

When the kernel had to drop messages because the socket buffer was full
(``ENOBUFS``, a burst of thousands of path events while the watcher was busy), the
drain says ``lost``: the caller must rescan fully, since it cannot know what it missed.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

NETLINK_KOBJECT_UEVENT = 15
# The kernel's own uevent broadcast group (udevd re-sends on group 2).
KERNEL_GROUP = 1
# The kernel builds a uevent in a 2048-byte environment buffer (UEVENT_BUFFER_SIZE)
# behind an "action@devpath" header; anything larger did not come from it.
MAX_MESSAGE_BYTES = 8192
# UEVENT_NUM_ENVP is 64 (32 on older kernels).
MAX_FIELDS = 64
MAX_KEY_CHARS = 64
# Ask for a receive buffer this large (the kernel caps it at net.core.rmem_max
# without CAP_NET_ADMIN; an overflow is reported as lost events, never missed).
RECEIVE_BUFFER_BYTES = 4 << 20
# One drain reads at most this many datagrams, so a storm cannot hold the thread;
# the rest wait in the socket for the next drain.
MAX_DRAIN_MESSAGES = 8192

ACTIONS = frozenset({"add", "remove", "change", "move", "online", "offline", "bind", "unbind"})
# Actions after which the set of devices may differ: only a full scan can tell.
STRUCTURAL_ACTIONS = frozenset({"add", "remove", "move"})

DeviceNumber = tuple[int, int]


class UeventsUnavailable(Exception):
    """No uevent socket here (no netlink, a seccomp filter, a kernel without it)."""


@dataclass(frozen=True)
class Uevent:
    """The fields of one kernel uevent the device watcher uses."""

    action: str
    devpath: str  # /devices/virtual/block/loop3, under the sysfs root
    subsystem: str  # block, scsi, ...
    devtype: str = ""  # disk, partition, scsi_device, ...
    devname: str = ""  # loop3, mapper names never (the kernel name: dm-0)
    rdev: DeviceNumber | None = None  # MAJOR:MINOR when the kernel gave both

    @property
    def structural(self) -> bool:
        return self.action in STRUCTURAL_ACTIONS


_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _key_ok(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_CHARS and _KEY_CHARS.issuperset(key)


def parse_uevent(data: bytes) -> Uevent | None:
    """One kernel uevent datagram -> Uevent, or None when it is not one (bounded)."""
    if not data or len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split("\0")
    if parts and parts[-1] == "":
        parts.pop()
    if len(parts) < 2 or len(parts) > MAX_FIELDS + 1:
        return None
    action, at, devpath = parts[0].partition("@")
    if not at or action not in ACTIONS or not devpath.startswith("/"):
        return None
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if not eq or not _key_ok(key) or key in fields:
            return None
        fields[key] = value
    if fields.get("ACTION") != action or fields.get("DEVPATH") != devpath:
        return None
    subsystem = fields.get("SUBSYSTEM", "")
    if not subsystem:
        return None
    return Uevent(
        action=action,
        devpath=devpath,
        subsystem=subsystem,
        devtype=fields.get("DEVTYPE", ""),
        devname=fields.get("DEVNAME", ""),
        rdev=_device_number(fields.get("MAJOR"), fields.get("MINOR")),
    )


def _device_number(major: str | None, minor: str | None) -> DeviceNumber | None:
    if not major or not minor or not major.isdigit() or not minor.isdigit():
        return None
    if len(major) > 10 or len(minor) > 10:
        return None
    return (int(major), int(minor))


@dataclass
class Drained:
    """What one drain read: the events (in order), and whether the kernel dropped some."""

    events: list[Uevent] = field(default_factory=list)
    lost: bool = False
    # Datagrams dropped for failing the checks (not from the kernel, malformed, too big).
    refused: int = 0


class UeventSocket:
    """A non-blocking socket of kernel uevents.

    ``sock`` and ``kernel_only`` exist for tests and the bench, which feed the same
    datagrams through a socketpair (whose sender is not the kernel)."""

    def __init__(self, sock: socket.socket, kernel_only: bool = True) -> None:
        self._sock = sock
        self._kernel_only = kernel_only
        self._sock.setblocking(False)

    @classmethod
    def open(cls) -> UeventSocket:
        family = getattr(socket, "AF_NETLINK", None)
        if family is None:
            raise UeventsUnavailable("this platform has no AF_NETLINK sockets")
        try:
            sock = socket.socket(
                family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT
            )
        except OSError as error:
            raise UeventsUnavailable(f"netlink uevent socket: {error.strerror or error}") from None
        try:
            _grow_receive_buffer(sock)
            sock.bind((0, KERNEL_GROUP))
        except OSError as error:
            sock.close()
            raise UeventsUnavailable(
                f"binding the netlink uevent socket to group {KERNEL_GROUP}: "
                f"{error.strerror or error}"
            ) from None
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, limit: int = MAX_DRAIN_MESSAGES) -> Drained:
        """Read what is waiting (at most ``limit`` datagrams) without blocking."""
        drained = Drained()
        for _ in range(limit):
            try:
                data, _ancillary, flags, sender = self._sock.recvmsg(MAX_MESSAGE_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    # The kernel dropped messages; the socket goes on working.
                    drained.lost = True
                    continue
                raise
            if flags & socket.MSG_TRUNC or (self._kernel_only and not _from_kernel(sender)):
                drained.refused += 1
                continue
            event = parse_uevent(data)
            if event is None:
                drained.refused += 1
                continue
            drained.events.append(event)
        return drained

    def close(self) -> None:
        self._sock.close()


def _from_kernel(sender: object) -> bool:
    """A netlink sender address is (port id, groups): the kernel is port 0, and its
    uevents go to group 1 (mask 1)."""
    if not isinstance(sender, tuple) or len(sender) != 2:
        return False
    port_id, groups = sender
    return bool(port_id == 0 and groups == 1 << (KERNEL_GROUP - 1))


def _grow_receive_buffer(sock: socket.socket) -> None:
    # SO_RCVBUFFORCE needs CAP_NET_ADMIN, which the DaemonSet drops; then take what
    # rmem_max allows.
    force = getattr(socket, "SO_RCVBUFFORCE", 33)
    for option in (force, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER_BYTES)
            return
        except OSError:
            continue


def format_uevent(
    action: str,
    devpath: str,
    subsystem: str = "block",
    extra: dict[str, str] | None = None,
    seqnum: int = 1,
) -> bytes:
    """A datagram as the kernel sends it (for tests and the bench)."""
    fields = {"ACTION": action, "DEVPATH": devpath, "SUBSYSTEM": subsystem, **(extra or {})}
    fields["SEQNUM"] = str(seqnum)
    body = "".join(f"{key}={value}\0" for key, value in fields.items())
    return f"{action}@{devpath}\0{body}".encode("ascii")
