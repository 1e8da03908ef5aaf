from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence

import pytest
from tests.unit.conftest import FakeHost, config_of

from power_device_plugin.api import pb
from power_device_plugin.config import PluginConfig
from power_device_plugin.devices import (
    HEALTHY,
    MAX_READABLE_ID_CHARS,
    MAX_UNITS,
    UNHEALTHY,
    VANISHED,
    VANISHED_RECORD_TTL_SECONDS,
    AllocationError,
    DeviceRecord,
    DeviceSnapshot,
    DeviceSpecGrant,
    DeviceState,
    GrantNaming,
    build_snapshot,
    capacity_problem,
    device_id_for,
)
from power_device_plugin.discovery import ADVERTISED, SOURCE_SYSFS, Candidate, ScanResult, scan
from power_device_plugin.host_use import HostUse


def refresh(state: DeviceState, host: FakeHost, config: PluginConfig) -> bool:
    return state.update(scan(config, host.dev, host.sys, HostUse(in_use={})), config)


def ids(snapshot: DeviceSnapshot) -> list[str]:
    return [d.id for d in snapshot.devices]


def health_by_id(snapshot: DeviceSnapshot) -> dict[str, str]:
    return {d.id: d.health for d in snapshot.devices}


def granted_paths(snapshot: DeviceSnapshot, unit_ids: list[str]) -> list[str]:
    return [d.host_path for d in snapshot.allocate(unit_ids).devices]


PER_DEVICE = {"grant_mode": "per-device"}
TIMES = "\N{MULTIPLICATION SIGN}"  # how capacity messages write the product


def candidate(
    host_path: str, identity: str = "", problem: str = "", rdev: tuple[int, int] | None = None
) -> Candidate:
    """An advertised candidate as discovery reports it (sysfs source, so the default
    config still selects it after it vanished)."""
    return Candidate(
        path="/host" + host_path,
        host_path=host_path,
        verdict=ADVERTISED,
        rule="sysfs block",
        reason="block device node",
        kind="block",
        source=SOURCE_SYSFS,
        rdev=rdev,
        identity=identity,
        problem=problem,
    )


def scan_of(*candidates: Candidate) -> ScanResult:
    return ScanResult(tuple(candidates))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records_for(count: int, problem: str = "") -> list[DeviceRecord]:
    return [
        DeviceRecord(device_id_for(f"/dev/d{i}"), f"/dev/d{i}", problem=problem)
        for i in range(count)
    ]


def test_device_id_without_identity_is_the_host_path_and_its_hash() -> None:
    # sha256("/dev/dm-0")[:8]: the IDs the plugin has always given; pinned so they never move.
    assert device_id_for("/dev/dm-0") == "dm-0-8f10562e"
    assert device_id_for("/dev/sda", "") == "sda-36b8377a"
    assert device_id_for("/dev/a-b") != device_id_for("/dev/a/b")
    assert device_id_for("/dev/mapper/mpatha").startswith("mapper-mpatha-")


def test_device_id_with_identity_hashes_the_identity() -> None:
    uuid = "dm-uuid:mpath-3600507680c8081f2d000000000000abc"
    # sha256(identity)[:8], the readable part still from the host path.
    assert device_id_for("/dev/dm-3", uuid) == "dm-3-aa7dbb6f"
    assert device_id_for("/dev/dm-3", "dm-uuid:mpath-other") != device_id_for("/dev/dm-3", uuid)
    # The readable part follows the name: a rename is a new ID even with the same identity.
    assert device_id_for("/dev/dm-4", uuid) == "dm-4-aa7dbb6f"


def test_device_id_readable_part_is_bounded_and_long_paths_stay_apart() -> None:
    long_a = "/dev/disk/by-id/" + "a" * 100 + "1"
    long_b = "/dev/disk/by-id/" + "a" * 100 + "2"
    assert len(device_id_for(long_a)) == MAX_READABLE_ID_CHARS + 9
    assert device_id_for(long_a) != device_id_for(long_b)
    assert device_id_for("/dev/" + "-" * 70).startswith("dev-")


def test_ids_are_stable_across_rescans_and_restarts(host: FakeHost) -> None:
    config = config_of(**PER_DEVICE)
    host.disk("sda")
    host.dm("dm-0", "mpatha")
    first = DeviceState()
    refresh(first, host, config)
    before = ids(first.current())
    host.disk("sdb")  # a new device sorts between the others
    refresh(first, host, config)
    after_rescan = ids(first.current())
    restarted = DeviceState()
    refresh(restarted, host, config)
    assert set(before) < set(after_rescan)
    assert ids(restarted.current()) == after_rescan


def test_vanished_device_stays_listed_unhealthy_and_returns_with_its_id(host: FakeHost) -> None:
    config = config_of(**PER_DEVICE)
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config)
    sda_unit = f"{device_id_for('/dev/sda')}-r0"
    assert health_by_id(state.current())[sda_unit] == HEALTHY

    host.remove_disk("sda")
    assert refresh(state, host, config) is True
    assert health_by_id(state.current())[sda_unit] == UNHEALTHY
    with pytest.raises(AllocationError) as caught:
        state.current().allocate([sda_unit])
    assert (caught.value.code, caught.value.device_id) == ("unhealthy", sda_unit)

    host.disk("sda")
    assert refresh(state, host, config) is True
    assert health_by_id(state.current())[sda_unit] == HEALTHY


def test_vanished_device_is_dropped_when_the_config_no_longer_selects_it(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config_of(**PER_DEVICE))
    host.remove_disk("sda")
    refresh(state, host, config_of(exclude_devices=["/dev/sda"], **PER_DEVICE))
    assert [r.host_path for r in state.current().records] == ["/dev/sdb"]


def test_per_device_mode_advertises_upper_limit_units_per_device(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=3, **PER_DEVICE))
    snapshot = state.current()
    assert len(snapshot.devices) == 6
    sda = device_id_for("/dev/sda")
    assert [i for i in ids(snapshot) if i.startswith(sda)] == [f"{sda}-r{k}" for k in range(3)]


def test_per_device_mode_defaults_to_one_unit_per_device(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config_of(**PER_DEVICE))
    assert len(state.current().devices) == 2


def test_per_device_grant_uses_host_paths_and_configured_permissions(host: FakeHost) -> None:
    host.disk("sda")
    host.dm("dm-0", "mpatha")
    state = DeviceState()
    refresh(state, host, config_of(permissions="r", upper_limit=2, **PER_DEVICE))
    dm0 = device_id_for("/dev/dm-0")
    grant = state.current().allocate([f"{dm0}-r0", f"{dm0}-r1"])
    assert grant.devices == (DeviceSpecGrant("/dev/dm-0", "/dev/dm-0", "r"),)


def test_all_mode_unit_grants_every_healthy_device(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1",))
    host.dm("dm-0", "mpatha")
    state = DeviceState()
    refresh(state, host, config_of())
    snapshot = state.current()
    assert ids(snapshot) == ["set-0", "set-1", "set-2"]  # default: one unit per device
    assert granted_paths(snapshot, ["set-1"]) == ["/dev/dm-0", "/dev/sda", "/dev/sda1"]
    assert {d.permissions for d in snapshot.allocate(["set-0"]).devices} == {"rw"}

    host.remove("/dev/sda1")
    refresh(state, host, config_of())
    assert granted_paths(state.current(), ["set-1"]) == ["/dev/dm-0", "/dev/sda"]


def test_all_mode_upper_limit_is_the_number_of_units(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=5))
    assert ids(state.current()) == [f"set-{k}" for k in range(5)]


def test_all_mode_keeps_its_units_unhealthy_when_every_device_is_gone(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=2))
    host.remove_disk("sda")
    assert refresh(state, host, config_of(upper_limit=2)) is True
    assert health_by_id(state.current()) == {"set-0": UNHEALTHY, "set-1": UNHEALTHY}
    assert state.current().health_counts() == {HEALTHY: 0, UNHEALTHY: 1}
    with pytest.raises(AllocationError) as caught:
        state.current().allocate(["set-0"])
    assert caught.value.code == "unhealthy"
    assert str(caught.value) == (
        "device ID 'set-0' is Unhealthy: no selected device is healthy (/dev/sda: vanished)"
    )


def test_a_new_state_advertises_no_units() -> None:
    state = DeviceState()
    assert state.current().devices == ()
    assert state.current().records == ()


def test_no_devices_means_no_units(host: FakeHost) -> None:
    state = DeviceState()
    refresh(state, host, config_of())
    assert state.current().devices == ()


def test_limit_is_held_by_advertised_units_not_by_counting_allocations(host: FakeHost) -> None:
    # The kubelet never reports a grant's end; re-allocating must keep working and
    # the capacity must not shrink or grow with the number of calls.
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=2, **PER_DEVICE))
    unit = ids(state.current())[0]
    for _ in range(50):
        state.current().allocate([unit])
    refresh(state, host, config_of(upper_limit=2, **PER_DEVICE))
    assert len(state.current().devices) == 2


def test_unknown_id_is_refused_and_nothing_is_granted(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of(**PER_DEVICE))
    good = ids(state.current())[0]
    with pytest.raises(AllocationError) as caught:
        state.current().allocate([good, "nope-0"])
    assert (caught.value.code, caught.value.device_id) == ("unknown", "nope-0")
    assert "nope-0" in str(caught.value)


def test_same_ids_get_the_same_answer_in_any_order(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config_of(**PER_DEVICE))
    a, b = ids(state.current())
    first = state.current().allocate([a, b])
    assert state.current().allocate([b, a]) == first
    restarted = DeviceState()
    refresh(restarted, host, config_of(**PER_DEVICE))
    assert restarted.current().allocate([a, b]) == first


def test_permission_change_applies_without_changing_the_list(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of())
    assert refresh(state, host, config_of(permissions="r")) is False
    assert {d.permissions for d in state.current().allocate(["set-0"]).devices} == {"r"}


def test_update_reports_whether_the_list_changed(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    assert refresh(state, host, config_of()) is True
    assert refresh(state, host, config_of()) is False
    host.disk("sdb")
    assert refresh(state, host, config_of()) is True


def test_preferred_spreads_replicas_across_distinct_devices(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    host.disk("sdc")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=3, **PER_DEVICE))
    snapshot = state.current()
    picked = snapshot.preferred(ids(snapshot), [], 3)
    assert len({snapshot.allocate([p]).devices for p in picked}) == 3


def test_preferred_honours_must_include_and_size(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=2, **PER_DEVICE))
    snapshot = state.current()
    sda = device_id_for("/dev/sda")
    sdb = device_id_for("/dev/sdb")
    picked = snapshot.preferred(ids(snapshot), [f"{sda}-r1"], 2)
    assert picked[0] == f"{sda}-r1"
    assert len(picked) == 2
    assert picked[1].startswith(sdb)
    assert snapshot.preferred(ids(snapshot), [], 0) == []


def test_preferred_picks_the_least_used_device_first(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=3, **PER_DEVICE))
    snapshot = state.current()
    sda = device_id_for("/dev/sda")
    sdb = device_id_for("/dev/sdb")
    # Two of sda's units are in use already: only one is available.
    available = [f"{sda}-r2", f"{sdb}-r0", f"{sdb}-r1", f"{sdb}-r2"]
    assert snapshot.preferred(available, [], 1)[0].startswith(sdb)


def test_preferred_ignores_unknown_ids(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of(**PER_DEVICE))
    snapshot = state.current()
    assert snapshot.preferred(["bogus", *ids(snapshot)], [], 2) == ids(snapshot)


def test_subscription_wait_times_out_without_changes(host: FakeHost) -> None:
    state = DeviceState()
    subscription = state.subscribe()
    started = time.monotonic()
    assert subscription.wait(0.05) is None
    assert time.monotonic() - started >= 0.04


def test_subscription_coalesces_changes_into_the_newest_snapshot(host: FakeHost) -> None:
    state = DeviceState()
    subscription = state.subscribe()
    host.disk("sda")
    refresh(state, host, config_of(**PER_DEVICE))
    host.disk("sdb")
    refresh(state, host, config_of(**PER_DEVICE))
    newest = subscription.wait(1.0)
    assert newest is state.current()
    assert newest is not None and len(newest.devices) == 2
    assert subscription.wait(0.01) is None


def test_each_subscription_sees_each_change(host: FakeHost) -> None:
    state = DeviceState()
    first, second = state.subscribe(), state.subscribe()
    host.disk("sda")
    refresh(state, host, config_of())
    assert first.wait(1.0) is not None
    assert second.wait(1.0) is not None


def test_update_wakes_a_waiting_subscriber_promptly(host: FakeHost) -> None:
    state = DeviceState()
    subscription = state.subscribe()
    received: list[float] = []

    def waiter() -> None:
        if subscription.wait(5.0) is not None:
            received.append(time.monotonic())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    host.disk("sda")
    updated_at = time.monotonic()
    refresh(state, host, config_of())
    thread.join(5.0)
    assert received and received[0] - updated_at < 1.0


def test_close_wakes_the_waiter_and_unsubscribes(host: FakeHost) -> None:
    state = DeviceState()
    subscription = state.subscribe()
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(subscription.wait(5.0)))
    thread.start()
    time.sleep(0.05)
    subscription.close()
    thread.join(1.0)
    assert not thread.is_alive()
    assert results == [None]
    assert state.subscriber_count() == 0


def test_close_subscriptions_closes_every_stream(host: FakeHost) -> None:
    state = DeviceState()
    subscriptions = [state.subscribe(), state.subscribe()]
    state.close_subscriptions()
    host.disk("sda")
    refresh(state, host, config_of())
    assert [s.wait(0.01) for s in subscriptions] == [None, None]


# --- identity -------------------------------------------------------------------------------

UUID_A = "dm-uuid:mpath-3600507680c8081f2d00000000000000a"
UUID_B = "dm-uuid:mpath-3600507680c8081f2d00000000000000b"


def test_a_minor_reused_for_another_lun_is_a_new_id_and_the_old_one_is_not_granted() -> None:
    state = DeviceState(clock=FakeClock())
    config = config_of(**PER_DEVICE)
    state.update(scan_of(candidate("/dev/dm-3", UUID_A)), config)
    old_unit = f"{device_id_for('/dev/dm-3', UUID_A)}-r0"
    assert ids(state.current()) == [old_unit]

    assert state.update(scan_of(candidate("/dev/dm-3", UUID_B)), config) is True
    new_unit = f"{device_id_for('/dev/dm-3', UUID_B)}-r0"
    assert health_by_id(state.current()) == {old_unit: UNHEALTHY, new_unit: HEALTHY}
    with pytest.raises(AllocationError) as caught:
        state.current().allocate([old_unit])
    assert str(caught.value) == f"device ID {old_unit!r} is Unhealthy: vanished"
    assert granted_paths(state.current(), [new_unit]) == ["/dev/dm-3"]


def test_all_mode_grants_a_reused_name_once_for_its_present_device() -> None:
    state = DeviceState(clock=FakeClock())
    state.update(scan_of(candidate("/dev/dm-3", UUID_A)), config_of())
    state.update(scan_of(candidate("/dev/dm-3", UUID_B)), config_of())
    snapshot = state.current()
    # The old LUN's record stays (vanished) until its time is up: capacity kept, one unit less.
    assert health_by_id(snapshot) == {"set-0": HEALTHY, "set-1": UNHEALTHY}
    assert granted_paths(snapshot, ["set-0"]) == ["/dev/dm-3"]


def test_records_carry_rdev_identity_and_are_keyed_by_device_id() -> None:
    state = DeviceState(clock=FakeClock())
    state.update(scan_of(candidate("/dev/dm-3", UUID_A, rdev=(253, 3))), config_of())
    (record,) = state.current().records
    assert (record.device_id, record.rdev, record.identity, record.problem) == (
        device_id_for("/dev/dm-3", UUID_A),
        (253, 3),
        UUID_A,
        "",
    )


def test_two_present_names_with_one_identity_are_not_granted() -> None:
    # One identity behind two names gives one ID twice: fail closed rather than pick one.
    state = DeviceState(clock=FakeClock())
    state.update(
        scan_of(candidate("/dev/dm-3", UUID_A), candidate("/dev/dm-3", UUID_A)),
        config_of(**PER_DEVICE),
    )
    (record,) = state.current().records
    assert record.health == UNHEALTHY
    assert "same identity" in record.problem


# --- health -----------------------------------------------------------------------------------


def test_a_device_with_a_problem_is_unhealthy_and_allocate_names_the_problem() -> None:
    state = DeviceState(clock=FakeClock())
    result = scan_of(
        candidate("/dev/sda"), candidate("/dev/sdb", problem="device/state is offline")
    )
    state.update(result, config_of(**PER_DEVICE))
    sda, sdb = f"{device_id_for('/dev/sda')}-r0", f"{device_id_for('/dev/sdb')}-r0"
    assert health_by_id(state.current()) == {sda: HEALTHY, sdb: UNHEALTHY}
    with pytest.raises(AllocationError) as caught:
        state.current().allocate([sda, sdb])
    assert (caught.value.code, caught.value.device_id) == ("unhealthy", sdb)
    assert str(caught.value) == f"device ID {sdb!r} is Unhealthy: device/state is offline"


def test_health_counts_count_devices_by_health() -> None:
    state = DeviceState(clock=FakeClock())
    result = scan_of(
        candidate("/dev/sda"),
        candidate("/dev/sdb", problem="size is 0"),
        candidate("/dev/sdc", problem="dm/suspended is 1"),
    )
    state.update(result, config_of(upper_limit=4, **PER_DEVICE))
    assert state.current().health_counts() == {HEALTHY: 1, UNHEALTHY: 2}


def test_all_mode_default_units_keep_capacity_and_only_healthy_devices_count_as_healthy() -> None:
    state = DeviceState(clock=FakeClock())
    result = scan_of(
        candidate("/dev/sda"),
        candidate("/dev/sdb", problem="no live multipath path"),
        candidate("/dev/sdc"),
    )
    state.update(result, config_of())
    snapshot = state.current()
    assert health_by_id(snapshot) == {"set-0": HEALTHY, "set-1": HEALTHY, "set-2": UNHEALTHY}
    assert granted_paths(snapshot, ["set-1"]) == ["/dev/sda", "/dev/sdc"]
    with pytest.raises(AllocationError) as caught:
        snapshot.allocate(["set-0", "set-2"])
    assert (caught.value.code, caught.value.device_id) == ("unhealthy", "set-2")
    assert str(caught.value) == (
        "device ID 'set-2' is Unhealthy: 2 of 3 selected devices healthy: one Healthy unit "
        "per healthy device (/dev/sdb: no live multipath path)"
    )
    assert snapshot.preferred(["set-2", "set-1", "set-0"], [], 2) == ["set-1", "set-0"]


def test_all_mode_with_an_upper_limit_keeps_every_unit_healthy_while_one_device_is() -> None:
    state = DeviceState(clock=FakeClock())
    result = scan_of(candidate("/dev/sda", problem="size is 0"), candidate("/dev/sdb"))
    state.update(result, config_of(upper_limit=4))
    snapshot = state.current()
    assert health_by_id(snapshot) == {f"set-{k}": HEALTHY for k in range(4)}
    assert granted_paths(snapshot, ["set-3"]) == ["/dev/sdb"]


@pytest.mark.parametrize(("upper_limit", "units"), [(None, 2), (3, 3)])
def test_all_mode_units_stay_listed_unhealthy_when_no_device_is_healthy(
    upper_limit: int | None, units: int
) -> None:
    state = DeviceState(clock=FakeClock())
    result = scan_of(
        candidate("/dev/sda", problem="size is 0"),
        candidate("/dev/sdb", problem="device/state is offline"),
    )
    state.update(result, config_of(upper_limit=upper_limit))
    snapshot = state.current()
    assert health_by_id(snapshot) == {f"set-{k}": UNHEALTHY for k in range(units)}
    assert snapshot.preferred(ids(snapshot), [], 1) == []
    assert snapshot.cdi_spec_devices() == ()
    with pytest.raises(AllocationError) as caught:
        snapshot.allocate(["set-0"])
    assert str(caught.value) == (
        "device ID 'set-0' is Unhealthy: no selected device is healthy "
        "(/dev/sda: size is 0; /dev/sdb: device/state is offline)"
    )


def test_all_mode_unit_health_follows_a_device_turning_unhealthy_and_back() -> None:
    state = DeviceState(clock=FakeClock())
    healthy = scan_of(candidate("/dev/sda"), candidate("/dev/sdb"))
    offline = scan_of(candidate("/dev/sda"), candidate("/dev/sdb", problem="size is 0"))
    state.update(healthy, config_of())
    assert state.update(offline, config_of()) is True
    assert health_by_id(state.current()) == {"set-0": HEALTHY, "set-1": UNHEALTHY}
    assert state.update(healthy, config_of()) is True
    assert health_by_id(state.current()) == {"set-0": HEALTHY, "set-1": HEALTHY}


def test_an_all_mode_unit_names_at_most_three_unhealthy_devices() -> None:
    records = records_for(5, problem="size is 0")
    snapshot = build_snapshot(records, config_of())
    with pytest.raises(AllocationError) as caught:
        snapshot.allocate(["set-4"])
    assert str(caught.value) == (
        "device ID 'set-4' is Unhealthy: no selected device is healthy (/dev/d0: size is 0; "
        "/dev/d1: size is 0; /dev/d2: size is 0; and 2 more)"
    )


def test_all_mode_units_past_the_cap_keep_the_healthy_ones_first() -> None:
    records = [*records_for(MAX_UNITS + 5)]
    records[0] = DeviceRecord(records[0].device_id, records[0].host_path, problem="size is 0")
    snapshot = build_snapshot(records, config_of())
    assert len(snapshot.devices) == MAX_UNITS
    assert {d.health for d in snapshot.devices} == {HEALTHY}
    assert len(snapshot.allocate(["set-9999"]).devices) == MAX_UNITS + 4


# --- vanished devices expire --------------------------------------------------------------------


def test_vanished_devices_after_a_present_one_all_stay_listed() -> None:
    state = DeviceState(clock=FakeClock())
    config = config_of(**PER_DEVICE)
    state.update(scan_of(*(candidate(f"/dev/sd{c}") for c in "abcd")), config)
    state.update(scan_of(candidate("/dev/sda"), candidate("/dev/sdc")), config)
    records = state.current().records
    assert [(r.host_path, r.problem) for r in records] == [
        ("/dev/sda", ""),
        ("/dev/sdb", VANISHED),
        ("/dev/sdc", ""),
        ("/dev/sdd", VANISHED),
    ]


def test_vanished_device_is_kept_until_the_ttl_and_dropped_at_it() -> None:
    clock = FakeClock()
    state = DeviceState(clock=clock)
    config = config_of(**PER_DEVICE)
    state.update(scan_of(candidate("/dev/sda"), candidate("/dev/sdb")), config)
    only_sda = scan_of(candidate("/dev/sda"))
    vanished_at = clock.now = 2000.0
    state.update(only_sda, config)
    assert state.next_expiry() == vanished_at + VANISHED_RECORD_TTL_SECONDS

    clock.now = vanished_at + VANISHED_RECORD_TTL_SECONDS - 0.001
    assert state.update(only_sda, config) is False
    assert [r.host_path for r in state.current().records] == ["/dev/sda", "/dev/sdb"]
    assert state.current().records[1].vanished_at == vanished_at  # not restarted by rescans

    clock.now = vanished_at + VANISHED_RECORD_TTL_SECONDS
    assert state.update(only_sda, config) is True
    assert [r.host_path for r in state.current().records] == ["/dev/sda"]
    assert state.next_expiry() is None


def test_vanished_device_after_the_ttl_is_dropped_by_the_next_update() -> None:
    clock = FakeClock()
    state = DeviceState(clock=clock)
    config = config_of(**PER_DEVICE)
    state.update(scan_of(candidate("/dev/sda"), candidate("/dev/sdb")), config)
    state.update(scan_of(candidate("/dev/sda")), config)
    clock.now += 10 * VANISHED_RECORD_TTL_SECONDS
    state.update(scan_of(candidate("/dev/sda")), config)
    assert [r.host_path for r in state.current().records] == ["/dev/sda"]


def test_a_device_that_returns_is_healthy_and_its_expiry_is_forgotten() -> None:
    clock = FakeClock()
    state = DeviceState(clock=clock)
    config = config_of(**PER_DEVICE)
    both = scan_of(candidate("/dev/sda"), candidate("/dev/sdb"))
    state.update(both, config)
    state.update(scan_of(candidate("/dev/sda")), config)
    clock.now += VANISHED_RECORD_TTL_SECONDS - 1
    state.update(both, config)
    assert state.next_expiry() is None
    state.update(scan_of(candidate("/dev/sda")), config)
    clock.now += VANISHED_RECORD_TTL_SECONDS - 1
    state.update(scan_of(candidate("/dev/sda")), config)
    assert [r.problem for r in state.current().records] == ["", VANISHED]


# --- bounds ---------------------------------------------------------------------------------------


def test_capacity_problem_names_upper_limit_with_the_arithmetic() -> None:
    per_device = config_of(upper_limit=130, **PER_DEVICE)
    assert capacity_problem(per_device, 1000) == (
        f"upper-limit: 130 units per device {TIMES} 1000 devices = 130000 units, "
        "over the cap of 10000"
    )
    assert capacity_problem(config_of(**PER_DEVICE), 10_001) == (
        f"upper-limit: unset (1 unit per device) {TIMES} 10001 devices = 10001 units, "
        "over the cap of 10000"
    )
    assert capacity_problem(config_of(), 10_001) == (
        f"upper-limit: unset (1 unit per device) {TIMES} 10001 devices = 10001 units, "
        "over the cap of 10000"
    )


def test_capacity_problem_is_none_up_to_the_cap() -> None:
    assert capacity_problem(config_of(upper_limit=10, **PER_DEVICE), 1000) is None
    assert capacity_problem(config_of(**PER_DEVICE), MAX_UNITS) is None
    assert capacity_problem(config_of(upper_limit=1000), 50_000) is None
    assert capacity_problem(config_of(), 0) is None


def test_per_device_units_are_clamped_to_the_cap() -> None:
    snapshot = build_snapshot(records_for(1000), config_of(upper_limit=130, **PER_DEVICE))
    assert len(snapshot.devices) == MAX_UNITS
    assert snapshot.devices[-1].id == f"{device_id_for('/dev/d999')}-r9"
    assert snapshot.capped == (
        f"upper-limit: 130 units per device {TIMES} 1000 devices = 130000 units, "
        "over the cap of 10000; advertising 10 units per device"
    )


def test_more_devices_than_the_cap_advertise_nothing_in_per_device_mode() -> None:
    snapshot = build_snapshot(records_for(MAX_UNITS + 1), config_of(**PER_DEVICE))
    assert snapshot.devices == ()
    assert snapshot.capped.endswith("; advertising no units")


def test_all_mode_units_are_clamped_to_the_cap_and_still_grant_every_device() -> None:
    records = records_for(MAX_UNITS + 5)
    snapshot = build_snapshot(records, config_of())
    assert len(snapshot.devices) == MAX_UNITS
    assert snapshot.capped.endswith("; advertising 10000 units")
    assert len(snapshot.allocate(["set-9999"]).devices) == MAX_UNITS + 5


def test_a_snapshot_within_the_cap_is_not_capped() -> None:
    snapshot = build_snapshot(records_for(100), config_of(upper_limit=100, **PER_DEVICE))
    assert len(snapshot.devices) == MAX_UNITS
    assert snapshot.capped == ""


def test_a_list_of_max_units_longest_ids_fits_one_grpc_message() -> None:
    longest_device = device_id_for("/dev/" + "x" * 300, "wwid:whatever")
    unit_ids = [f"{longest_device}-r{k:04d}" for k in range(MAX_UNITS)]
    assert len(unit_ids[0]) == MAX_READABLE_ID_CHARS + 9 + 6
    message = pb.ListAndWatchResponse(
        devices=[pb.Device(ID=unit_id, health=UNHEALTHY) for unit_id in unit_ids]
    )
    assert len(message.SerializeToString()) < 1024 * 1024


# --- update builds outside the readers' lock ---------------------------------------------------


def test_readers_are_answered_from_the_old_snapshot_while_an_update_builds() -> None:
    building, release = threading.Event(), threading.Event()

    def slow_build(
        records: Sequence[DeviceRecord], config: PluginConfig, naming: GrantNaming
    ) -> DeviceSnapshot:
        building.set()
        release.wait(10.0)
        return build_snapshot(records, config, naming)

    state = DeviceState(clock=FakeClock(), build=slow_build)
    updater = threading.Thread(
        target=state.update, args=(scan_of(candidate("/dev/sda")), config_of())
    )
    updater.start()
    assert building.wait(10.0)
    seen: list[DeviceSnapshot] = []
    subscriptions = []

    def reader() -> None:
        seen.append(state.current())
        subscriptions.append(state.subscribe())

    reading = threading.Thread(target=reader)
    reading.start()
    reading.join(10.0)  # would block until release if update held the readers' lock
    blocked = reading.is_alive()
    release.set()
    updater.join(10.0)
    assert not blocked
    assert seen[0].devices == ()
    assert subscriptions[0].wait(5.0) is state.current()
    assert ids(state.current()) == ["set-0"]


def test_concurrent_updates_build_one_at_a_time() -> None:
    running: list[int] = []
    most = [0]
    guard = threading.Lock()

    def counting_build(
        records: Sequence[DeviceRecord], config: PluginConfig, naming: GrantNaming
    ) -> DeviceSnapshot:
        with guard:
            running.append(1)
            most[0] = max(most[0], len(running))
        time.sleep(0.02)  # widen the window two unserialised builds would overlap in
        with guard:
            running.pop()
        return build_snapshot(records, config, naming)

    state = DeviceState(clock=FakeClock(), build=counting_build)
    threads = [
        threading.Thread(target=state.update, args=(scan_of(candidate(f"/dev/sd{c}")), config_of()))
        for c in "abcd"
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert most[0] == 1
    assert len(state.current().records) == 4  # each update saw the one before it


# --- preferred allocation contract ----------------------------------------------------------------


def test_preferred_counts_must_include_when_spreading() -> None:
    records = [DeviceRecord(device_id_for(p), p) for p in ("/dev/sda", "/dev/sdb")]
    snapshot = build_snapshot(records, config_of(upper_limit=5, **PER_DEVICE))
    sda, sdb = (r.device_id for r in records)
    # sda has more free units, but one of its units is already in must_include.
    available = [f"{sda}-r{k}" for k in range(5)] + [f"{sdb}-r0", f"{sdb}-r1"]
    picked = snapshot.preferred(available, [f"{sda}-r4"], 2)
    assert picked == [f"{sda}-r4", f"{sdb}-r0"]


def test_preferred_never_answers_an_id_outside_available() -> None:
    snapshot = build_snapshot(records_for(2), config_of(upper_limit=2, **PER_DEVICE))
    d0 = snapshot.records[0].device_id
    picked = snapshot.preferred([f"{d0}-r1"], [f"{d0}-r0", f"{d0}-r1"], 2)
    assert picked == [f"{d0}-r1"]


def test_preferred_in_all_mode_answers_units_in_available_order() -> None:
    snapshot = build_snapshot(records_for(4), config_of())
    assert snapshot.preferred(["set-3", "set-1", "set-0"], ["set-1"], 2) == ["set-1", "set-3"]


def _reference_preferred(
    snapshot: DeviceSnapshot, available: list[str], must_include: list[str], size: int
) -> list[str]:
    """The spreading rule written the slow, obvious way (a full min() per pick)."""
    healthy = {d.id for d in snapshot.devices if d.health == HEALTHY}
    device_of = {
        f"{r.device_id}-r{k}": i for i, r in enumerate(snapshot.records) for k in range(1000)
    }
    chosen = list(dict.fromkeys(i for i in must_include if i in available))
    free: dict[int, list[str]] = {}
    for unit in dict.fromkeys(available):
        if unit in healthy and unit not in chosen:
            free.setdefault(device_of[unit], []).append(unit)
    picked = {d: sum(1 for c in chosen if device_of.get(c) == d) for d in free}
    while len(chosen) < size and free:
        best = min(free, key=lambda d: (picked[d], -len(free[d]), d))
        chosen.append(free[best].pop(0))
        picked[best] += 1
        if not free[best]:
            del free[best]
    return chosen


def test_preferred_keeps_the_kubelet_contract_on_random_requests() -> None:
    rng = random.Random(20240917)
    for case in range(400):
        device_count = rng.randint(1, 8)
        problems = ["" if rng.random() < 0.8 else "size is 0" for _ in range(device_count)]
        records = [
            DeviceRecord(device_id_for(f"/dev/d{i}"), f"/dev/d{i}", problem=problems[i])
            for i in range(device_count)
        ]
        config = config_of(upper_limit=rng.randint(1, 4), **PER_DEVICE)
        snapshot = build_snapshot(records, config)
        units = ids(snapshot)
        available = rng.sample(units, rng.randint(0, len(units)))
        available += rng.sample(["stale-r0", "stale-r1"], rng.randint(0, 2))
        rng.shuffle(available)
        must_include = rng.sample(available, rng.randint(0, min(2, len(available))))
        must_include += rng.sample(units, rng.randint(0, 1))  # maybe outside available
        size = rng.randint(0, len(available) + 2)

        picked = snapshot.preferred(available, must_include, size)

        context = f"case {case}: {available=} {must_include=} {size=} -> {picked}"
        assert set(picked) <= set(available), context
        assert len(picked) == len(set(picked)), context
        must_in_available = [i for i in dict.fromkeys(must_include) if i in available]
        assert picked[: len(must_in_available)] == must_in_available, context
        healthy = {d.id for d in snapshot.devices if d.health == HEALTHY}
        grantable = set(must_in_available) | (set(available) & healthy)
        assert len(picked) == max(len(must_in_available), min(size, len(grantable))), context
        assert picked == _reference_preferred(snapshot, available, must_include, size), context
