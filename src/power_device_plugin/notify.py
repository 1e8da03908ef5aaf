"""Kernel change notification: one thread blocks until something it cares about changes.

Interface (what the device watcher and the lifecycle use)::

    notifier = ChangeNotifier()                       # NotifyUnavailable: poll instead
    notifier.watch_dirs("devices", ["/host/dev", "/host/dev/mapper"], DEVICE_DIR_EVENTS)
    notifier.watch_proc_file("host-use", "/host/proc/1/mountinfo")
    notifier.wake_on(stopping)                        # a WakingEvent: set() ends a wait
    wake = notifier.wait(5.0)                         # Wake(groups=frozenset({"devices"}))

Directories are watched with inotify (``inotify_simple``): a node or symlink
created, deleted or renamed in a watched directory, a ConfigMap's ``..data``
symlink swap, a socket created or removed. Device directories are watched for
those structural events only, never for writes: a write to a device node reports
``IN_MODIFY`` on its directory, and I/O must not wake the plugin.

The host's mount table and swaps are open files polled for ``POLLPRI|POLLERR``:
procfs raises both on ``/proc/<pid>/mountinfo`` when that mount namespace mounts
or unmounts, and on ``/proc/swaps`` on swapon/swapoff (checked on Linux 5.x and
6.x; a regular file, as in a fake tree, never raises them, so there the caller's
safety poll sees the change).

Kernel uevents (``uevents.UeventSocket``, a ``NETLINK_KOBJECT_UEVENT`` socket) are
one more source: ``watch_uevents(group, accept)`` wakes ``group`` for every event
``accept`` keeps (the watcher keeps block and SCSI devices), and the wake carries
them (``Wake.uevents``, one per action and device path, in order of arrival;
``Wake.uevents_lost`` when the kernel or the bound dropped some). That is how
sysfs-only changes (a size dropping to 0, a dm map changing) are heard: inotify
sees nothing in sysfs. Events ``accept`` drops never wake the caller. If the
socket cannot be opened, ``watch_uevents`` logs why once and returns False.

``wait`` returns after the first event plus a short quiet spell
(``DEBOUNCE_SECONDS``, at most ``MAX_BURST_SECONDS`` in all), so a hundred nodes
appearing at once, or thousands of path events, make one wake-up, not thousands.

A directory that vanishes loses its watch (``IN_IGNORED``); the caller calls
``watch_dirs`` again after every wake, which adds watches for directories that
appeared since. An overflowing event queue wakes every group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from .uevents import Uevent, UeventSocket, UeventsUnavailable

log = logging.getLogger(__name__)

# inotify event bits (linux/inotify.h), fixed by the kernel ABI.
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

# A name appearing, going or being renamed in the directory, or the directory itself going.
STRUCTURE_EVENTS = (
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
)
# Device directories: structure only (see the module docstring on IN_MODIFY).
DEVICE_DIR_EVENTS = STRUCTURE_EVENTS | IN_ONLYDIR
# A config directory: also a file rewritten in place.
CONFIG_DIR_EVENTS = STRUCTURE_EVENTS | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_ONLYDIR

PROC_CHANGE_EVENTS = select.POLLPRI | select.POLLERR
# Quiet time after an event before the caller is woken: udev creates a node and its
# links in a few ms; 100 multipath maps appearing together become one or two wakes.
DEBOUNCE_SECONDS = 0.05
# A steady stream of events still wakes the caller this often.
MAX_BURST_SECONDS = 0.25
# Without a WakingEvent to end a wait at once, a wait is cut into slices this long,
# so a stop is seen within about a second.
STOP_CHECK_SECONDS = 1.0

GROUP_INTERRUPT = "interrupt"
# Distinct (action, device) uevents kept for one wake; beyond, the wake says some
# were lost and the caller rescans fully (a SAN node flapping every path is ~10^4).
MAX_PENDING_UEVENTS = 16384


class NotifyUnavailable(Exception):
    """Kernel change notification cannot be set up here (the caller polls instead)."""


@dataclass(frozen=True)
class Wake:
    """Why a wait ended: the groups that saw a change (empty when the time ran out)."""

    groups: frozenset[str]
    # The kernel uevents seen (see ChangeNotifier.watch_uevents), and whether some were lost.
    uevents: tuple[Uevent, ...] = ()
    uevents_lost: bool = False

    @property
    def timed_out(self) -> bool:
        return not self.groups


class WakingEvent(threading.Event):
    """A ``threading.Event`` whose ``set()`` also ends every notifier wait registered
    with :meth:`ChangeNotifier.wake_on`, so a thread blocked in ``poll`` stops at once."""

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[ChangeNotifier] = []
        # Re-entrant: set() may run in a signal handler on a thread inside add_waker.
        self._wakers_lock = threading.RLock()

    def add_waker(self, notifier: ChangeNotifier) -> None:
        with self._wakers_lock:
            self._wakers.append(notifier)

    def remove_waker(self, notifier: ChangeNotifier) -> None:
        with self._wakers_lock, contextlib.suppress(ValueError):
            self._wakers.remove(notifier)

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers)
        for notifier in wakers:
            notifier.interrupt()


def _open_inotify() -> Any:
    try:
        from inotify_simple import INotify  # type: ignore[import-untyped]
    except ImportError as error:
        raise NotifyUnavailable(f"the inotify_simple package is not installed ({error})") from None
    try:
        return INotify(nonblocking=True)
    except (OSError, AttributeError) as error:
        # AttributeError: a libc without inotify_init1.
        raise NotifyUnavailable(f"inotify_init1 failed: {error}") from None


@dataclass(frozen=True)
class _DirWatch:
    wd: int
    mask: int


class ChangeNotifier:
    """One inotify descriptor, the procfs files, and a pipe to interrupt a wait,
    all in one ``select.poll``. Used by one thread; ``interrupt`` from any."""

    def __init__(
        self, debounce: float = DEBOUNCE_SECONDS, max_burst: float = MAX_BURST_SECONDS
    ) -> None:
        self._inotify = _open_inotify()
        self._debounce = debounce
        self._max_burst = max_burst
        self._poll = select.poll()
        self._poll.register(self._inotify.fileno(), select.POLLIN)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._poll.register(self._wake_read, select.POLLIN)
        # group -> (mask, directories) as last asked for; path -> its watch.
        self._wanted: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._watches: dict[str, _DirWatch] = {}
        self._groups_of_wd: dict[int, frozenset[str]] = {}
        self._proc_files: dict[int, tuple[IO[bytes], str]] = {}
        self._stop: threading.Event | None = None
        self._uevents: UeventSocket | None = None
        self._uevent_group = ""
        self._uevent_accept: Callable[[Uevent], bool] = _accept_all
        self._uevents_failed = False
        self._pending: dict[tuple[str, str], Uevent] = {}
        self._pending_lost = False
        self.closed = False

    # -- what to watch ---------------------------------------------------------

    def watch_dirs(self, group: str, dirs: Iterable[str], mask: int) -> dict[str, str]:
        """Watch exactly ``dirs`` for ``group`` (added and dropped as the list changes).

        Returns the directories that exist but could not be watched, with the reason
        (e.g. the inotify watch limit): the caller must poll those. Missing ones are
        not errors; they are tried again at the next call."""
        self._wanted[group] = (mask, tuple(dict.fromkeys(dirs)))
        return self._sync()

    def _sync(self) -> dict[str, str]:
        masks: dict[str, int] = {}
        groups: dict[str, set[str]] = {}
        for group, (mask, dirs) in self._wanted.items():
            for path in dirs:
                masks[path] = masks.get(path, 0) | mask
                groups.setdefault(path, set()).add(group)
        for path in [p for p in self._watches if p not in masks]:
            watch = self._watches.pop(path)
            self._groups_of_wd.pop(watch.wd, None)
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(watch.wd)
        failed: dict[str, str] = {}
        for path, mask in masks.items():
            known = self._watches.get(path)
            if known is not None and known.mask == mask:
                self._groups_of_wd[known.wd] = frozenset(groups[path])
                continue
            try:
                wd = self._inotify.add_watch(path, mask)
            except OSError as error:
                if os.path.isdir(path):
                    failed[path] = error.strerror or str(error)
                self._watches.pop(path, None)
                continue
            self._watches[path] = _DirWatch(wd, mask)
            self._groups_of_wd[wd] = frozenset(groups[path])
        return failed

    def watched(self) -> list[str]:
        """The directories watched now."""
        return sorted(self._watches)

    def watch_proc_file(self, group: str, path: str) -> bool:
        """Wake ``group`` when procfs flags ``path`` as changed; False if it cannot be opened."""
        try:
            handle = open(path, "rb")  # noqa: SIM115 - kept open until close()
        except OSError as error:
            log.warning("cannot watch %s for changes (%s); polled instead", path, error)
            return False
        handle.read()
        self._proc_files[handle.fileno()] = (handle, group)
        self._poll.register(handle.fileno(), PROC_CHANGE_EVENTS)
        return True

    def watch_uevents(
        self,
        group: str,
        accept: Callable[[Uevent], bool] | None = None,
        source: UeventSocket | None = None,
    ) -> bool:
        """Wake ``group`` on kernel uevents that ``accept`` keeps; False when the socket
        cannot be opened (logged once; later calls do not try again). ``source``
        replaces the kernel's socket (tests, the bench)."""
        self._uevent_group = group
        self._uevent_accept = accept or _accept_all
        if self._uevents is not None:
            return True
        if source is None:
            if self._uevents_failed:
                return False
            try:
                source = UeventSocket.open()
            except UeventsUnavailable as error:
                self._uevents_failed = True
                log.warning(
                    "no kernel uevents (%s): sysfs-only changes such as a size dropping to 0 "
                    "are seen at the periodic rescan",
                    error,
                )
                return False
        self._uevents = source
        self._poll.register(source.fileno(), select.POLLIN)
        return True

    def unwatch_uevents(self) -> None:
        """Close the uevent socket (watch_uevents opens it again)."""
        if self._uevents is None:
            return
        self._poll.unregister(self._uevents.fileno())
        self._uevents.close()
        self._uevents = None
        self._pending.clear()
        self._pending_lost = False

    @property
    def hears_uevents(self) -> bool:
        return self._uevents is not None

    def wake_on(self, stop: threading.Event) -> None:
        """End waits as soon as ``stop`` is set (at once for a WakingEvent, else within
        ``STOP_CHECK_SECONDS``)."""
        self._stop = stop
        if isinstance(stop, WakingEvent):
            stop.add_waker(self)

    # -- waiting ---------------------------------------------------------------

    def interrupt(self) -> None:
        """End the current (or next) wait; safe from any thread."""
        if self.closed:
            return
        with contextlib.suppress(OSError):  # a full pipe already wakes; a closed one is done
            os.write(self._wake_write, b"x")

    def wait(self, timeout: float) -> Wake:
        """Block until a change (then let a burst settle) or until ``timeout`` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)
        groups: set[str] = set()
        while True:
            if self._stop is not None and self._stop.is_set():
                return Wake(frozenset({GROUP_INTERRUPT}))
            left = deadline - time.monotonic()
            if left <= 0:
                return Wake(frozenset())
            if self._stop is not None and not isinstance(self._stop, WakingEvent):
                left = min(left, STOP_CHECK_SECONDS)
            ready = self._poll.poll(_ms(left))
            # Only what counts ends the wait: a uevent of no interest is read and dropped.
            groups = self._collect(ready) if ready else set()
            if groups:
                break
        burst_end = time.monotonic() + self._max_burst
        quiet_end = time.monotonic() + self._debounce
        while GROUP_INTERRUPT not in groups:
            left = min(quiet_end, burst_end) - time.monotonic()
            if left <= 0:
                break
            more = self._poll.poll(_ms(left))
            if not more:
                break
            new = self._collect(more)
            if new:
                # Only what counts extends the quiet spell.
                groups |= new
                quiet_end = time.monotonic() + self._debounce
        uevents, lost = tuple(self._pending.values()), self._pending_lost
        self._pending = {}
        self._pending_lost = False
        return Wake(frozenset(groups), uevents, lost)

    def _collect(self, ready: list[tuple[int, int]]) -> set[str]:
        groups: set[str] = set()
        for fd, _events in ready:
            if fd == self._wake_read:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_read, 512):
                        pass
                groups.add(GROUP_INTERRUPT)
            elif fd == self._inotify.fileno():
                groups |= self._inotify_groups()
            elif fd in self._proc_files:
                groups.add(self._proc_files[fd][1])
            elif (
                self._uevents is not None
                and fd == self._uevents.fileno()
                and self._collect_uevents(self._uevents)
            ):
                groups.add(self._uevent_group)
        return groups

    def _collect_uevents(self, source: UeventSocket) -> bool:
        """Read the waiting uevents; True if any of interest (or a loss) came."""
        try:
            drained = source.drain()
        except OSError as error:
            # Never seen; if the socket breaks, do without it (the caller rescans now).
            log.warning("kernel uevents failed (%s); seen at the periodic rescan from now", error)
            self.unwatch_uevents()
            self._uevents_failed = True
            self._pending_lost = True
            return True
        wanted = False
        if drained.lost:
            self._pending_lost = wanted = True
        for event in drained.events:
            if not self._uevent_accept(event):
                continue
            wanted = True
            key = (event.action, event.devpath)
            if key in self._pending:
                # Keep the order of the last occurrence: a remove then an add is an add.
                del self._pending[key]
            elif len(self._pending) >= MAX_PENDING_UEVENTS:
                self._pending_lost = True
                continue
            self._pending[key] = event
        return wanted

    def _inotify_groups(self) -> set[str]:
        groups: set[str] = set()
        for event in self._inotify.read(timeout=0):
            if event.mask & IN_Q_OVERFLOW:
                for wanted in self._wanted:
                    groups.add(wanted)
                continue
            groups |= self._groups_of_wd.get(event.wd, frozenset())
            if event.mask & IN_IGNORED:
                # The directory is gone (or unmounted): the next sync watches it again
                # if it comes back.
                self._groups_of_wd.pop(event.wd, None)
                for path, watch in list(self._watches.items()):
                    if watch.wd == event.wd:
                        del self._watches[path]
        return groups

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if isinstance(self._stop, WakingEvent):
            self._stop.remove_waker(self)
        for handle, _group in self._proc_files.values():
            handle.close()
        self._proc_files.clear()
        if self._uevents is not None:
            self._uevents.close()
            self._uevents = None
        self._inotify.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __enter__(self) -> ChangeNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _accept_all(event: Uevent) -> bool:
    return True


def _ms(seconds: float) -> int:
    # Round up: a poll that returns a hair early would spin once more for nothing.
    return max(0, int(seconds * 1000 + 0.999))
