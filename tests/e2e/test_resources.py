"""Several resources from one plugin container, run as the rendered DaemonSet runs it,
on real loop devices: each resource registers on its own socket, a non-root workload
per resource reads only its own devices, removing a resource from the ConfigMap removes
its socket and its CDI spec, and a device two resources list goes to the first.

The resource names carry the node's run ID: the CDI directory is the host's
``/var/run/cdi``, shared with every other run on this machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.loopdev import LoopDevice, LoopDevices
from tests.e2e.node import HEALTHY, Node, grant_view

from pdp_pipeline.e2e import plugin_run as e2e_plugin_run
from pdp_pipeline.e2e import workload as e2e_workload
from power_device_plugin import cdi
from power_device_plugin.resources import socket_name_for

pytestmark = [
    pytest.mark.engine,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and nsenter need root"),
]

START_TIMEOUT = 30.0


def names(node: Node) -> tuple[str, str]:
    return (f"e2e-{node.run_id}.example.com/disks", f"e2e-{node.run_id}.example.com/scratch")


def resources_config(first: dict[str, Any], second: dict[str, Any], node: Node) -> dict[str, Any]:
    disks, scratch = names(node)
    return {
        "scan-interval": "60s",
        "resources": [
            {"name": disks, "grant-mode": "per-device", **first},
            {"name": scratch, "grant-mode": "per-device", **second},
        ],
    }


def ids_by_path(node: Node, resource: str, devices: dict[str, str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for device_id, health in devices.items():
        if health == HEALTHY:
            response = node.kubelet.allocate_of(resource, [device_id])
            for spec in response.container_responses[0].devices:
                mapping[spec.host_path] = device_id
    return mapping


def start(node: Node, config: dict[str, Any], counts: tuple[int, int]) -> list[dict[str, str]]:
    node.write_config(config)
    node.start()
    try:
        node.kubelet.wait_for_registration(count=2, timeout=START_TIMEOUT)
        return [
            node.kubelet.wait_for_list_of(
                name, lambda d, n=count: len(d) == n, timeout=START_TIMEOUT
            )
            for name, count in zip(names(node), counts)
        ]
    except TimeoutError as error:
        raise AssertionError(f"{error}\nplugin log:\n{node.plugin_logs()[-3000:]}") from None


def cdi_spec_of(node: Node, resource: str) -> Path:
    cdi_dir = e2e_plugin_run.plugin_setting(node.plugin_run, "--cdi-dir")
    host_dir = node.plugin_run.host_path_of(cdi_dir)
    assert host_dir is not None
    return Path(host_dir) / cdi.spec_file_name(cdi.cdi_kind_for(resource))


def test_two_resources_each_grant_a_non_root_workload_only_their_own_devices(
    node: Node, loops: LoopDevices
) -> None:
    disks, scratch = names(node)
    a0, a1, b0 = (loops.create(i) for i in range(3))
    config = resources_config(
        {"include-devices": [a0.path, a1.path]}, {"include-devices": [b0.path]}, node
    )
    lists = start(node, config, (2, 1))
    registered = {r.resource_name: r.endpoint for r in node.kubelet.registrations}
    assert registered == {disks: socket_name_for(disks), scratch: socket_name_for(scratch)}
    for endpoint in registered.values():
        assert (node.plugin_dir / endpoint).is_socket()

    reports = {}
    for resource, listed, own, other in (
        (disks, lists[0], [a0, a1], [b0]),
        (scratch, lists[1], [b0], [a0, a1]),
    ):
        ids = ids_by_path(node, resource, listed)
        assert set(ids) == {d.path for d in own}
        response = node.kubelet.allocate_of(resource, sorted(ids.values()))
        grant = grant_view(response.container_responses[0])
        env_name = cdi.grant_env_for(resource)
        assert grant.envs == {env_name: ",".join(d.path for d in own)}
        report = node.run_workload(grant, [d.path for d in (*own, *other)])
        assert report.exit_code == 0, report.output
        assert report.uid == 1000
        assert report.cap_eff == "0000000000000000"
        for device in own:
            assert report.read_marker(device) == device.marker, report.output
        for device in other:
            assert report.devices[device.path]["exists"] is False, report.output
        reports[resource] = report
    assert len(reports) == 2


def test_removing_a_resource_from_the_configmap_removes_its_socket_and_spec(
    node: Node, loops: LoopDevices, docker_client: Any
) -> None:
    disks, scratch = names(node)
    a0, b0 = loops.create(0), loops.create(1)
    owner = {"uid": 1000, "gid": 1000, "mode": "0600"}
    config = resources_config(
        {"include-devices": [a0.path]},
        {"include-devices": [b0.path], "cdi": "both", "device-owner": owner},
        node,
    )
    Path("/var/run/cdi").mkdir(parents=True, exist_ok=True)
    start(node, config, (1, 1))
    scratch_socket = node.plugin_dir / socket_name_for(scratch)
    spec = cdi_spec_of(node, scratch)
    assert scratch_socket.is_socket()
    assert spec.exists(), node.plugin_logs()[-2000:]

    node.write_config({**config, "resources": config["resources"][:1]})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (scratch_socket.exists() or spec.exists()):
        time.sleep(0.05)
    assert not scratch_socket.exists(), node.plugin_logs()[-2000:]
    assert not spec.exists(), node.plugin_logs()[-2000:]
    assert (node.plugin_dir / socket_name_for(disks)).is_socket()
    assert f"resource {scratch} removed from the config" in node.plugin_logs()


def test_a_device_listed_in_both_resources_goes_to_the_first(
    node: Node, loops: LoopDevices
) -> None:
    disks, scratch = names(node)
    shared: LoopDevice = loops.create(0)
    other = loops.create(1)
    config = resources_config(
        {"include-devices": [shared.path]}, {"include-devices": [loops.glob]}, node
    )
    lists = start(node, config, (1, 1))
    assert set(ids_by_path(node, disks, lists[0])) == {shared.path}
    assert set(ids_by_path(node, scratch, lists[1])) == {other.path}
    assert f"resource {scratch} refuses {shared.path} (granted by {disks}" in node.plugin_logs()
    assert e2e_workload.VIA_DEVICE_SPECS  # the grants above are plain DeviceSpecs
