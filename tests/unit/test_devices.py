from __future__ import annotations

import threading
import time

import pytest
from tests.unit.conftest import FakeHost, config_of

from power_device_plugin.config import PluginConfig
from power_device_plugin.devices import (
    HEALTHY,
    UNHEALTHY,
    AllocationError,
    DeviceSnapshot,
    DeviceSpecGrant,
    DeviceState,
    device_id_for,
)
from power_device_plugin.discovery import scan


def refresh(state: DeviceState, host: FakeHost, config: PluginConfig) -> bool:
    return state.update(scan(config, host.dev, host.sys), config)


def ids(snapshot: DeviceSnapshot) -> list[str]:
    return [d.id for d in snapshot.devices]


def health_by_id(snapshot: DeviceSnapshot) -> dict[str, str]:
    return {d.id: d.health for d in snapshot.devices}


def granted_paths(snapshot: DeviceSnapshot, unit_ids: list[str]) -> list[str]:
    return [d.host_path for d in snapshot.allocate(unit_ids).devices]


PER_DEVICE = {"grant_mode": "per-device"}


def test_device_id_is_derived_from_the_host_path() -> None:
    assert device_id_for("/dev/dm-0") == device_id_for("/dev/dm-0")
    assert device_id_for("/dev/dm-0").startswith("dm-0-")
    assert device_id_for("/dev/a-b") != device_id_for("/dev/a/b")
    assert device_id_for("/dev/mapper/mpatha").startswith("mapper-mpatha-")


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


def test_all_mode_units_turn_unhealthy_when_every_device_is_gone(host: FakeHost) -> None:
    host.disk("sda")
    state = DeviceState()
    refresh(state, host, config_of(upper_limit=2))
    host.remove_disk("sda")
    refresh(state, host, config_of(upper_limit=2))
    assert set(health_by_id(state.current()).values()) == {UNHEALTHY}
    with pytest.raises(AllocationError) as caught:
        state.current().allocate(["set-0"])
    assert caught.value.code == "unhealthy"


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
