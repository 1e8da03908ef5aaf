"""Device snapshots at their edges: empty requests, the cap exactly, IDs cut at a dash,
what records carry from discovery, CDI naming, and a CDI spec that cannot be written."""

from __future__ import annotations

import logging

import pytest
from tests.unit.conftest import config_of

from power_device_plugin.config import PluginConfig
from power_device_plugin.devices import (
    MAX_READABLE_ID_CHARS,
    MAX_UNITS,
    DeviceRecord,
    DeviceSnapshot,
    DeviceState,
    GrantNaming,
    build_snapshot,
    capacity_problem,
    device_id_for,
    merge_records,
)
from power_device_plugin.discovery import ADVERTISED, SOURCE_SYSFS, Candidate, ScanResult

TIMES = "\N{MULTIPLICATION SIGN}"
NAMING = GrantNaming("example.com/disk")


def candidate(host_path: str, **fields: object) -> Candidate:
    values: dict[str, object] = {
        "path": "/host" + host_path,
        "host_path": host_path,
        "verdict": ADVERTISED,
        "rule": "sysfs block",
        "reason": "block device node",
        "kind": "block",
        "source": SOURCE_SYSFS,
    }
    values.update(fields)
    return Candidate(**values)  # type: ignore[arg-type]


def record(host_path: str, rdev: tuple[int, int] | None = None, kind: str = "") -> DeviceRecord:
    return DeviceRecord(device_id_for(host_path), host_path, kind=kind, rdev=rdev)


def test_a_request_with_no_ids_gets_an_empty_grant() -> None:
    snapshot = build_snapshot([record("/dev/dm-0")], config_of(grant_mode="per-device"))
    grant = snapshot.allocate([])
    assert (grant.devices, dict(grant.envs), dict(grant.annotations), grant.cdi_devices) == (
        (),
        {},
        {},
        (),
    )


@pytest.mark.parametrize(
    ("per_device", "devices", "text"),
    [
        (MAX_UNITS + 1, 1, f"{MAX_UNITS + 1} units per device {TIMES} 1 device"),
        (5001, 2, f"5001 units per device {TIMES} 2 devices"),
    ],
)
def test_capacity_problem_writes_one_and_many_in_words(
    per_device: int, devices: int, text: str
) -> None:
    config = PluginConfig(grant_mode="per-device", upper_limit=per_device)
    assert capacity_problem(config, devices) == (
        f"upper-limit: {text} = {per_device * devices} units, over the cap of {MAX_UNITS}"
    )


def test_one_unit_per_device_reads_unit_not_units() -> None:
    config = PluginConfig(grant_mode="per-device", upper_limit=1)
    assert capacity_problem(config, MAX_UNITS + 1) == (
        f"upper-limit: 1 unit per device {TIMES} {MAX_UNITS + 1} devices = "
        f"{MAX_UNITS + 1} units, over the cap of {MAX_UNITS}"
    )


def test_all_mode_with_exactly_the_cap_of_units_fits() -> None:
    assert capacity_problem(PluginConfig(upper_limit=MAX_UNITS), 1) is None
    assert capacity_problem(PluginConfig(), MAX_UNITS) is None


def test_an_id_has_no_dash_at_either_end_of_its_readable_part() -> None:
    assert device_id_for("/dev/--odd--").startswith("odd-")


def test_an_id_keeps_capital_x_at_either_end() -> None:
    assert device_id_for("/dev/Xdisk-X").startswith("Xdisk-X-")


def test_an_expired_vanished_device_goes_and_a_younger_one_after_it_stays() -> None:
    a, b = candidate("/dev/sda"), candidate("/dev/sdb")
    first = merge_records({}, ScanResult((a, b)), PluginConfig(), now=0.0)
    only_b = merge_records({r.device_id: r for r in first}, ScanResult((b,)), PluginConfig(), 0.0)
    none = merge_records({r.device_id: r for r in only_b}, ScanResult(()), PluginConfig(), 200.0)
    later = merge_records({r.device_id: r for r in none}, ScanResult(()), PluginConfig(), 300.0)
    assert [(r.host_path, r.vanished_at) for r in later] == [("/dev/sdb", 200.0)]


def test_an_id_cut_at_a_dash_drops_the_dash() -> None:
    path = "/dev/" + "a" * (MAX_READABLE_ID_CHARS - 1) + "-b"
    readable, _, digest = device_id_for(path).rpartition("-")
    assert readable == "a" * (MAX_READABLE_ID_CHARS - 1)
    assert len(digest) == 8


def test_a_record_carries_what_discovery_found() -> None:
    found = candidate(
        "/dev/dm-0",
        kind="char",
        aliases=("/dev/mapper/mpatha",),
        rule="include /dev/dm-*",
        rdev=(253, 0),
        identity="dm-uuid:x",
    )
    (merged,) = merge_records({}, ScanResult((found,)), PluginConfig(), now=0.0)
    assert (merged.kind, merged.aliases, merged.rule, merged.rdev, merged.identity) == (
        "char",
        ("/dev/mapper/mpatha",),
        "include /dev/dm-*",
        (253, 0),
        "dm-uuid:x",
    )


def test_every_vanished_device_stays_whatever_precedes_it() -> None:
    config = PluginConfig()
    a, b, c = (candidate(f"/dev/sd{x}") for x in "abc")
    first = merge_records({}, ScanResult((a, b, c)), config, now=0.0)
    previous = {r.device_id: r for r in first}
    # a is still present and listed first; b and c vanished after it.
    merged = merge_records(previous, ScanResult((a,)), config, now=1.0)
    assert [(r.host_path, r.problem) for r in merged] == [
        ("/dev/sda", ""),
        ("/dev/sdb", "vanished"),
        ("/dev/sdc", "vanished"),
    ]


def test_a_vanished_device_stays_after_one_the_config_dropped() -> None:
    a, b = candidate("/dev/sda"), candidate("/dev/sdb")
    first = merge_records({}, ScanResult((a, b)), PluginConfig(), now=0.0)
    previous = {r.device_id: r for r in first}
    only_b = PluginConfig(exclude_devices=("/dev/sda",))
    merged = merge_records(previous, ScanResult(()), only_b, now=1.0)
    assert [(r.host_path, r.problem) for r in merged] == [("/dev/sdb", "vanished")]


def test_all_mode_names_no_cdi_device_when_no_device_has_a_number() -> None:
    snapshot = build_snapshot([record("/dev/dm-0")], config_of(cdi="both"))
    assert snapshot.allocate(["set-0"]).cdi_devices == ()


def test_the_snapshot_names_the_cdi_kind_only_when_grants_use_cdi() -> None:
    records = [record("/dev/dm-0", rdev=(253, 0))]
    assert build_snapshot(records, config_of(cdi="both"), NAMING).cdi_kind == NAMING.cdi_kind
    assert build_snapshot(records, config_of(cdi="off"), NAMING).cdi_kind == ""


@pytest.mark.parametrize(("kind", "expected"), [("", "block"), ("char", "char")])
def test_a_cdi_node_is_a_block_device_unless_discovery_said_otherwise(
    kind: str, expected: str
) -> None:
    snapshot = build_snapshot([record("/dev/x", rdev=(10, 1), kind=kind)], config_of(cdi="both"))
    assert snapshot.cdi_spec_devices()[0].nodes[0].kind == expected


def test_preferred_takes_the_least_used_device_then_the_one_with_more_free_units() -> None:
    records = [record("/dev/a"), record("/dev/b"), record("/dev/c")]
    snapshot = build_snapshot(records, config_of(grant_mode="per-device", upper_limit=3))
    a, b, c = (r.device_id for r in records)
    available = [f"{a}-r0", f"{b}-r0", f"{b}-r1", f"{c}-r0", f"{c}-r1", f"{c}-r2"]
    assert snapshot.preferred(available, [f"{c}-r0"], 4) == [
        f"{c}-r0",  # required
        f"{b}-r0",  # no picks yet, 2 free: before a (1 free)
        f"{a}-r0",
        f"{c}-r1",  # c had one pick already
    ]


def test_a_new_state_has_no_cdi_problem() -> None:
    assert DeviceState().cdi_problem == ""


def test_a_new_subscription_is_open() -> None:
    with DeviceState().subscribe() as subscription:
        assert subscription.closed is False


def _failing_writer(snapshot: DeviceSnapshot) -> None:
    raise OSError("read-only file system")


def test_a_spec_that_cannot_be_written_keeps_the_resources_naming() -> None:
    state = DeviceState(naming=NAMING, before_publish=_failing_writer)
    result = ScanResult((candidate("/dev/dm-0", rdev=(253, 0)),))
    state.update(result, config_of(cdi="both"))
    grant = state.current().allocate(["set-0"])
    assert list(grant.annotations) == [NAMING.annotation_key]
    assert grant.cdi_devices == ()


def test_with_cdi_only_an_unwritten_spec_advertises_nothing_under_the_resources_naming() -> None:
    state = DeviceState(naming=NAMING, before_publish=_failing_writer)
    state.update(ScanResult((candidate("/dev/dm-0", rdev=(253, 0)),)), config_of(cdi="only"))
    snapshot = state.current()
    assert snapshot.devices == ()
    assert snapshot.cdi_kind == NAMING.cdi_kind
    assert snapshot.capped == (
        "CDI spec not written: read-only file system; cdi is 'only', so no units are advertised"
    )


def test_a_spec_failure_is_logged_once_until_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    state = DeviceState(before_publish=_failing_writer)
    result = ScanResult((candidate("/dev/dm-0", rdev=(253, 0)),))
    with caplog.at_level(logging.ERROR, logger="power_device_plugin.devices"):
        for _ in range(3):
            state.update(result, config_of(cdi="both"))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["CDI spec not written: read-only file system"]
    assert state.cdi_problem == "CDI spec not written: read-only file system"
