"""Kernel uevents: the parser's bounds, the sender check, the kernel's own socket, and
which devices' health a batch of events asks to re-read."""

from __future__ import annotations

import glob
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.conftest import FakeHost, config_of
from tests.unit.uevent_feed import UeventFeed

from power_device_plugin.discovery import scan
from power_device_plugin.host_use import read_host_use
from power_device_plugin.refresh import is_device_event, plan_refresh, refreshed
from power_device_plugin.uevents import (
    MAX_FIELDS,
    MAX_MESSAGE_BYTES,
    Uevent,
    UeventSocket,
    format_uevent,
    parse_uevent,
)

KERNEL_CHANGE = (
    b"change@/devices/virtual/block/loop3\0ACTION=change\0DEVPATH=/devices/virtual/block/loop3\0"
    b"SUBSYSTEM=block\0MAJOR=7\0MINOR=3\0DEVNAME=loop3\0DEVTYPE=disk\0DISKSEQ=12\0SEQNUM=4711\0"
)


# -- the parser ------------------------------------------------------------------


def test_a_kernel_change_message_gives_action_path_subsystem_name_and_number() -> None:
    assert parse_uevent(KERNEL_CHANGE) == Uevent(
        action="change",
        devpath="/devices/virtual/block/loop3",
        subsystem="block",
        devtype="disk",
        devname="loop3",
        rdev=(7, 3),
    )


@pytest.mark.parametrize(
    ("why", "data"),
    [
        ("empty", b""),
        ("too big", KERNEL_CHANGE + b"X=" + b"y" * MAX_MESSAGE_BYTES + b"\0"),
        ("not ASCII", KERNEL_CHANGE.replace(b"loop3\0DEVTYPE", b"l\xc3\xb6op3\0DEVTYPE")),
        ("no header", KERNEL_CHANGE.split(b"\0", 1)[1]),
        ("unknown action", KERNEL_CHANGE.replace(b"change", b"explode")),
        ("header and ACTION differ", KERNEL_CHANGE.replace(b"ACTION=change", b"ACTION=add")),
        ("header and DEVPATH differ", KERNEL_CHANGE.replace(b"DEVPATH=/devices", b"DEVPATH=/x")),
        ("no SUBSYSTEM", KERNEL_CHANGE.replace(b"SUBSYSTEM=block\0", b"")),
        ("a lower-case key", KERNEL_CHANGE.replace(b"DISKSEQ", b"diskseq")),
        ("a field without =", KERNEL_CHANGE.replace(b"DISKSEQ=12", b"DISKSEQ12")),
        ("a key twice", KERNEL_CHANGE + b"MAJOR=8\0"),
        ("relative devpath", KERNEL_CHANGE.replace(b"/devices/virtual", b"devices/virtual")),
        (
            "too many fields",
            KERNEL_CHANGE + b"".join(b"K%d=v\0" % i for i in range(MAX_FIELDS)),
        ),
        ("udevd's re-broadcast", b"libudev\0\xfe\xed\xca\xfe" + KERNEL_CHANGE),
    ],
)
def test_what_the_kernel_would_not_send_is_refused(why: str, data: bytes) -> None:
    assert parse_uevent(data) is None, why


def test_a_number_that_is_not_one_is_left_out() -> None:
    event = parse_uevent(KERNEL_CHANGE.replace(b"MINOR=3", b"MINOR=x3"))
    assert event is not None
    assert event.rdev is None


def test_format_uevent_writes_what_parse_uevent_reads() -> None:
    data = format_uevent("change", "/devices/virtual/block/dm-0", extra={"DEVNAME": "dm-0"})
    event = parse_uevent(data)
    assert event is not None
    assert (event.action, event.devname, event.structural) == ("change", "dm-0", False)


# -- the socket --------------------------------------------------------------------


@pytest.fixture
def feed() -> Iterator[UeventFeed]:
    made = UeventFeed()
    yield made
    made.close()


def test_a_datagram_from_anyone_but_the_kernel_is_refused() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    source = UeventSocket(theirs)  # kernel_only, as the plugin opens it
    try:
        ours.send(KERNEL_CHANGE)
        time.sleep(0.01)
        drained = source.drain()
    finally:
        ours.close()
        source.close()
    assert drained.events == []
    assert drained.refused == 1


def test_a_drain_reads_at_most_its_limit_and_leaves_the_rest(feed: UeventFeed) -> None:
    for _ in range(5):
        feed.send("change", "loop3", (7, 3))
    source = feed.source()
    assert len(source.drain(limit=3).events) == 3
    assert len(source.drain().events) == 2
    assert source.drain().events == []


def test_malformed_datagrams_are_counted_and_the_good_ones_kept(feed: UeventFeed) -> None:
    feed.send_raw(b"garbage")
    feed.send("change", "loop3", (7, 3))
    drained = feed.source().drain()
    assert [e.devname for e in drained.events] == ["loop3"]
    assert drained.refused == 1


def _a_loop_device() -> str | None:
    found = sorted(glob.glob("/sys/block/loop*"))
    return found[0] if found else None


@pytest.mark.skipif(os.geteuid() != 0, reason="synthesising a uevent needs root")
def test_the_kernel_socket_hears_a_change_of_a_block_device() -> None:
    entry = _a_loop_device()
    if entry is None:
        pytest.skip("no loop device on this machine")
    name = os.path.basename(entry)
    source = UeventSocket.open()
    try:
        # Writing an action to a device's uevent file makes the kernel send that event.
        Path(entry, "uevent").write_text("change")
        deadline = time.monotonic() + 2.0
        seen: list[Uevent] = []
        while time.monotonic() < deadline and not any(e.devname == name for e in seen):
            seen.extend(source.drain().events)
            time.sleep(0.01)
    finally:
        source.close()
    ours = [e for e in seen if e.devname == name]
    assert ours, f"no uevent for {name} within 2 s"
    assert ours[0].action == "change"
    assert ours[0].subsystem == "block"
    assert ours[0].rdev == (7, int(Path(entry, "dev").read_text().split(":")[1]))


# -- which devices a batch names ---------------------------------------------------


def _event(action: str, name: str, subsystem: str = "block", devpath: str = "") -> Uevent:
    return Uevent(action, devpath or f"/devices/virtual/block/{name}", subsystem, "disk", name)


def _holder(host: FakeHost, path: str, holder: str) -> None:
    (host.sys / "block" / path / "holders").mkdir(exist_ok=True)
    (host.sys / "block" / path / "holders" / holder).symlink_to(f"../../{holder}")


def test_a_change_of_a_path_names_the_path_and_the_multipath_map_above_it(
    host: FakeHost,
) -> None:
    host.disk("sdb")
    host.disk("sdc")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sdb", "sdc"))
    _holder(host, "sdb", "dm-0")
    plan = plan_refresh([_event("change", "sdb")], False, str(host.sys))
    assert plan.rescan == ""
    assert sorted(plan.entries.values()) == [
        str(host.sys / "block" / "dm-0"),
        str(host.sys / "block" / "sdb"),
    ]


def test_a_change_of_a_disk_names_its_partitions(host: FakeHost) -> None:
    host.disk("sdb", partitions=("sdb1", "sdb2"))
    plan = plan_refresh([_event("change", "sdb")], False, str(host.sys))
    assert sorted(os.path.basename(e) for e in plan.entries.values()) == ["sdb", "sdb1", "sdb2"]


def test_a_scsi_device_event_names_the_disk_under_it(host: FakeHost) -> None:
    scsi = host.sys / "devices" / "pci0" / "host0" / "target0:0:0" / "0:0:0:1"
    (scsi / "block").mkdir(parents=True)
    host.disk("sdb")
    (scsi / "block" / "sdb").symlink_to(host.sys / "block" / "sdb")
    event = Uevent("change", "/devices/pci0/host0/target0:0:0/0:0:0:1", "scsi", "scsi_device")
    assert is_device_event(event)
    plan = plan_refresh([event], False, str(host.sys))
    assert [os.path.basename(e) for e in plan.entries.values()] == ["sdb"]


@pytest.mark.parametrize("action", ["add", "remove", "move"])
def test_a_device_added_removed_or_moved_is_left_to_the_signature_check(
    host: FakeHost, action: str
) -> None:
    host.disk("sdb")
    plan = plan_refresh([_event("change", "sdb"), _event(action, "sdc")], False, str(host.sys))
    assert plan.rescan == ""
    assert [(e.action, e.devname) for e in plan.structural] == [(action, "sdc")]
    assert [os.path.basename(e) for e in plan.entries.values()] == ["sdb"]


def test_lost_events_need_a_full_scan(host: FakeHost) -> None:
    assert "dropped" in plan_refresh([], True, str(host.sys)).rescan


def test_a_change_of_a_device_sysfs_does_not_show_is_left_unresolved(host: FakeHost) -> None:
    plan = plan_refresh([_event("change", "sdq")], False, str(host.sys))
    assert plan.rescan == ""
    assert [e.devname for e in plan.unresolved] == ["sdq"]


def test_events_of_other_subsystems_name_nothing(host: FakeHost) -> None:
    event = Uevent("change", "/devices/virtual/net/eth0", "net")
    assert not is_device_event(event)
    assert plan_refresh([event], False, str(host.sys)).entries == {}


def test_a_devpath_that_climbs_out_of_sysfs_is_not_followed(host: FakeHost) -> None:
    host.disk("sdb")
    sneaky = Uevent("change", "/devices/../../etc", "block", "disk", "sdb")
    plan = plan_refresh([sneaky], False, str(host.sys))
    # Found by its name instead, inside the sysfs root.
    assert list(plan.entries.values()) == [str(host.sys / "block" / "sdb")]


# -- re-reading their health ---------------------------------------------------------


def test_a_size_dropping_to_zero_is_read_again_for_that_device_only(host: FakeHost) -> None:
    host.disk("sdb")
    host.disk("sdc")
    host.sysfs("sdb/size", "2048")
    host.sysfs("sdc/size", "2048")
    result = scan(config_of(), host.dev, host.sys, read_host_use(host.proc, host.sys))
    host.sysfs("sdb/size", "0")
    host.sysfs("sdc/size", "0")  # no event for sdc: left to the rescan
    plan = plan_refresh([_event("change", "sdb")], False, str(host.sys))
    fresh = refreshed(result, plan.entries)
    assert fresh is not None
    assert {c.host_path: c.problem for c in fresh.advertised()} == {
        "/dev/sdb": "size is 0",
        "/dev/sdc": "",
    }


def test_the_last_path_of_a_map_going_offline_makes_the_map_unhealthy(host: FakeHost) -> None:
    host.disk("sdb")
    host.sysfs("sdb/device/state", "running")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sdb",))
    _holder(host, "sdb", "dm-0")
    result = scan(
        config_of(include_devices=["/dev/dm-*"]),
        host.dev,
        host.sys,
        read_host_use(host.proc, host.sys),
    )
    host.sysfs("sdb/device/state", "offline")
    fresh = refreshed(result, plan_refresh([_event("change", "sdb")], False, str(host.sys)).entries)
    assert fresh is not None
    assert [c.problem for c in fresh.advertised()] == ["no live multipath path (sdb offline)"]


def test_nothing_changed_gives_the_same_result(host: FakeHost) -> None:
    host.disk("sdb")
    result = scan(config_of(), host.dev, host.sys, read_host_use(host.proc, host.sys))
    plan = plan_refresh([_event("change", "sdb")], False, str(host.sys))
    assert refreshed(result, plan.entries) is result


def test_a_new_identity_behind_the_same_number_needs_a_full_scan(host: FakeHost) -> None:
    host.disk("sdb")
    host.sysfs("sdb/device/wwid", "naa.1")
    result = scan(config_of(), host.dev, host.sys, read_host_use(host.proc, host.sys))
    host.sysfs("sdb/device/wwid", "naa.2")
    plan = plan_refresh([_event("change", "sdb")], False, str(host.sys))
    assert refreshed(result, plan.entries) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="synthesising a uevent needs root")
def test_events_the_kernel_dropped_for_a_full_buffer_are_reported_lost() -> None:
    entry = _a_loop_device()
    if entry is None:
        pytest.skip("no loop device on this machine")
    source = UeventSocket.open()
    try:
        # The smallest buffer the kernel allows holds a few events; send many more.
        source._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        for _ in range(200):
            Path(entry, "uevent").write_text("change")
        drained = source.drain()
    finally:
        source.close()
    assert drained.lost
    assert 0 < len(drained.events) < 200
