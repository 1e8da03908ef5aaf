from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.conftest import FakeHost, config_of
from tests.unit.uevent_feed import UeventFeed

from power_device_plugin.config import ConfigError, PluginConfig
from power_device_plugin.devices import DeviceState
from power_device_plugin.discovery import ScanResult
from power_device_plugin.notify import WakingEvent
from power_device_plugin.watch import (
    NO_CONFIG_LOG_SECONDS,
    ConfigWatcher,
    DeviceWatcher,
    StaticConfig,
    device_signature,
    watched_dirs,
)


class ConfigMapVolume:
    """A ConfigMap volume as the kubelet writes it: ``config.json -> ..data/config.json``
    and ``..data -> ..<timestamp>``, swapped atomically on every update."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "config.json"
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    def publish(self, doc: Any) -> None:
        self.generation += 1
        version_dir = self.root / f"..2026_11_27_{self.generation:04d}"
        version_dir.mkdir()
        text = doc if isinstance(doc, str) else json.dumps(doc)
        (version_dir / "config.json").write_text(text)
        temporary = self.root / "..data_tmp"
        temporary.symlink_to(version_dir.name)
        os.replace(temporary, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/config.json")


class Recorder:
    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.changes: list[PluginConfig] = []

    def on_error(self, error: ConfigError) -> None:
        self.errors.append(error)

    def on_change(self, config: PluginConfig, warnings: list[str]) -> None:
        self.changes.append(config)


def watcher_for(path: Path, recorder: Recorder) -> ConfigWatcher:
    return ConfigWatcher(path, on_error=recorder.on_error, on_change=recorder.on_change)


def test_config_watcher_loads_the_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"permissions": "r"}')
    recorder = Recorder()
    watcher = watcher_for(path, recorder)
    assert watcher.current().permissions == "r"
    assert [c.permissions for c in recorder.changes] == ["r"]


def test_config_watcher_has_no_config_while_the_file_is_missing(tmp_path: Path) -> None:
    recorder = Recorder()
    path = tmp_path / "config.json"
    watcher = watcher_for(path, recorder)
    assert watcher.current() is None
    assert watcher.poll() is False
    (error,) = recorder.errors
    assert (error.path, error.field) == (str(path), "<document>")
    assert "does not exist" in error.reason
    path.write_text('{"permissions": "r"}')
    assert watcher.poll() is True
    config = watcher.current()
    assert config is not None and config.permissions == "r"


def test_config_watcher_notices_a_plain_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"permissions": "r"}')
    watcher = ConfigWatcher(path)
    assert watcher.poll() is False
    path.write_text('{"permissions": "rwm"}')
    assert watcher.poll() is True
    assert watcher.current().permissions == "rwm"


def test_config_watcher_notices_a_configmap_symlink_swap(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "etc")
    volume.publish({"grant-mode": "all"})
    watcher = ConfigWatcher(volume.path)
    assert watcher.current().grant_mode == "all"
    volume.publish({"grant-mode": "per-device"})
    assert watcher.poll() is True
    assert watcher.current().grant_mode == "per-device"


def test_invalid_update_keeps_the_last_good_config_and_reports_once(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "etc")
    volume.publish({"permissions": "r"})
    recorder = Recorder()
    watcher = watcher_for(volume.path, recorder)
    volume.publish({"permissions": "rx"})
    assert watcher.poll() is False
    assert watcher.poll() is False
    assert watcher.current().permissions == "r"
    (error,) = recorder.errors
    assert error.field == "permissions"
    assert error.path == str(volume.path)
    assert "only r, w and m" in error.reason
    assert watcher.last_error is error

    volume.publish({"permissions": "w"})
    assert watcher.poll() is True
    assert watcher.current().permissions == "w"
    assert watcher.last_error is None


def test_invalid_config_at_start_means_no_config_and_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    recorder = Recorder()
    watcher = watcher_for(path, recorder)
    assert watcher.current() is None
    assert [e.field for e in recorder.errors] == ["<document>"]


def test_config_deleted_later_keeps_the_last_good_one_and_logs_what_was_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"include-devices": ["/dev/dm-*"], "permissions": "r"}')
    recorder = Recorder()
    watcher = watcher_for(path, recorder)
    path.unlink()
    with caplog.at_level(logging.ERROR):
        assert watcher.poll() is False
    config = watcher.current()
    assert config is not None
    assert (config.include_devices, config.permissions) == (("/dev/dm-*",), "r")
    (error,) = recorder.errors
    assert "does not exist" in error.reason
    assert str(path) in caplog.text
    assert "keeping the last good config (include-devices: /dev/dm-*;" in caplog.text


def test_config_made_invalid_later_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"include-devices": ["/dev/dm-*"]}')
    watcher = ConfigWatcher(path)
    path.write_text('{"include-devices": "/dev/dm-*"}')
    assert watcher.poll() is False
    config = watcher.current()
    assert config is not None and config.include_devices == ("/dev/dm-*",)
    assert watcher.last_error is not None and watcher.last_error.field == "include-devices"


def test_watched_dirs_cover_dev_root_mapper_crypto_and_include_parents(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "disk" / "by-id").mkdir(parents=True)
    (dev / "disk" / "by-path").mkdir(parents=True)
    config = config_of(include_devices=["/dev/accel/*", "/dev/disk/by-*/wwn-*"])
    assert watched_dirs(config, dev) == [
        str(dev),
        str(dev / "mapper"),
        str(dev / "crypto"),
        str(dev / "accel"),
        str(dev / "disk" / "by-id"),
        str(dev / "disk" / "by-path"),
    ]


def test_device_signature_changes_when_a_node_appears_in_a_watched_subdirectory(
    host: FakeHost,
) -> None:
    host.dm("dm-0", "mpatha")
    config = config_of()
    before = device_signature(config, host.dev, host.sys)
    assert device_signature(config, host.dev, host.sys) == before
    host.link("/dev/mapper/mpathb", "../dm-0")
    assert device_signature(config, host.dev, host.sys) != before


def test_device_signature_changes_when_sysfs_block_changes(host: FakeHost) -> None:
    config = config_of()
    before = device_signature(config, host.dev, host.sys)
    (host.sys / "block" / "sdq").mkdir()
    assert device_signature(config, host.dev, host.sys) != before


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def running(host: FakeHost) -> Iterator[tuple[DeviceState, DeviceWatcher]]:
    state = DeviceState()
    watcher = DeviceWatcher(
        state, StaticConfig(config_of()), host.dev, host.sys, host.proc, poll_interval=0.2
    )
    watcher.check()
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    yield state, watcher
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive()


def test_device_watcher_pushes_a_new_node_within_one_second(
    host: FakeHost, running: tuple[DeviceState, DeviceWatcher]
) -> None:
    state, _ = running
    subscription = state.subscribe()
    host.disk("sdx")
    started = time.monotonic()
    snapshot = subscription.wait(1.0)
    assert snapshot is not None, "no update within 1 s of the node appearing"
    assert time.monotonic() - started < 1.0
    assert [r.host_path for r in snapshot.records] == ["/dev/sdx"]


def test_device_watcher_pushes_a_vanished_node_as_unhealthy(
    host: FakeHost, running: tuple[DeviceState, DeviceWatcher]
) -> None:
    state, _ = running
    subscription = state.subscribe()
    host.disk("sdx")
    assert subscription.wait(1.0) is not None
    host.remove_disk("sdx")
    snapshot = subscription.wait(1.0)
    assert snapshot is not None
    # all mode keeps its unit, Unhealthy; the vanished device is kept on record.
    assert [(d.id, d.health) for d in snapshot.devices] == [("set-0", "Unhealthy")]
    assert [(r.host_path, r.health) for r in snapshot.records] == [("/dev/sdx", "Unhealthy")]


def test_device_watcher_rescans_when_the_config_changes(host: FakeHost, tmp_path: Path) -> None:
    host.disk("sda")
    host.disk("sdb")
    path = tmp_path / "config.json"
    path.write_text("{}")
    state = DeviceState()
    watcher = DeviceWatcher(state, ConfigWatcher(path), host.dev, host.sys, host.proc)
    watcher.check()
    assert len(state.current().records) == 2
    path.write_text('{"exclude-devices": ["/dev/sdb"]}')
    assert watcher.check() is True
    assert [r.host_path for r in state.current().records] == ["/dev/sda"]


def test_device_watcher_does_not_rescan_when_nothing_changed(host: FakeHost) -> None:
    host.disk("sda")
    scans: list[ScanResult] = []
    watcher = DeviceWatcher(
        DeviceState(),
        StaticConfig(config_of()),
        host.dev,
        host.sys,
        host.proc,
        on_scan=lambda result, seconds: scans.append(result),
        clock=FakeClock(),
    )
    watcher.check()
    watcher.check()
    watcher.check()
    assert len(scans) == 1


def test_device_watcher_rescans_fully_every_scan_interval(host: FakeHost) -> None:
    clock = FakeClock()
    scans: list[float] = []
    watcher = DeviceWatcher(
        DeviceState(),
        StaticConfig(config_of(scan_interval="30s")),
        host.dev,
        host.sys,
        host.proc,
        on_scan=lambda result, seconds: scans.append(clock.now),
        clock=clock,
    )
    watcher.check()
    clock.now += 29
    watcher.check()
    clock.now += 1
    watcher.check()
    assert scans == [1000.0, 1030.0]


def test_time_strategy_only_rescans_on_the_interval(host: FakeHost) -> None:
    clock = FakeClock()
    state = DeviceState()
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of(discovery_strategy="time", scan_interval="1m")),
        host.dev,
        host.sys,
        host.proc,
        clock=clock,
    )
    watcher.check()
    host.disk("sda")
    assert watcher.check() is False
    assert state.current().records == ()
    clock.now += 60
    assert watcher.check() is True
    assert [r.host_path for r in state.current().records] == ["/dev/sda"]


@pytest.mark.parametrize("notify", [False, True], ids=["polling", "notified"])
def test_a_failing_round_does_not_stop_the_watcher(host: FakeHost, notify: bool) -> None:
    calls: list[int] = []

    class FlakyConfig(StaticConfig):
        def poll(self) -> bool:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("transient")
            return False

    watcher = DeviceWatcher(
        DeviceState(),
        FlakyConfig(config_of()),
        host.dev,
        host.sys,
        host.proc,
        poll_interval=0.01,
        notify=notify,
        safety_poll_seconds=3600,
    )
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    # Polling goes round again and again; notified, the failed round is retried
    # without an event and without waiting for the safety poll.
    wanted = 2 if notify else 3
    deadline = time.monotonic() + 5.0
    while len(calls) < wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive()
    assert len(calls) >= wanted


def test_device_watcher_notices_a_node_in_a_directory_an_include_glob_points_into(
    host: FakeHost,
) -> None:
    host.directory("/dev/vfio")
    state = DeviceState()
    config = StaticConfig(config_of(include_devices=["/dev/accel/*"]))
    watcher = DeviceWatcher(state, config, host.dev, host.sys, host.proc, clock=FakeClock())
    watcher.check()
    host.block_node("/dev/accel/12")
    assert watcher.check() is True
    assert [r.host_path for r in state.current().records] == ["/dev/accel/12"]


def test_without_a_valid_config_nothing_is_scanned_nor_advertised(host: FakeHost) -> None:
    host.disk("sda")
    scans: list[ScanResult] = []
    state = DeviceState()
    watcher = DeviceWatcher(
        state,
        StaticConfig(None),
        host.dev,
        host.sys,
        host.proc,
        on_scan=lambda result, seconds: scans.append(result),
        clock=FakeClock(),
    )
    assert watcher.check() is False
    assert (scans, state.current().devices) == ([], ())


def test_no_config_is_logged_again_only_after_the_reminder_interval(
    host: FakeHost, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    configs = StaticConfig(None)
    configs.last_error = ConfigError("/etc/c.json", "<document>", "does not exist")
    watcher = DeviceWatcher(DeviceState(), configs, host.dev, host.sys, host.proc, clock=clock)
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            watcher.check()
            clock.now += 1
        assert "still no valid config" not in caplog.text
        clock.now += NO_CONFIG_LOG_SECONDS
        watcher.check()
        watcher.check()
    reminders = [r for r in caplog.records if "still no valid config" in r.getMessage()]
    assert len(reminders) == 1
    assert "/etc/c.json: <document>: does not exist" in reminders[0].getMessage()


def test_a_missing_config_at_start_advertises_nothing_until_the_file_appears(
    host: FakeHost, tmp_path: Path
) -> None:
    host.disk("sda")
    path = tmp_path / "config.json"
    state = DeviceState()
    watcher = DeviceWatcher(state, ConfigWatcher(path), host.dev, host.sys, host.proc)
    watcher.check()
    assert state.current().devices == ()
    path.write_text("{}")
    assert watcher.check() is True
    assert [r.host_path for r in state.current().records] == ["/dev/sda"]


def test_a_device_mounted_later_is_withdrawn_at_the_next_round(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    scans: list[ScanResult] = []
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of()),
        host.dev,
        host.sys,
        host.proc,
        clock=FakeClock(),
        on_scan=lambda result, seconds: scans.append(result),
    )
    watcher.check()
    assert sorted(r.host_path for r in state.current().records) == ["/dev/sda", "/dev/sdb"]
    host.mount("/dev/sdb", "/var/lib/kubelet")
    watcher.check()
    assert [c.host_path for c in scans[-1].advertised()] == ["/dev/sda"]
    assert {r.host_path: r.problem for r in state.current().records}["/dev/sdb"] != ""
    host.unmount_all()
    watcher.check()
    assert sorted(c.host_path for c in scans[-1].advertised()) == ["/dev/sda", "/dev/sdb"]


def test_the_time_strategy_still_notices_the_host_mount_table(host: FakeHost) -> None:
    host.disk("sda")
    scans: list[ScanResult] = []
    watcher = DeviceWatcher(
        DeviceState(),
        StaticConfig(config_of(discovery_strategy="time", scan_interval="1h")),
        host.dev,
        host.sys,
        host.proc,
        clock=FakeClock(),
        on_scan=lambda result, seconds: scans.append(result),
    )
    watcher.check()
    host.mount("/dev/sda", "/")
    watcher.check()
    assert len(scans) == 2 and scans[-1].advertised() == ()


def test_a_failed_scan_is_retried_at_the_next_round_not_the_next_interval(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import watch

    host.disk("sda")
    real_scan = watch.scan
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> ScanResult:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("sysfs went away")
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(watch, "scan", failing_once)
    state = DeviceState()
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of(scan_interval="1h")),
        host.dev,
        host.sys,
        host.proc,
        clock=FakeClock(),
    )
    with pytest.raises(OSError):
        watcher.check()
    assert watcher.check() is True
    assert [r.host_path for r in state.current().records] == ["/dev/sda"]
    # A round that failed later on is retried too, although nothing changed on the trees.
    host.disk("sdb")
    calls.clear()
    with pytest.raises(OSError):
        watcher.check()
    assert watcher.check() is True
    assert len(state.current().records) == 2


@pytest.mark.parametrize("notify", [False, True], ids=["polling", "notified"])
def test_the_watcher_heartbeat_goes_round_with_the_loop(host: FakeHost, notify: bool) -> None:
    clock = FakeClock()
    watcher = DeviceWatcher(
        DeviceState(),
        StaticConfig(config_of()),
        host.dev,
        host.sys,
        host.proc,
        clock=clock,
        poll_interval=0.01,
        notify=notify,
        # Blocked waiting for events, the loop still beats once per safety poll.
        safety_poll_seconds=0.01,
    )
    clock.now += 500
    assert watcher.heartbeat.age() == 500
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 5.0
    while watcher.heartbeat.age() != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive()
    assert watcher.heartbeat.age() == 0


def over_the_cap(path: Path) -> None:
    # 11 disks x 1000 units per device = 11000 units, over devices.MAX_UNITS (10000).
    path.write_text(json.dumps({"grant-mode": "per-device", "upper-limit": 1000}))


def test_a_first_config_whose_units_exceed_the_cap_advertises_nothing_and_names_the_field(
    host: FakeHost, tmp_path: Path
) -> None:
    for index in range(11):
        host.disk(f"sd{chr(97 + index)}")
    path = tmp_path / "config.json"
    over_the_cap(path)
    refused: list[ConfigError] = []
    configs = ConfigWatcher(path)
    watcher = DeviceWatcher(
        DeviceState(), configs, host.dev, host.sys, host.proc, on_config_refused=refused.append
    )
    watcher.check()
    assert watcher.state.current().devices == ()
    assert [e.field for e in refused] == ["upper-limit"]
    assert "11000 units, over the cap of 10000" in refused[0].reason
    assert configs.last_error is refused[0]
    watcher.check()  # nothing changed: not refused (counted) again
    assert len(refused) == 1


def test_a_later_config_over_the_cap_keeps_the_units_of_the_last_applied_one(
    host: FakeHost, tmp_path: Path
) -> None:
    for index in range(11):
        host.disk(f"sd{chr(97 + index)}")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"grant-mode": "per-device", "upper-limit": 2}))
    refused: list[ConfigError] = []
    watcher = DeviceWatcher(
        DeviceState(),
        ConfigWatcher(path),
        host.dev,
        host.sys,
        host.proc,
        on_config_refused=refused.append,
    )
    watcher.check()
    before = watcher.state.current().devices
    assert len(before) == 22
    over_the_cap(path)
    watcher.check()
    assert watcher.state.current().devices == before
    assert watcher.applied is not None and watcher.applied.upper_limit == 2
    assert [e.field for e in refused] == ["upper-limit"]
    # Back under the cap: applied.
    path.write_text(json.dumps({"grant-mode": "per-device", "upper-limit": 3}))
    assert watcher.check() is True
    assert len(watcher.state.current().devices) == 33


def test_a_rescan_that_keeps_failing_is_retried_not_spun(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import watch

    calls: list[int] = []

    def always_failing(*args: Any, **kwargs: Any) -> ScanResult:
        calls.append(1)
        raise OSError("sysfs went away")

    clock = FakeClock()
    watcher = DeviceWatcher(
        DeviceState(),
        StaticConfig(config_of(scan_interval="1h")),
        host.dev,
        host.sys,
        host.proc,
        safety_poll_seconds=3600,
        clock=clock,
    )
    watcher.check()
    # The periodic rescan is due (and overdue while the clock stands still), and fails.
    clock.now += 3600
    monkeypatch.setattr(watch, "scan", always_failing)
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive()
    # Retried every 0.4 s: a handful of tries, not thousands (and at least one retry).
    assert 2 <= len(calls) <= 10


# -- kernel uevents ------------------------------------------------------------------


@pytest.fixture
def feed() -> Iterator[UeventFeed]:
    made = UeventFeed()
    yield made
    made.close()


def _run_with_uevents(
    host: FakeHost, feed: UeventFeed, **config: Any
) -> tuple[DeviceState, DeviceWatcher, list[float], threading.Event, threading.Thread]:
    state = DeviceState()
    scans: list[float] = []
    watcher = DeviceWatcher(
        state,
        StaticConfig(config_of(grant_mode="per-device", scan_interval="60s", **config)),
        host.dev,
        host.sys,
        host.proc,
        on_scan=lambda result, seconds: scans.append(time.monotonic()),
        uevent_source=feed.source,
    )
    watcher.check()
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 2.0
    while not feed.sources and time.monotonic() < deadline:
        time.sleep(0.01)
    return state, watcher, scans, stop, thread


@pytest.fixture
def loop_like(
    host: FakeHost, feed: UeventFeed
) -> Iterator[tuple[DeviceState, DeviceWatcher, list[float]]]:
    host.disk("loop3")
    host.sysfs("loop3/size", "2048")
    state, watcher, scans, stop, thread = _run_with_uevents(host, feed)
    yield state, watcher, scans
    stop.set()
    thread.join(2.0)
    assert not thread.is_alive()


def _health(snapshot: Any) -> list[str]:
    return [d.health for d in snapshot.devices]


def test_a_size_dropping_to_zero_turns_the_device_unhealthy_on_its_uevent(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    state, watcher, scans = loop_like
    assert _health(state.current()) == ["Healthy"]
    subscription = state.subscribe()
    host.sysfs("loop3/size", "0")  # losetup -d: the node stays, the size drops
    started = time.monotonic()
    feed.send("change", "loop3", host.number_of("/dev/loop3"))
    snapshot = subscription.wait(1.0)
    assert snapshot is not None, "no update within 1 s of the uevent (scan-interval is 60 s)"
    assert time.monotonic() - started < 1.0
    assert _health(snapshot) == ["Unhealthy"]
    assert [r.problem for r in snapshot.records] == ["size is 0"]
    # Just that device was read again: no full scan.
    assert len(scans) == 1
    assert watcher.uevent_rounds["refreshed"] == 1


def test_a_new_size_makes_the_device_healthy_again_on_its_uevent(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    state, _, _ = loop_like
    subscription = state.subscribe()
    host.sysfs("loop3/size", "0")
    feed.send("change", "loop3", host.number_of("/dev/loop3"))
    assert subscription.wait(1.0) is not None
    host.sysfs("loop3/size", "4096")  # losetup -c after the file grew, or a new binding
    feed.send("change", "loop3", host.number_of("/dev/loop3"))
    snapshot = subscription.wait(1.0)
    assert snapshot is not None
    assert _health(snapshot) == ["Healthy"]


def test_an_add_uevent_runs_a_full_scan(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    state, _, scans = loop_like
    subscription = state.subscribe()
    # A device sysfs knows and /dev does not show yet: inotify cannot see it.
    host.disk("loop4", node=False)
    host.block_node("/dev/loop4")
    feed.send("add", "loop4")
    snapshot = subscription.wait(1.0)
    assert snapshot is not None
    assert len(snapshot.devices) == 2
    assert len(scans) >= 2


def test_a_burst_of_change_uevents_is_a_few_rounds_not_thousands(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    state, watcher, scans = loop_like
    subscription = state.subscribe()
    host.sysfs("loop3/size", "0")
    number = host.number_of("/dev/loop3")
    for _ in range(2000):
        feed.send("change", "loop3", number)
    snapshot = subscription.wait(2.0)
    assert snapshot is not None
    assert _health(snapshot) == ["Unhealthy"]
    time.sleep(0.5)
    assert watcher.uevent_rounds["refreshed"] <= 20
    assert len(scans) == 1


def test_a_uevent_of_a_device_not_advertised_changes_nothing(
    host: FakeHost, feed: UeventFeed
) -> None:
    host.disk("loop3")
    host.disk("vdz", node=False)
    host.sysfs("vdz/size", "0")
    state, watcher, scans, stop, thread = _run_with_uevents(host, feed)
    try:
        subscription = state.subscribe()
        feed.send("change", "vdz")
        assert subscription.wait(0.5) is None
        assert len(scans) == 1
        assert watcher.uevent_rounds == {"refreshed": 1, "rescanned": 0}
    finally:
        stop.set()
        thread.join(2.0)


def test_the_last_path_of_a_map_failing_turns_the_map_unhealthy_on_the_path_uevent(
    host: FakeHost, feed: UeventFeed
) -> None:
    host.disk("sdb")
    host.sysfs("sdb/device/state", "running")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sdb",))
    (host.sys / "block" / "sdb" / "holders").mkdir()
    (host.sys / "block" / "sdb" / "holders" / "dm-0").symlink_to("../../dm-0")
    state, _, scans, stop, thread = _run_with_uevents(host, feed, include_devices=["/dev/dm-*"])
    try:
        assert _health(state.current()) == ["Healthy"]
        subscription = state.subscribe()
        host.sysfs("sdb/device/state", "offline")
        feed.send("change", "sdb", host.number_of("/dev/sdb"))
        snapshot = subscription.wait(1.0)
        assert snapshot is not None
        assert [r.problem for r in snapshot.records] == ["no live multipath path (sdb offline)"]
        assert len(scans) == 1
    finally:
        stop.set()
        thread.join(2.0)


def test_without_a_uevent_socket_the_watcher_logs_once_and_works_as_before(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from power_device_plugin import uevents

    def refuse() -> uevents.UeventSocket:
        raise uevents.UeventsUnavailable("netlink uevent socket: Permission denied")

    monkeypatch.setattr(uevents.UeventSocket, "open", staticmethod(refuse))
    state = DeviceState()
    watcher = DeviceWatcher(state, StaticConfig(config_of()), host.dev, host.sys, host.proc)
    watcher.check()
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    with caplog.at_level(logging.WARNING):
        thread.start()
        subscription = state.subscribe()
        host.disk("sdx")
        snapshot = subscription.wait(1.0)
        stop.set()
        thread.join(2.0)
    assert snapshot is not None
    assert watcher.waiting_by == "inotify"
    refusals = [r for r in caplog.records if "no kernel uevents" in r.getMessage()]
    assert len(refusals) == 1
    assert "Permission denied" in refusals[0].getMessage()


def test_the_time_strategy_does_not_listen_to_uevents(host: FakeHost, feed: UeventFeed) -> None:
    host.disk("loop3")
    host.sysfs("loop3/size", "2048")
    state, watcher, _, stop, thread = _run_with_uevents(host, feed, discovery_strategy="time")
    try:
        subscription = state.subscribe()
        host.sysfs("loop3/size", "0")
        feed.send("change", "loop3", host.number_of("/dev/loop3"))
        assert subscription.wait(0.5) is None
        assert watcher.uevent_rounds == {"refreshed": 0, "rescanned": 0}
    finally:
        stop.set()
        thread.join(2.0)


def test_a_remove_uevent_of_an_advertised_device_rescans_at_once(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    _, watcher, scans = loop_like
    # The kernel sends the event a moment before the sysfs entry goes.
    feed.send("remove", "loop3", host.number_of("/dev/loop3"))
    deadline = time.monotonic() + 1.0
    while len(scans) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(scans) == 2
    assert watcher.uevent_rounds["rescanned"] == 1


def test_an_add_uevent_that_changed_no_tree_scans_nothing(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    # A device of the host's that the trees the plugin reads do not show.
    _, watcher, scans = loop_like
    feed.send("add", "loop9", (7, 9))
    feed.send("remove", "loop8", (7, 8))
    time.sleep(0.5)
    assert len(scans) == 1
    assert watcher.uevent_rounds == {"refreshed": 1, "rescanned": 0}


def test_a_change_uevent_of_a_device_outside_the_trees_scans_nothing(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    _, watcher, scans = loop_like
    feed.send("change", "loop9", (7, 9))
    time.sleep(0.5)
    assert len(scans) == 1
    assert watcher.uevent_rounds == {"refreshed": 1, "rescanned": 0}


def test_a_change_uevent_of_an_advertised_device_whose_entry_is_gone_rescans(
    host: FakeHost,
    feed: UeventFeed,
    loop_like: tuple[DeviceState, DeviceWatcher, list[float]],
) -> None:
    state, watcher, _ = loop_like
    number = host.number_of("/dev/loop3")
    subscription = state.subscribe()
    # Only sysfs: inotify sees nothing, the uevent alone decides.
    for child in sorted((host.sys / "block" / "loop3").rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    (host.sys / "block" / "loop3").rmdir()
    feed.send("change", "loop3", number)
    snapshot = subscription.wait(1.0)
    assert snapshot is not None
    assert [(r.host_path, r.problem) for r in snapshot.records] == [("/dev/loop3", "vanished")]
    assert watcher.uevent_rounds["rescanned"] == 1


def test_a_uevent_keeps_each_resource_to_its_own_devices(host: FakeHost, feed: UeventFeed) -> None:
    """A uevent's health refresh of a several-resource scan stays split by resource:
    the refreshed list of one resource never carries another's devices."""
    from power_device_plugin.config import ResourceConfig, parse_resources
    from power_device_plugin.resources import ResourceStates, capacity_of, scan_resources

    host.disk("loop3")
    host.sysfs("loop3/size", "2048")
    host.disk("loop4")
    host.sysfs("loop4/size", "2048")
    doc = {
        "scan-interval": "60s",
        "resources": [
            {"name": "a.com/three", "include-devices": ["/dev/loop3"], "grant-mode": "per-device"},
            {"name": "a.com/four", "include-devices": ["/dev/loop4"], "grant-mode": "per-device"},
        ],
    }
    config, _ = parse_resources(json.dumps(doc), "config.json")
    states: dict[str, DeviceState] = {}

    def make(resource: ResourceConfig) -> DeviceState:
        states[resource.name] = DeviceState()
        return states[resource.name]

    multi = ResourceStates(make)
    watcher = DeviceWatcher(
        multi,
        StaticConfig(config),
        host.dev,
        host.sys,
        host.proc,
        uevent_source=feed.source,
        scanner=scan_resources,
        capacity=capacity_of,
    )
    watcher.check()
    assert [r.host_path for r in states["a.com/four"].current().records] == ["/dev/loop4"]
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 2.0
        while not feed.sources and time.monotonic() < deadline:
            time.sleep(0.01)
        subscription = states["a.com/three"].subscribe()
        host.sysfs("loop3/size", "0")
        feed.send("change", "loop3", host.number_of("/dev/loop3"))
        snapshot = subscription.wait(1.0)
        assert snapshot is not None, "no update within 1 s of the uevent"
        assert [(r.host_path, r.problem) for r in snapshot.records] == [("/dev/loop3", "size is 0")]
        assert watcher.uevent_rounds["refreshed"] >= 1
        # The other resource still has its one device, and only that one.
        four = states["a.com/four"].current()
        assert [r.host_path for r in four.records] == ["/dev/loop4"]
        assert [d.health for d in four.devices] == ["Healthy"]
    finally:
        stop.set()
        thread.join(2.0)
    assert not thread.is_alive()
