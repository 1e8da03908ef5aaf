"""Change detection for the config file, the device trees and the host's use of them.

Interface (what the lifecycle uses)::

    configs = ConfigWatcher(config_path, on_error=..., on_change=...)
    watcher = DeviceWatcher(state, configs, dev_root, sys_root, host_proc, on_scan=...)
    watcher.check()                                   # first scan, synchronous
    threading.Thread(target=watcher.run, args=(stop_event,), daemon=True).start()

``check`` is one round: it polls the config, compares stat signatures and, when
something changed (or the periodic rescan is due), runs ``discovery.scan`` and
``DeviceState.update``, which pushes the new list to every ListAndWatch stream.

``run`` waits for the kernel to report a change (``notify.ChangeNotifier``):
inotify on the watched device directories and on the config file's directory,
``POLLPRI`` on the host's ``mountinfo`` and ``swaps``, and kernel uevents of block
and SCSI devices (``uevents``). An event runs a round at once (after a 50 ms
debounce); with no event a round runs every ``SAFETY_POLL_SECONDS`` (the safety
net: what inotify cannot see, such as a new name in ``<sys-root>/block`` without a
``/dev`` node, or a fake ``/proc`` made of regular files) and the full rescan
every ``scan-interval`` (what no event reports, e.g. a dm map suspended, is seen
there). If inotify cannot be set up (no ``inotify_simple``, no inotify, the watch
limit reached), ``run`` logs it once and falls back to a round every
``poll_interval``.

Uevents: a ``change`` of a block device (a loop device detached or resized, a dm
map reloaded after a path failed) re-reads the health facts of just the devices
it names and those above them (``refresh``), and publishes the list if a problem
appeared or went. An ``add``, ``remove`` or ``move`` runs the round's signature
check, which scans fully when the trees changed (the removal of an advertised
device scans at once); events the kernel had to drop run a full rescan. A burst of
thousands is one round per debounce. Without the socket (``UeventsUnavailable``:
logged once) everything works as before.

Signatures are stats of directories, never of every node: a node appearing or
disappearing changes its directory's mtime. The watched directories are
``<dev-root>`` itself, ``<dev-root>/mapper``, ``<dev-root>/crypto``, and the
directories the include globs point into; ``<sys-root>/block`` is compared by
its list of names, because sysfs does not keep directory mtimes up to date.
The host's use of its disks is part of every round, in every strategy: a digest
of ``<host-proc>/1/mountinfo`` and ``<host-proc>/swaps`` (procfs keeps no useful
mtimes), so a device mounted or swapped on later is withdrawn.

``discovery-strategy``: ``default`` watches as above and also rescans fully every
``scan-interval`` as a safety net; ``time`` only rescans every ``scan-interval``
(no watching of the device trees; the config and the host's mount table are
still watched).

The watcher's scans skip what no include can match (``scan(...,
explain_unmatched=False)``); the ``scan`` command still explains every device.

Fail closed: until a valid config has been read, nothing is scanned and nothing
is advertised; the log says why at start and every ``NO_CONFIG_LOG_SECONDS``.
The config file is watched by the stat signature of the path it resolves to, so
both a plain rewrite and a ConfigMap update (``config.json -> ..data/config.json``
with ``..data`` swapped to a new directory) are seen. A file that becomes invalid
or is deleted is reported through ``on_error`` and the last good config is kept.

A round that raises leaves the signatures unset, so the next round (one poll
interval later, not one scan interval) scans again.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol

from .config import STRATEGY_TIME, ConfigError, PluginConfig, load_config
from .devices import DeviceState, capacity_problem
from .discovery import ScanResult, scan, to_dev_root_path
from .health import Heartbeat
from .host_use import HostUse, read_host_use
from .notify import (
    CONFIG_DIR_EVENTS,
    DEVICE_DIR_EVENTS,
    ChangeNotifier,
    NotifyUnavailable,
    Wake,
)
from .refresh import is_device_event, plan_refresh, refreshed
from .uevents import UeventSocket

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL_SECONDS = 0.25
# With kernel notification, a round without an event this often: it catches what
# inotify cannot see and beats the heartbeat while the thread blocks.
SAFETY_POLL_SECONDS = 5.0
# A failed round under notification is retried this soon (as the poll would).
RETRY_SECONDS = 0.4
GROUP_DEVICES = "devices"
GROUP_CONFIG = "config"
GROUP_HOST_USE = "host-use"
GROUP_UEVENTS = "uevents"
# Groups whose events force a rescan; config events go through ConfigWatcher.poll.
_RESCAN_GROUPS = frozenset({GROUP_DEVICES, GROUP_HOST_USE})
# How often "no valid config yet" is repeated in the log: visible, not every tick.
NO_CONFIG_LOG_SECONDS = 60.0
# The host mount table of a busy node is some tens of KiB; bound what one poll reads.
MAX_PROC_BYTES_HASHED = 4 << 20
# Directories whose nodes the defaults can advertise even without include globs.
ALWAYS_WATCHED_HOST_DIRS = ("/dev", "/dev/mapper", "/dev/crypto")

Signature = tuple[Hashable, ...]


def _stat_signature(path: str) -> Hashable:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


MAX_CONFIG_BYTES_HASHED = 1 << 20


def _content_digest(path: str) -> Hashable:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read(MAX_CONFIG_BYTES_HASHED)).hexdigest()
    except OSError:
        return None


def file_signature(path: Path) -> Signature:
    """Which file ``path`` resolves to, its stat and its content digest: changes on a
    rewrite (even one of the same size within one timestamp tick) and on a symlink swap.

    Hashing is affordable because a config file is a few hundred bytes."""
    real = os.path.realpath(path)
    return (real, _stat_signature(real), _content_digest(real))


def watched_dirs(config: PluginConfig, dev_root: Path) -> list[str]:
    """Directories under dev-root whose entries can change what is advertised."""
    root = posixpath.normpath(str(dev_root))
    host_dirs = list(ALWAYS_WATCHED_HOST_DIRS)
    for pattern in config.include_devices:
        parent = posixpath.dirname(posixpath.normpath(pattern))
        if parent not in host_dirs:
            host_dirs.append(parent)
    found: list[str] = []
    for host_dir in host_dirs:
        under_root = to_dev_root_path(host_dir, root)
        paths = sorted(glob.glob(under_root)) if glob.has_magic(host_dir) else [under_root]
        found.extend(p for p in paths if p not in found)
    return found


def device_signature(config: PluginConfig, dev_root: Path, sys_root: Path) -> Signature:
    """Stats of the watched directories plus the names in ``<sys-root>/block``."""
    dirs = tuple((d, _stat_signature(d)) for d in watched_dirs(config, dev_root))
    try:
        block_names: Hashable = frozenset(os.listdir(os.path.join(str(sys_root), "block")))
    except OSError:
        block_names = None
    return (dirs, block_names)


def host_use_signature(host_proc: Path) -> Signature:
    """Digests of the host's mount table and swaps: they change when anything is
    mounted, unmounted, or swapped on or off."""
    digests: list[Hashable] = []
    for name in ("1/mountinfo", "swaps"):
        try:
            with open(os.path.join(str(host_proc), name), "rb") as handle:
                digests.append(hashlib.sha256(handle.read(MAX_PROC_BYTES_HASHED)).digest())
        except OSError:
            digests.append(None)
    return tuple(digests)


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim(0)``).

    A scan allocates and frees thousands of small objects; without a trim the freed
    pages stay in the process's RSS. A no-op where libc has no ``malloc_trim``
    (musl). ``ctypes`` is loaded anyway by the inotify library."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return
    trim(0)


def describe_config(config: PluginConfig) -> str:
    """The parts of a config that decide what is advertised, for log lines."""
    listed = [r for r in getattr(config, "resources", ()) if not r.single]
    if listed:
        return "; ".join(f"{r.name} ({describe_config(r.config)})" for r in listed)
    includes = ", ".join(config.include_devices) or "every block device"
    excludes = ", ".join(config.exclude_devices) or "none"
    return (
        f"include-devices: {includes}; exclude-devices: {excludes}; "
        f"nx-gzip: {str(config.nx_gzip).lower()}; grant-mode: {config.grant_mode}"
    )


Scanner = Callable[[PluginConfig, Path, Path, HostUse, bool], ScanResult]
Capacity = Callable[[PluginConfig, ScanResult], "str | None"]


def _capacity(config: PluginConfig, result: ScanResult) -> str | None:
    return capacity_problem(config, len(result.advertised()))


class ConfigSource(Protocol):
    last_error: ConfigError | None

    def current(self) -> PluginConfig | None: ...

    def poll(self) -> bool: ...

    def watched_dirs(self) -> list[str]: ...


class StaticConfig:
    """A config that never changes (for `scan` and tests)."""

    def __init__(self, config: PluginConfig | None) -> None:
        self._config = config
        self.last_error: ConfigError | None = None

    def current(self) -> PluginConfig | None:
        return self._config

    def poll(self) -> bool:
        return False

    def watched_dirs(self) -> list[str]:
        return []


class ConfigWatcher:
    """Holds the last good config of a file and reloads it when the file changes.

    ``current()`` is None until a valid config has been read. ``on_error(error)``
    is called once per bad version of the file, a missing file included (with the
    file, field and reason in the ConfigError); ``on_change(config, warnings)`` when
    a new good config is applied, including the first load.
    """

    def __init__(
        self,
        path: Path,
        on_error: Callable[[ConfigError], None] | None = None,
        on_change: Callable[[PluginConfig, list[str]], None] | None = None,
        load: Callable[[Path], tuple[PluginConfig, list[str]]] = load_config,
    ) -> None:
        self.path = path
        self._load = load
        self._on_error = on_error
        self._on_change = on_change
        self._lock = threading.Lock()
        self._config: PluginConfig | None = None
        self.warnings: list[str] = []
        self.last_error: ConfigError | None = None
        self._signature: Signature | None = None
        self.poll()

    def current(self) -> PluginConfig | None:
        with self._lock:
            return self._config

    def watched_dirs(self) -> list[str]:
        """The directories whose changes can change the file: its own (a ConfigMap's
        ``..data`` swap and in-place rewrites show there) and the one it resolves into."""
        own = os.path.dirname(os.path.abspath(self.path))
        real = os.path.dirname(os.path.realpath(self.path))
        return list(dict.fromkeys((own, real)))

    def poll(self) -> bool:
        """Reload if the file changed; True if a different good config was applied."""
        signature = file_signature(self.path)
        if signature == self._signature:
            return False
        first_load = self._signature is None
        self._signature = signature
        try:
            config, warnings = self._load(self.path)
        except ConfigError as error:
            self.last_error = error
            kept = self.current()
            if kept is None:
                log.error("%s; no valid config yet: advertising nothing", error)
            else:
                log.error("%s; keeping the last good config (%s)", error, describe_config(kept))
            if self._on_error is not None:
                self._on_error(error)
            return False
        self.last_error = None
        with self._lock:
            if config == self._config:
                return False
            first_config = self._config is None
            self._config = config
            self.warnings = warnings
        for warning in warnings:
            log.warning("%s", warning)
        log.info("config %s applied: %s", self.path, describe_config(config))
        if self._on_change is not None:
            self._on_change(config, warnings)
        # The first good config at start is not a change: the first scan reads it anyway.
        return not (first_load and first_config)


class DeviceWatcher:
    """Rescans when the device trees or the config change, or the periodic rescan is due.

    ``on_scan(result, seconds)`` is called after every scan (for metrics).
    """

    def __init__(
        self,
        state: DeviceState,
        config: ConfigSource,
        dev_root: Path,
        sys_root: Path,
        host_proc: Path,
        poll_interval: float = DEFAULT_POLL_INTERVAL_SECONDS,
        on_scan: Callable[[ScanResult, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_config_refused: Callable[[ConfigError], None] | None = None,
        notify: bool = True,
        safety_poll_seconds: float = SAFETY_POLL_SECONDS,
        uevents: bool = True,
        uevent_source: Callable[[], UeventSocket] | None = None,
        scanner: Scanner | None = None,
        capacity: Capacity = _capacity,
    ) -> None:
        self.state = state
        # Kernel uevents as one more source of run()'s notifier; ``uevent_source``
        # makes the socket instead of the kernel's (tests, the bench).
        self.uevents = uevents
        self._uevent_source = uevent_source
        # Rounds by what the last uevent wake led to: "refreshed" (the named devices'
        # health re-read), "rescanned" (a full scan); for tests and the bench.
        self.uevent_rounds: dict[str, int] = {"refreshed": 0, "rescanned": 0}
        # The discovery pass (discovery.scan when None) and its capacity check
        # (resources.py gives both for several resources).
        self._scanner = scanner
        self._capacity = capacity
        # Kernel change notification in run(); False: a round every poll_interval.
        self.notify = notify
        self.safety_poll_seconds = safety_poll_seconds
        # How run() waits: "inotify", "poll" (after a fallback), "" before run().
        self.waiting_by = ""
        self._on_config_refused = on_config_refused
        # The config the current snapshot was built under (None before the first scan).
        self.applied: PluginConfig | None = None
        self._refused: PluginConfig | None = None
        self.config = config
        self.dev_root = dev_root
        self.sys_root = sys_root
        self.host_proc = host_proc
        self.poll_interval = poll_interval
        self._on_scan = on_scan
        self._clock = clock
        self._signature: Signature | None = None
        # The last scan's result as published (with the config it was published
        # under): a uevent re-reads some of its devices' health.
        self._published: tuple[ScanResult, PluginConfig] | None = None
        self._next_full_scan: float | None = None
        self._next_no_config_log: float | None = None
        # Beaten once per round of run(); /healthz fails when it stops.
        self.heartbeat = Heartbeat("device watcher", clock)

    def _rescan(self, config: PluginConfig, now: float) -> bool:
        started = time.perf_counter()
        host_use = read_host_use(self.host_proc, self.sys_root)
        result = self._discover(config, host_use)
        if config != self.applied:
            config, result = self._capacity_checked(config, result, host_use)
        seconds = time.perf_counter() - started
        changed = self.state.update(result, config)
        self._published = (result, config)
        self.applied = config
        # Only after a scan that worked: a failed one is tried again next round.
        self._next_full_scan = now + config.scan_interval_seconds
        expiry = self.state.next_expiry()
        if expiry is not None:
            # A vanished device leaves the list when its time is up, not a scan-interval later.
            self._next_full_scan = min(self._next_full_scan, expiry)
        if self._on_scan is not None:
            self._on_scan(result, seconds)
        # Rescans are rare (a change, the config, every scan-interval) and cost far
        # more than the trim (~1 ms), which keeps RSS at its floor between them.
        release_free_heap()
        if changed:
            log.info(
                "device list changed: %d advertised units (%d devices found)",
                len(self.state.current().devices),
                len(result.advertised()),
            )
        return changed

    def _capacity_checked(
        self, config: PluginConfig, result: ScanResult, host_use: HostUse
    ) -> tuple[PluginConfig, ScanResult]:
        """A new config whose units would not fit one ListAndWatch message is refused:
        the last applied one stays (rescanned under it), or, with none, nothing is advertised."""
        problem = self._capacity(config, result)
        if problem is None:
            return config, result
        error = ConfigError(str(getattr(self.config, "path", "config")), "upper-limit", problem)
        self.config.last_error = error
        if config != self._refused:
            # Counted once per refused config, though every rescan checks it again
            # (fewer devices later may make it fit).
            self._refused = config
            if self._on_config_refused is not None:
                self._on_config_refused(error)
        kept = self.applied
        if kept is None:
            log.error("%s; no config applied yet: advertising nothing", error)
            return config, ScanResult(())
        log.error("%s; keeping the last applied config (%s)", error, describe_config(kept))
        return kept, self._discover(kept, host_use)

    def _discover(self, config: PluginConfig, host_use: HostUse) -> ScanResult:
        scanner = self._scanner if self._scanner is not None else scan
        return scanner(config, self.dev_root, self.sys_root, host_use, False)

    def _no_config_yet(self, now: float) -> None:
        """Fail closed, and say so now and then (ConfigWatcher logs each bad version)."""
        if self._next_no_config_log is None:
            self._next_no_config_log = now + NO_CONFIG_LOG_SECONDS
            return
        if now >= self._next_no_config_log:
            self._next_no_config_log = now + NO_CONFIG_LOG_SECONDS
            error = self.config.last_error
            log.error(
                "still no valid config (%s): advertising nothing",
                error if error is not None else "none read yet",
            )

    def check(self, force: bool = False) -> bool:
        """One round: True if the advertised list changed. ``force`` rescans even when
        no signature changed (the kernel reported a change to the trees)."""
        now = self._clock()
        config_changed = self.config.poll()
        config = self.config.current()
        if config is None:
            self._no_config_yet(now)
            return False
        due = self._next_full_scan is None or now >= self._next_full_scan
        # Taken before the scan, so a change during the scan shows up next round.
        signature: Signature = (host_use_signature(self.host_proc),)
        if config.discovery_strategy != STRATEGY_TIME:
            signature += (device_signature(config, self.dev_root, self.sys_root),)
        if not (force or config_changed or due or signature != self._signature):
            return False
        self._signature = None
        changed = self._rescan(config, now)
        self._signature = signature
        return changed

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set; a failing round is logged and the next one tried."""
        notifier = self._open_notifier(stop) if self.notify else None
        if notifier is None:
            self.waiting_by = "poll"
            self._run_polling(stop)
            return
        self.waiting_by = "inotify"
        try:
            self._run_notified(stop, notifier)
        finally:
            notifier.close()

    def _run_polling(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.check()
            except Exception:
                log.exception("device watch round failed; retrying in %.2fs", self.poll_interval)
            self.heartbeat.beat()
            stop.wait(self.poll_interval)

    def _open_notifier(self, stop: threading.Event) -> ChangeNotifier | None:
        try:
            notifier = ChangeNotifier()
        except NotifyUnavailable as error:
            log.warning(
                "no kernel change notification (%s): polling the device trees every %.2fs",
                error,
                self.poll_interval,
            )
            return None
        notifier.wake_on(stop)
        proc = str(self.host_proc)
        # The mount table read_host_use reads: PID 1's, else the one it falls back to.
        if not notifier.watch_proc_file(GROUP_HOST_USE, os.path.join(proc, "1", "mountinfo")):
            notifier.watch_proc_file(GROUP_HOST_USE, os.path.join(proc, "self", "mountinfo"))
        notifier.watch_proc_file(GROUP_HOST_USE, os.path.join(proc, "swaps"))
        return notifier

    def _watch_uevents(self, notifier: ChangeNotifier, config: PluginConfig | None) -> None:
        """Hear uevents under the default strategy (``time`` watches no device)."""
        if not self.uevents or config is None or config.discovery_strategy == STRATEGY_TIME:
            notifier.unwatch_uevents()
            return
        if notifier.hears_uevents:
            return
        source = None
        if self._uevent_source is not None:
            source = self._uevent_source()
        notifier.watch_uevents(GROUP_UEVENTS, is_device_event, source)

    def refresh_from_uevents(self, wake: Wake) -> bool:
        """Re-read the health of the devices the wake's uevents name and publish the
        list if it changed; False when only a full rescan can tell (the caller's)."""
        published = self._published
        if published is None:
            return False
        result, config = published
        plan = plan_refresh(wake.uevents, wake.uevents_lost, str(self.sys_root))
        if plan.rescan:
            log.debug("full rescan: %s", plan.rescan)
            return False
        advertised = {c.rdev for c in result.advertised()}
        if any(e.action == "remove" and e.rdev in advertised for e in plan.structural):
            # Its sysfs entry may outlive the event by a moment: do not wait for the
            # signature to show it.
            return False
        if any(e.rdev is None or e.rdev in advertised for e in plan.unresolved):
            # An advertised device's entry is gone: only a scan can say what is left.
            return False
        fresh = refreshed(result, plan.entries)
        if fresh is None:
            return False
        self.uevent_rounds["refreshed"] += 1
        if fresh is result:
            return True
        if self.state.update(fresh, config):
            log.info(
                "device health changed (kernel uevent): %d advertised units",
                len(self.state.current().devices),
            )
        self._published = (fresh, config)
        return True

    def _watch_dirs(self, notifier: ChangeNotifier) -> dict[str, str]:
        """(Re)point the watches at what the current config needs; the directories
        that exist but cannot be watched."""
        config = self.config.current()
        device_dirs: list[str] = []
        if config is not None and config.discovery_strategy != STRATEGY_TIME:
            device_dirs = watched_dirs(config, self.dev_root)
        self._watch_uevents(notifier, config)
        failed = notifier.watch_dirs(GROUP_DEVICES, device_dirs, DEVICE_DIR_EVENTS)
        failed.update(
            notifier.watch_dirs(GROUP_CONFIG, self.config.watched_dirs(), CONFIG_DIR_EVENTS)
        )
        return failed

    def _timeout(self, degraded: bool) -> float:
        """How long to block: the safety poll, cut short by a due full rescan."""
        timeout = self.poll_interval if degraded else self.safety_poll_seconds
        if self._next_full_scan is not None:
            timeout = min(timeout, max(0.0, self._next_full_scan - self._clock()))
        return timeout

    def _run_notified(self, stop: threading.Event, notifier: ChangeNotifier) -> None:
        unwatchable: dict[str, str] = {}
        retry = False
        while not stop.is_set():
            before = notifier.watched()
            failed = self._watch_dirs(notifier)
            if not set(notifier.watched()) <= set(before):
                # A directory newly watched may have changed before its watch was
                # there (at start: since the first scan): look once without waiting.
                notifier.interrupt()
            if failed and failed != unwatchable:
                log.warning(
                    "cannot watch %s; polling every %.2fs while that lasts",
                    "; ".join(f"{path} ({why})" for path, why in sorted(failed.items())),
                    self.poll_interval,
                )
            unwatchable = failed
            # After a failed round, the next one comes RETRY_SECONDS later, not at once:
            # a due rescan that keeps failing must not spin.
            timeout = RETRY_SECONDS if retry else self._timeout(degraded=bool(failed))
            try:
                wake = notifier.wait(timeout)
            except OSError:
                log.exception("waiting for device changes failed; polling instead")
                self.waiting_by = "poll"
                self._run_polling(stop)
                return
            self.heartbeat.beat()
            if stop.is_set():
                return
            try:
                force = bool(wake.groups & _RESCAN_GROUPS)
                if not force and GROUP_UEVENTS in wake.groups:
                    force = not self.refresh_from_uevents(wake)
                    if force:
                        self.uevent_rounds["rescanned"] += 1
                self.check(force=force)
                retry = False
            except Exception:
                retry = True
                log.exception("device watch round failed; retrying in %.2fs", RETRY_SECONDS)
