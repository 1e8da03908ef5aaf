"""Kernel change notification: what wakes a waiting thread, and what does not."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.conftest import FakeHost, config_of
from tests.unit.uevent_feed import UeventFeed

from power_device_plugin import notify, watch
from power_device_plugin.devices import DeviceState
from power_device_plugin.discovery import ScanResult
from power_device_plugin.notify import (
    CONFIG_DIR_EVENTS,
    DEVICE_DIR_EVENTS,
    ChangeNotifier,
    NotifyUnavailable,
    WakingEvent,
)
from power_device_plugin.uevents import Uevent, UeventSocket, UeventsUnavailable
from power_device_plugin.watch import ConfigWatcher, DeviceWatcher, StaticConfig


@pytest.fixture
def notifier() -> Iterator[ChangeNotifier]:
    with ChangeNotifier(debounce=0.05, max_burst=0.5) as made:
        yield made


def test_a_node_created_in_a_watched_directory_wakes_its_group(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    notifier.watch_dirs("devices", [str(tmp_path)], DEVICE_DIR_EVENTS)
    os.mknod(tmp_path / "dm-0", 0o600 | 0o060000, os.makedev(253, 0))
    assert notifier.wait(5.0).groups == {"devices"}


def test_nothing_happening_times_out_with_no_group(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    notifier.watch_dirs("devices", [str(tmp_path)], DEVICE_DIR_EVENTS)
    assert notifier.wait(0.05).timed_out


def test_writing_to_a_file_in_a_device_directory_does_not_wake(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    # I/O on a device node shows as IN_MODIFY on its directory: it must not wake us.
    target = tmp_path / "data"
    target.write_bytes(b"0")
    notifier.watch_dirs("devices", [str(tmp_path)], DEVICE_DIR_EVENTS)
    with open(target, "r+b") as handle:
        handle.write(b"1234")
    assert notifier.wait(0.2).timed_out


def test_a_burst_of_nodes_is_one_wake(notifier: ChangeNotifier, tmp_path: Path) -> None:
    notifier.watch_dirs("devices", [str(tmp_path)], DEVICE_DIR_EVENTS)
    for index in range(100):
        os.mknod(tmp_path / f"dm-{index}", 0o600 | 0o060000, os.makedev(253, index))
    assert notifier.wait(5.0).groups == {"devices"}
    # The burst was taken whole: nothing of it is left for a second wake.
    assert notifier.wait(0.1).timed_out


def test_a_configmap_symlink_swap_wakes_the_config_group(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v2").mkdir()
    (tmp_path / "..data").symlink_to("..v1")
    notifier.watch_dirs("config", [str(tmp_path)], CONFIG_DIR_EVENTS)
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert notifier.wait(5.0).groups == {"config"}


def test_a_directory_that_appears_later_is_watched_on_the_next_sync(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    mapper = tmp_path / "mapper"
    dirs = [str(tmp_path), str(mapper)]
    assert notifier.watch_dirs("devices", dirs, DEVICE_DIR_EVENTS) == {}
    assert notifier.watched() == [str(tmp_path)]
    mapper.mkdir()
    assert notifier.wait(5.0).groups == {"devices"}
    notifier.watch_dirs("devices", dirs, DEVICE_DIR_EVENTS)
    (mapper / "mpatha").symlink_to("../dm-0")
    assert notifier.wait(5.0).groups == {"devices"}


def test_a_directory_that_vanishes_loses_its_watch_and_wakes(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    crypto = tmp_path / "crypto"
    crypto.mkdir()
    notifier.watch_dirs("devices", [str(crypto)], DEVICE_DIR_EVENTS)
    crypto.rmdir()
    assert notifier.wait(5.0).groups == {"devices"}
    assert notifier.watched() == []


def test_setting_a_waking_event_ends_a_long_wait(notifier: ChangeNotifier) -> None:
    stop = WakingEvent()
    notifier.wake_on(stop)
    result: list[frozenset[str]] = []
    thread = threading.Thread(target=lambda: result.append(notifier.wait(3600).groups))
    thread.start()
    stop.set()
    thread.join(5.0)
    assert not thread.is_alive()
    assert result == [frozenset({notify.GROUP_INTERRUPT})]


def _mount_tmpfs(path: Path) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "none", str(path)]).returncode == 0


def test_a_mount_on_the_host_wakes_the_mount_table_group(
    notifier: ChangeNotifier, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    assert notifier.watch_proc_file("host-use", "/proc/1/mountinfo")
    point = tmp_path / "point"
    point.mkdir()
    assert _mount_tmpfs(point), "cannot mount a tmpfs here"
    try:
        assert notifier.wait(5.0).groups == {"host-use"}
        # Seen once, then quiet until the next change.
        assert notifier.wait(0.1).timed_out
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert notifier.wait(5.0).groups == {"host-use"}


def test_swap_turned_on_wakes_the_swaps_group(notifier: ChangeNotifier, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("swapon needs root")
    swap = tmp_path / "swap"
    swap.write_bytes(bytes(4 << 20))
    swap.chmod(0o600)
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    assert notifier.watch_proc_file("host-use", "/proc/swaps")
    turned_on = subprocess.run(["swapon", str(swap)], capture_output=True, text=True)
    if turned_on.returncode != 0:
        pytest.skip(f"this kernel or container refuses swapon: {turned_on.stderr.strip()}")
    try:
        assert notifier.wait(5.0).groups == {"host-use"}
    finally:
        subprocess.run(["swapoff", str(swap)], check=True)
    assert notifier.wait(5.0).groups == {"host-use"}


# -- the device watcher on notifications ----------------------------------------


def _run(watcher: DeviceWatcher) -> tuple[WakingEvent, threading.Thread]:
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    return stop, thread


def _stop(stop: WakingEvent, thread: threading.Thread) -> None:
    stop.set()
    thread.join(5.0)
    assert not thread.is_alive()


def test_a_new_node_is_scanned_on_its_event_not_at_the_safety_poll(host: FakeHost) -> None:
    state = DeviceState()
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of(scan_interval="1h")),
        host.dev,
        host.sys,
        host.proc,
        safety_poll_seconds=3600,
    )
    watcher.check()
    subscription = state.subscribe()
    stop, thread = _run(watcher)
    try:
        host.disk("sdx")
        # Neither the safety poll nor the rescan is due for an hour: only the event can do it.
        snapshot = subscription.wait(10.0)
    finally:
        _stop(stop, thread)
    assert watcher.waiting_by == "inotify"
    assert snapshot is not None
    assert [r.host_path for r in snapshot.records] == ["/dev/sdx"]


def test_a_burst_of_nodes_makes_one_or_two_scans(host: FakeHost) -> None:
    scans: list[ScanResult] = []
    state = DeviceState()
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of(include_devices=["/dev/dm-*"], scan_interval="1h")),
        host.dev,
        host.sys,
        host.proc,
        safety_poll_seconds=3600,
        on_scan=lambda result, seconds: scans.append(result),
    )
    watcher.check()
    subscription = state.subscribe()
    stop, thread = _run(watcher)
    try:
        for index in range(100):
            host.block_node(f"/dev/dm-{index}", (253, index))
        seen = 0
        while seen < 100:
            snapshot = subscription.wait(10.0)
            assert snapshot is not None, f"only {seen} of 100 nodes seen"
            seen = len(snapshot.records)
    finally:
        _stop(stop, thread)
    assert 2 <= len(scans) <= 3  # the first scan, then one or two for the burst


def test_a_config_update_is_applied_on_its_event(host: FakeHost, tmp_path: Path) -> None:
    host.disk("sda")
    host.disk("sdb")
    path = tmp_path / "config.json"
    path.write_text('{"scan-interval": "1h"}')
    state = DeviceState()
    watcher = DeviceWatcher(
        state, ConfigWatcher(path), host.dev, host.sys, host.proc, safety_poll_seconds=3600
    )
    watcher.check()
    subscription = state.subscribe()
    stop, thread = _run(watcher)
    try:
        path.write_text('{"scan-interval": "1h", "exclude-devices": ["/dev/sdb"]}')
        snapshot = subscription.wait(10.0)
    finally:
        _stop(stop, thread)
    assert snapshot is not None
    assert [r.host_path for r in snapshot.records] == ["/dev/sda"]


def test_without_inotify_the_watcher_polls_and_says_so_once(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable(*args: object, **kwargs: object) -> ChangeNotifier:
        raise NotifyUnavailable("inotify_init1 failed: [Errno 24] Too many open files")

    monkeypatch.setattr(watch, "ChangeNotifier", unavailable)
    state = DeviceState()
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of(scan_interval="1h")),
        host.dev,
        host.sys,
        host.proc,
        poll_interval=0.05,
        safety_poll_seconds=3600,
    )
    watcher.check()
    subscription = state.subscribe()
    stop, thread = _run(watcher)
    try:
        host.disk("sdx")
        snapshot = subscription.wait(10.0)
    finally:
        _stop(stop, thread)
    assert watcher.waiting_by == "poll"
    assert snapshot is not None and [r.host_path for r in snapshot.records] == ["/dev/sdx"]
    fallbacks = [r for r in caplog.records if "no kernel change notification" in r.getMessage()]
    assert len(fallbacks) == 1
    assert "Too many open files" in fallbacks[0].getMessage()


def test_without_the_inotify_package_notification_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "inotify_simple", None)
    with pytest.raises(NotifyUnavailable, match="inotify_simple"):
        ChangeNotifier()


def test_a_mount_on_the_host_makes_the_watcher_rescan_without_waiting(
    host: FakeHost, tmp_path: Path
) -> None:
    # The real /proc: procfs flags PID 1's mount table, which a fake file cannot.
    scanned = threading.Event()
    scans: list[ScanResult] = []

    def on_scan(result: ScanResult, seconds: float) -> None:
        scans.append(result)
        scanned.set()

    watcher = DeviceWatcher(
        DeviceState(),
        StaticConfig(config_of(scan_interval="1h")),
        host.dev,
        host.sys,
        Path("/proc"),
        safety_poll_seconds=3600,
        on_scan=on_scan,
    )
    watcher.check()
    stop, thread = _run(watcher)
    point = tmp_path / "point"
    point.mkdir()
    try:
        # A mount before the watch is in place is seen too: the watcher's first look,
        # once its watches are set, compares the mount table's digest.
        before = len(scans)
        scanned.clear()
        assert _mount_tmpfs(point), "cannot mount a tmpfs here"
        try:
            assert scanned.wait(10.0), "no rescan after the mount"
        finally:
            subprocess.run(["umount", str(point)], check=True)
    finally:
        _stop(stop, thread)
    assert len(scans) > before


# -- kernel uevents ------------------------------------------------------------------


@pytest.fixture
def feed() -> Iterator[UeventFeed]:
    made = UeventFeed()
    yield made
    made.close()


def _blocks_only(event: Uevent) -> bool:
    return event.subsystem == "block"


def test_a_uevent_wakes_its_group_and_the_wake_carries_it(
    notifier: ChangeNotifier, feed: UeventFeed
) -> None:
    assert notifier.watch_uevents("uevents", _blocks_only, feed.source())
    feed.send("change", "loop3", (7, 3))
    wake = notifier.wait(5.0)
    assert wake.groups == {"uevents"}
    assert [(e.action, e.devname, e.rdev) for e in wake.uevents] == [("change", "loop3", (7, 3))]
    assert not wake.uevents_lost


def test_a_uevent_the_filter_drops_does_not_wake(
    notifier: ChangeNotifier, feed: UeventFeed
) -> None:
    notifier.watch_uevents("uevents", _blocks_only, feed.source())
    feed.send("change", "eth0", devpath="/devices/virtual/net/eth0", subsystem="net")
    assert notifier.wait(0.2).timed_out


def test_a_burst_of_uevents_is_one_wake_with_each_device_once(
    feed: UeventFeed,
) -> None:
    def burst() -> None:
        for _ in range(4):
            for index in range(1000):
                feed.send("change", f"sd{index}", (8, index))

    # A socketpair queues few datagrams: the sender runs while the notifier reads.
    sender = threading.Thread(target=burst)
    with ChangeNotifier(debounce=0.2, max_burst=10.0) as notifier:
        notifier.watch_uevents("uevents", _blocks_only, feed.source())
        sender.start()
        wake = notifier.wait(5.0)
        sender.join(5.0)
    assert wake.groups == {"uevents"}
    assert len(wake.uevents) == 1000
    assert not wake.uevents_lost


def test_more_distinct_uevents_than_the_bound_say_some_were_lost(
    notifier: ChangeNotifier, feed: UeventFeed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "MAX_PENDING_UEVENTS", 10)
    notifier.watch_uevents("uevents", _blocks_only, feed.source())
    sender = threading.Thread(
        target=lambda: [feed.send("change", f"sd{i}", (8, i)) for i in range(30)]
    )
    sender.start()
    wake = notifier.wait(5.0)
    sender.join(5.0)
    assert len(wake.uevents) == 10
    assert wake.uevents_lost


def test_a_uevent_socket_that_cannot_be_opened_is_reported_once_and_not_retried(
    notifier: ChangeNotifier, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def refuse() -> UeventSocket:
        attempts.append(1)
        raise UeventsUnavailable("netlink uevent socket: Protocol not supported")

    monkeypatch.setattr(UeventSocket, "open", staticmethod(refuse))
    with caplog.at_level("WARNING"):
        assert not notifier.watch_uevents("uevents", _blocks_only)
        assert not notifier.watch_uevents("uevents", _blocks_only)
    assert len(attempts) == 1
    assert [r.getMessage() for r in caplog.records if "uevents" in r.getMessage()] == [
        "no kernel uevents (netlink uevent socket: Protocol not supported): sysfs-only "
        "changes such as a size dropping to 0 are seen at the periodic rescan"
    ]
    assert not notifier.hears_uevents


def test_unwatching_uevents_closes_the_socket(notifier: ChangeNotifier, feed: UeventFeed) -> None:
    notifier.watch_uevents("uevents", _blocks_only, feed.source())
    notifier.unwatch_uevents()
    assert not notifier.hears_uevents
    assert feed.source().fileno() == -1


def test_uevents_of_no_interest_do_not_stretch_the_quiet_spell(feed: UeventFeed) -> None:
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            feed.send("change", "eth0", devpath="/devices/virtual/net/eth0", subsystem="net")
            time.sleep(0.01)

    sender = threading.Thread(target=chatter)
    with ChangeNotifier(debounce=0.05, max_burst=3.0) as notifier:
        notifier.watch_uevents("uevents", _blocks_only, feed.source())
        feed.send("change", "loop3", (7, 3))
        sender.start()
        started = time.monotonic()
        wake = notifier.wait(5.0)
        took = time.monotonic() - started
        stop.set()
        sender.join(2.0)
    assert [e.devname for e in wake.uevents] == ["loop3"]
    assert took < 1.0, f"the wait took {took:.2f} s: events of no interest kept it going"
