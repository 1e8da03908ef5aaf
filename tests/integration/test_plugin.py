"""The real plugin process against the kubelet stand-in, on a fake node."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable

import grpc
import pytest
from tests.integration.kubelet_stub import KubeletStub
from tests.integration.plugin_process import FakeNode, PluginProcess

from power_device_plugin.api import API_VERSION, pb

HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"


def ids_of(devices: dict[str, str], prefix: str) -> list[str]:
    return [device_id for device_id in devices if device_id.startswith(prefix)]


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)"
    match = re.search(r"^" + pattern + "$", text, re.MULTILINE)
    assert match, f"{name}{{{labels}}} not in /metrics:\n{text}"
    return float(match.group(1))


def test_registers_with_v1beta1_its_socket_name_and_resource(
    node: FakeNode, kubelet: KubeletStub, plugin: PluginProcess
) -> None:
    registration = kubelet.wait_for_registration(timeout=10)
    assert registration.version == API_VERSION
    assert registration.endpoint == plugin.socket_name
    assert registration.resource_name == "power-dev-plugin/dev"
    assert registration.get_preferred_allocation_available
    assert not registration.pre_start_required
    kubelet.wait_for_list(lambda d: True, timeout=5)  # options are asked for before the stream
    options = kubelet.latest_connection().options
    assert options is not None
    assert options.get_preferred_allocation_available
    assert not options.pre_start_required


def test_first_list_holds_every_device_at_once(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    for name in ("fake0", "fake1", "fake2"):
        node.device(name)
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    devices = kubelet.wait_for_list(lambda d: len(d) > 0, timeout=5)
    assert len(devices) == 3
    assert set(devices.values()) == {HEALTHY}
    assert kubelet.lists()[0] == devices


def test_resource_name_comes_from_the_environment(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process = plugin_factory(env={"PDP_RESOURCE": "example.com/disk"})
    registration = kubelet.wait_for_registration(timeout=10)
    assert registration.resource_name == "example.com/disk"
    assert (node.plugin_dir / registration.endpoint).is_socket(), process.log()


def test_a_new_device_node_is_pushed_within_one_second(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    node.device("fake1")
    started = time.monotonic()
    devices = kubelet.wait_for_list(lambda d: len(d) == 2, timeout=1.0)
    assert time.monotonic() - started <= 1.0
    assert set(devices.values()) == {HEALTHY}


def test_a_removed_device_node_turns_unhealthy_within_one_second(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.device("fake1")
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 2, timeout=5)
    node.remove("fake1")
    devices = kubelet.wait_for_list(lambda d: UNHEALTHY in d.values(), timeout=1.0)
    assert sorted(devices.values()) == [HEALTHY, UNHEALTHY]
    assert ids_of(devices, "fake1") and devices[ids_of(devices, "fake1")[0]] == UNHEALTHY


def test_a_returning_device_gets_its_old_id_back(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    first = kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    node.remove("fake0")
    kubelet.wait_for_list(lambda d: UNHEALTHY in d.values(), timeout=2)
    node.device("fake0")
    again = kubelet.wait_for_list(lambda d: set(d.values()) == {HEALTHY}, timeout=2)
    assert again == first


def test_config_change_applies_without_restart(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.device("fake1")
    process = plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 2, timeout=5)
    node.write_config(
        {"include-devices": ["/dev/fake*"], "grant-mode": "per-device", "upper-limit": 3}
    )
    devices = kubelet.wait_for_list(lambda d: len(d) == 6, timeout=2)
    assert set(devices.values()) == {HEALTHY}
    assert len(kubelet.registrations) == 1, process.log()


def test_bad_config_keeps_the_last_good_one_logs_the_field_and_counts_it(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    process = plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    good = kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    node.write_config({"include-devices": ["/dev/fake*"], "permissions": "rwx"})
    deadline = time.monotonic() + 3
    while "permissions" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = process.log()
    assert re.search(r"config\.json: permissions: .*'x'", log), log
    assert "keeping the last good config" in log
    _, metrics = process.http_get("/metrics")
    assert metric(metrics, "pdp_config_errors_total") == 1
    node.device("fake1")  # still served with the last good config
    devices = kubelet.wait_for_list(lambda d: len(d) == 2, timeout=2)
    assert ids_of(devices, "fake0")[0] in good
    assert process.process.poll() is None


def test_twenty_kubelet_restarts_in_a_row_each_reregister_within_one_second(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    process = plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    delays = []
    for restart in range(1, 21):
        restarted_at = kubelet.restart()
        registration = kubelet.wait_for_registration(restart + 1, timeout=3)
        delays.append(registration.received_at - restarted_at)
        kubelet.wait_for_list(lambda d: len(d) == 1, timeout=2)
    assert max(delays) <= 1.0, (delays, process.log())
    assert process.process.poll() is None


def test_waits_for_a_late_kubelet_and_says_so(
    node: FakeNode, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    process = plugin_factory()
    deadline = time.monotonic() + 5
    while "kubelet not reachable" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "retrying in" in process.log()
    with KubeletStub(node.plugin_dir) as kubelet:
        kubelet.wait_for_registration(timeout=3)
        kubelet.wait_for_list(lambda d: len(d) == 1, timeout=3)


def test_a_stale_socket_from_an_earlier_run_is_replaced(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    stale = node.plugin_dir / "pdp-test.sock"
    stale.write_text("left behind")
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    assert stale.is_socket()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_removes_the_socket_and_exits_zero_within_five_seconds(
    node: FakeNode, kubelet: KubeletStub, plugin: PluginProcess, signum: int
) -> None:
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: True, timeout=5)
    assert plugin.socket_path.is_socket()
    plugin.signal(signum)
    started = time.monotonic()
    code = plugin.wait(timeout=5)
    assert time.monotonic() - started <= 5
    assert code == 0, plugin.log()
    assert not plugin.socket_path.exists()


def test_allocate_answers_each_container_in_order_with_host_paths(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.device("fake1")
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    devices = kubelet.wait_for_list(lambda d: len(d) == 2, timeout=5)
    first, second = ids_of(devices, "fake1")[0], ids_of(devices, "fake0")[0]
    response = kubelet.allocate([first], [second])
    assert len(response.container_responses) == 2
    granted = [
        [(s.host_path, s.container_path, s.permissions) for s in r.devices]
        for r in response.container_responses
    ]
    assert granted == [[("/dev/fake1", "/dev/fake1", "rw")], [("/dev/fake0", "/dev/fake0", "rw")]]


def test_allocate_of_an_unknown_id_is_invalid_argument_naming_it(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    process = plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    devices = kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    with pytest.raises(grpc.RpcError) as caught:
        kubelet.allocate(list(devices), ["no-such-device"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-such-device" in str(caught.value.details())
    _, metrics = process.http_get("/metrics")
    assert metric(metrics, "pdp_allocations_total", 'result="unknown"') == 1
    assert metric(metrics, "pdp_allocations_total", 'result="ok"') == 0


def test_allocate_of_an_unhealthy_id_is_failed_precondition_naming_it(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    node.remove("fake0")
    devices = kubelet.wait_for_list(lambda d: UNHEALTHY in d.values(), timeout=2)
    (gone,) = devices
    with pytest.raises(grpc.RpcError) as caught:
        kubelet.allocate([gone])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gone in str(caught.value.details())


def test_preferred_allocation_spreads_and_prestart_is_a_no_op(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.device("fake1")
    node.write_config(
        {"include-devices": ["/dev/fake*"], "grant-mode": "per-device", "upper-limit": 2}
    )
    plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    devices = kubelet.wait_for_list(lambda d: len(d) == 4, timeout=5)
    picked = kubelet.preferred(sorted(devices), [], 2)
    assert len(picked) == 2
    assert {device_id.split("-")[0] for device_id in picked} == {"fake0", "fake1"}
    stub = kubelet.latest_connection().stub
    assert stub.PreStartContainer(pb.PreStartContainerRequest(devices_ids=picked), timeout=5) == (
        pb.PreStartContainerResponse()
    )


def test_health_endpoints_follow_registration_and_metrics_count_devices(
    node: FakeNode, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.device("fake1")
    process = plugin_factory()
    process.wait_http("/healthz", 200)
    assert process.http_get("/readyz")[0] == 503  # no kubelet yet
    with KubeletStub(node.plugin_dir) as kubelet:
        kubelet.wait_for_registration(timeout=5)
        process.wait_http("/readyz", 200, timeout=3)
        node.remove("fake1")
        kubelet.wait_for_list(lambda d: UNHEALTHY in d.values(), timeout=2)
        _, metrics = process.http_get("/metrics")
        assert metric(metrics, "pdp_devices", 'health="Healthy"') == 1
        assert metric(metrics, "pdp_devices", 'health="Unhealthy"') == 1
        assert metric(metrics, "pdp_registrations_total", 'result="ok"') == 1
        assert metric(metrics, "pdp_scan_duration_seconds_count") >= 2
    process.wait_http("/readyz", 503, timeout=3)


def test_a_missing_plugin_directory_is_waited_for_not_fatal(
    node: FakeNode, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.plugin_dir.rmdir()
    process = plugin_factory()
    deadline = time.monotonic() + 5
    while "cannot serve on" not in process.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "starting again in" in process.log()
    assert process.process.poll() is None
    node.plugin_dir.mkdir()
    with KubeletStub(node.plugin_dir) as kubelet:
        kubelet.wait_for_registration(timeout=5)
        kubelet.wait_for_list(lambda d: len(d) == 1, timeout=3)


def test_a_missing_config_at_start_advertises_nothing_until_a_valid_one_appears(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    node.device("fake0")
    node.remove_config()
    process = plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    assert kubelet.wait_for_list(lambda d: True, timeout=5) == {}
    status, body = process.http_get("/readyz")
    assert status == 503
    assert "no valid config yet" in body and "does not exist" in body
    _, metrics = process.http_get("/metrics")
    assert metric(metrics, "pdp_config_loaded") == 0
    assert metric(metrics, "pdp_config_errors_total") == 1
    assert "no valid config yet: advertising nothing" in process.log()

    node.write_config({"include-devices": ["/dev/fake*"], "grant-mode": "per-device"})
    devices = kubelet.wait_for_list(lambda d: len(d) == 1, timeout=3)
    assert set(devices.values()) == {HEALTHY}
    process.wait_http("/readyz", 200, timeout=3)
    _, metrics = process.http_get("/metrics")
    assert metric(metrics, "pdp_config_loaded") == 1


def test_a_config_deleted_while_running_keeps_the_last_good_one(
    node: FakeNode, kubelet: KubeletStub, plugin: PluginProcess
) -> None:
    node.device("fake0")
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)
    node.remove_config()
    deadline = time.monotonic() + 3
    while "keeping the last good config" not in plugin.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "does not exist; nothing is advertised until" in plugin.log()
    assert "keeping the last good config (include-devices: /dev/fake*" in plugin.log()
    node.device("fake1")  # still served with the last good config
    kubelet.wait_for_list(lambda d: len(d) == 2, timeout=2)
    plugin.wait_http("/readyz", 200, timeout=3)


def test_a_device_the_host_mounts_is_withdrawn_and_returns_once_unmounted(
    node: FakeNode, kubelet: KubeletStub, plugin: PluginProcess
) -> None:
    node.device("fake0")
    node.device("fake1")
    kubelet.wait_for_registration(timeout=10)
    first = kubelet.wait_for_list(lambda d: len(d) == 2 and UNHEALTHY not in d.values(), timeout=5)
    node.mount("fake1", "/var/lib/containers")
    withdrawn = kubelet.wait_for_list(lambda d: list(d.values()).count(HEALTHY) == 1, timeout=2)
    assert len([i for i, h in withdrawn.items() if h == HEALTHY]) == 1
    node.unmount_all()
    back = kubelet.wait_for_list(lambda d: list(d.values()).count(HEALTHY) == 2, timeout=2)
    assert set(back) == set(first)
