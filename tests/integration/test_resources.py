"""Several resources from one plugin process against the kubelet stand-in: one
registration per resource, grants that carry only their resource's devices, and
live changes of the resources list."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.integration.kubelet_stub import KubeletStub
from tests.integration.plugin_process import FakeNode, PluginProcess

DISKS = "example.com/disks"
SCRATCH = "example.com/scratch"

TWO: dict[str, Any] = {
    "resources": [
        {"name": DISKS, "include-devices": ["/dev/fakea*"], "grant-mode": "per-device"},
        {"name": SCRATCH, "include-devices": ["/dev/fakeb*"], "grant-mode": "per-device"},
    ]
}


def container_env(*responses: Any) -> dict[str, str]:
    """What the kubelet gives one container asking for several resources: every
    plugin's envs, merged (a later key would overwrite an earlier one)."""
    env: dict[str, str] = {}
    for response in responses:
        (container,) = response.container_responses
        for key, value in container.envs.items():
            assert key not in env, f"{key} set by two resources"
            env[key] = value
    return env


def start_two(
    node: FakeNode, plugin_factory: Callable[..., PluginProcess], doc: dict[str, Any] = TWO
) -> PluginProcess:
    for name in ("fakea0", "fakea1", "fakeb0"):
        node.device(name)
    node.write_config(doc)
    # The CDI directory of the test, never the host's /var/run/cdi.
    (node.root / "cdi").mkdir(exist_ok=True)
    return plugin_factory(f"--cdi-dir={node.root / 'cdi'}")


def test_each_resource_registers_on_its_own_socket(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process = start_two(node, plugin_factory)
    kubelet.wait_for_registration(count=2, timeout=10)
    by_resource = {r.resource_name: r.endpoint for r in kubelet.registrations}
    assert by_resource == {
        DISKS: "pdp-example.com_disks.sock",
        SCRATCH: "pdp-example.com_scratch.sock",
    }, process.log()
    for endpoint in by_resource.values():
        assert (node.plugin_dir / endpoint).is_socket()
    assert len(kubelet.registrations) == 2
    disks = kubelet.wait_for_list_of(DISKS, lambda d: len(d) == 2)
    scratch = kubelet.wait_for_list_of(SCRATCH, lambda d: len(d) == 1)
    assert all(i.startswith("fakea") for i in disks)
    assert all(i.startswith("fakeb") for i in scratch)
    process.wait_http("/readyz", 200, timeout=10)


def test_a_grant_carries_only_its_resources_devices_and_two_resources_both_sets(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    start_two(node, plugin_factory)
    kubelet.wait_for_registration(count=2, timeout=10)
    disks = sorted(kubelet.wait_for_list_of(DISKS, lambda d: len(d) == 2))
    (scratch,) = kubelet.wait_for_list_of(SCRATCH, lambda d: len(d) == 1)
    one = kubelet.allocate_of(DISKS, [disks[0]]).container_responses[0]
    assert [d.host_path for d in one.devices] == ["/dev/fakea0"]
    assert dict(one.envs) == {"PDP_DEVICES_EXAMPLE_COM_DISKS": "/dev/fakea0"}
    assert dict(one.annotations) == {"example.com/disks-devices": "/dev/fakea0"}
    # A container asking for both resources: each plugin answers for its own.
    env = container_env(kubelet.allocate_of(DISKS, disks), kubelet.allocate_of(SCRATCH, [scratch]))
    assert env == {
        "PDP_DEVICES_EXAMPLE_COM_DISKS": "/dev/fakea0,/dev/fakea1",
        "PDP_DEVICES_EXAMPLE_COM_SCRATCH": "/dev/fakeb0",
    }
    # An ID of the other resource is not this plugin's.
    try:
        kubelet.allocate_of(SCRATCH, [disks[0]])
    except Exception as error:  # grpc.RpcError
        assert "INVALID_ARGUMENT" in str(getattr(error, "code", lambda: "")())
    else:
        raise AssertionError("a disks ID was granted by the scratch plugin")


def test_a_device_both_select_goes_to_the_first_and_scan_says_why(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    doc = {
        "resources": [
            {"name": DISKS, "include-devices": ["/dev/fakea0"], "grant-mode": "per-device"},
            {"name": SCRATCH, "include-devices": ["/dev/fake*"], "grant-mode": "per-device"},
        ]
    }
    process = start_two(node, plugin_factory, doc)
    kubelet.wait_for_registration(count=2, timeout=10)
    (disk,) = kubelet.wait_for_list_of(DISKS, lambda d: len(d) == 1)
    assert disk.startswith("fakea0")
    scratch = kubelet.wait_for_list_of(SCRATCH, lambda d: len(d) == 2)
    assert not any(i.startswith("fakea0") for i in scratch)
    assert "resource example.com/scratch refuses /dev/fakea0" in process.log()


def test_removing_a_resource_stops_its_server_and_removes_its_socket(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process = start_two(node, plugin_factory)
    kubelet.wait_for_registration(count=2, timeout=10)
    kubelet.wait_for_list_of(SCRATCH, lambda d: len(d) == 1)
    scratch_socket = node.plugin_dir / "pdp-example.com_scratch.sock"
    assert scratch_socket.is_socket()
    node.write_config({"resources": TWO["resources"][:1]})
    kubelet._wait(lambda: not scratch_socket.exists(), 5, "the scratch socket to go")
    log = process.log()
    assert "resource example.com/scratch removed from the config" in log, log
    assert (node.plugin_dir / "pdp-example.com_disks.sock").is_socket()
    process.wait_http("/readyz", 200, timeout=5)
    # Added again: registers again.
    node.write_config(TWO)
    kubelet.wait_for_registration(count=3, timeout=10)
    assert kubelet.registrations[2].resource_name == SCRATCH
    kubelet.wait_for_list_of(SCRATCH, lambda d: len(d) == 1)
    # An invalid change keeps the last good set.
    node.write_config(json.dumps({"nx-gzip": True, "resources": TWO["resources"]}))
    process_log = process.log
    kubelet._wait(lambda: "cannot stand beside" in process_log(), 5, "the refusal")
    assert scratch_socket.is_socket()


def test_readyz_names_a_resource_that_is_not_registered(
    node: FakeNode, plugin_factory: Callable[..., PluginProcess]
) -> None:
    # No kubelet: nothing registers; the body names both resources.
    process = start_two(node, plugin_factory)
    body = process.wait_http("/readyz", 503, timeout=10)
    assert DISKS in body and SCRATCH in body


def test_a_first_config_with_resources_leaves_the_default_resources_spec_alone(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    # The --resource name is served only until a valid config says otherwise; its
    # CDI kind's file may be another plugin's (another node agent, an earlier DaemonSet).
    (node.root / "cdi").mkdir()
    other = node.root / "cdi" / "power-dev-plugin.ibm.com-dev.json"
    other.write_text("{}")
    start_two(node, plugin_factory)
    kubelet.wait_for_registration(count=2, timeout=10)
    kubelet.wait_for_list_of(SCRATCH, lambda d: len(d) == 1)
    assert other.read_text() == "{}"
