"""The node end-to-end proof: the real plugin image, run as the rendered DaemonSet says,
grants real loop devices to a non-root, capability-less workload container.

Each test gets its own node (kubelet stand-in, ConfigMap stand-in, plugin
container) and its own loop devices; all are removed at the end, pass or fail.
"""

from __future__ import annotations

import grp
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.loopdev import LoopDevice, LoopDevices, mounted_file_system, unmount
from tests.e2e.node import (
    HEALTHY,
    UNHEALTHY,
    Figure,
    Node,
    config_map_name,
    node_group,
    plugin_config,
)
from tests.integration.kubelet_stub import Devices, Registration

from pdp_pipeline.e2e import manifest as e2e_manifest
from pdp_pipeline.e2e import plugin_run as e2e_plugin_run
from pdp_pipeline.e2e import workload as e2e_workload
from power_device_plugin import cdi

pytestmark = [
    pytest.mark.engine,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and nsenter need root"),
]

# The deadlines: a device change reaches ListAndWatch, and a restarted
# kubelet sees the plugin again, within one second.
DEADLINE_SECONDS = 1.0
# Starting a container and importing grpc may take a while, more under QEMU.
START_TIMEOUT = 30.0
SIGTERM_EXIT_SECONDS = 5.0


def start_node(
    node: Node,
    loops: LoopDevices,
    *,
    granted: int = 3,
    config: Mapping[str, Any] | None = None,
    ready: Callable[[Devices], bool] | None = None,
) -> tuple[list[LoopDevice], LoopDevice, Registration, dict[str, str]]:
    """Loop devices 0..granted-1 matched, 9 excluded; the plugin up and listing them.

    `config` replaces the suite's per-device config (its include and exclude
    lists are set to the loop devices); `ready` says when the list is complete
    (default: one Healthy unit per granted device, mapped by host path).
    """
    devices = [loops.create(i) for i in range(granted)]
    excluded = loops.create(9)
    chosen = dict(config) if config is not None else plugin_config(loops.glob, [excluded])
    chosen.update({"include-devices": [loops.glob], "exclude-devices": [excluded.path]})
    node.write_config(chosen)
    node.start()
    complete = ready if ready is not None else (lambda d: len(healthy(d)) == granted)
    try:
        registration = node.kubelet.wait_for_registration(timeout=START_TIMEOUT)
        listed = node.wait_for_list(complete, timeout=START_TIMEOUT)
    except TimeoutError as error:
        raise AssertionError(f"{error}\nplugin log:\n{node.plugin_logs()[-3000:]}") from None
    return devices, excluded, registration, node.ids_by_path(listed) if ready is None else {}


def healthy(devices: Devices) -> set[str]:
    return {i for i, h in devices.items() if h == HEALTHY}


def test_the_plugin_runs_with_the_daemonset_settings_and_advertises_the_matched_devices(
    node: Node, loops: LoopDevices, daemonset: Mapping[str, Any]
) -> None:
    devices, excluded, registration, ids = start_node(node, loops)

    host_config = node.plugin.attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["Privileged"] is False
    assert host_config["CapDrop"] == ["ALL"]
    assert not host_config["CapAdd"]
    assert host_config["NetworkMode"] == "none"
    assert host_config["PidMode"] in ("", "private")
    limits = e2e_manifest.plugin_container(daemonset)["resources"]["limits"]
    assert host_config["Memory"] == e2e_manifest.memory_bytes(limits["memory"])
    assert host_config["NanoCpus"] == e2e_manifest.cpu_nanos(limits["cpu"])
    process = node.plugin_process_status()
    assert process["CapEff"] == "0000000000000000"
    assert process["NoNewPrivs"] == "1"
    assert process["Uid"].split()[0] == str(node.plugin_run.user).split(":")[0]
    assert registration.version == "v1beta1"
    assert registration.resource_name == e2e_plugin_run.plugin_setting(
        node.plugin_run, "--resource"
    )
    assert registration.endpoint == node.socket_path.name
    assert set(ids) == {d.path for d in devices}
    assert excluded.path not in ids
    container = e2e_manifest.plugin_container(daemonset)
    probes = [p for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in container]
    assert "readinessProbe" in probes, "the DaemonSet must gate readiness on /readyz"
    for probe in probes:
        path, port = e2e_manifest.http_probe_target(container, probe)
        assert node.plugin_http_status(path, port) == 200, probe


def test_a_non_root_workload_reads_every_granted_device_and_never_sees_the_excluded_one(
    node: Node, loops: LoopDevices
) -> None:
    devices, excluded, _, ids = start_node(node, loops)

    grant = node.allocate([ids[d.path] for d in devices])
    report = node.run_workload(grant, [*(d.path for d in devices), excluded.path])

    assert report.exit_code == 0, report.output
    assert report.uid == 1000
    assert report.cap_eff == "0000000000000000"
    assert grp.getgrnam("disk").gr_gid in report.groups
    for device in devices:
        assert report.read_marker(device) == device.marker, device.path
    assert report.devices[excluded.path]["exists"] is False
    assert excluded.path not in {d.host_path for d in grant.devices}
    assert f"loop{excluded.number}" not in report.dev_entries


def test_with_the_shipped_sample_config_one_unit_grants_every_matched_device(
    node: Node, loops: LoopDevices, rendered: list[dict[str, Any]], daemonset: Mapping[str, Any]
) -> None:
    shipped = e2e_manifest.config_map_value(rendered, config_map_name(daemonset), node.config_key)
    sample = json.loads(shipped)
    assert sample.get("grant-mode", "all") == "all", "the sample is meant to keep IBM semantics"
    devices, excluded, _, _ = start_node(
        node, loops, granted=2, config=sample, ready=lambda d: len(healthy(d)) > 0
    )
    units = sorted(healthy(node.kubelet.lists()[-1]))

    grant = node.allocate(units[:1])
    report = node.run_workload(grant, [*(d.path for d in devices), excluded.path])

    assert sorted(d.host_path for d in grant.devices) == sorted(d.path for d in devices)
    for device in devices:
        assert report.read_marker(device) == device.marker
    assert report.devices[excluded.path]["exists"] is False


def test_without_the_device_group_a_non_root_workload_is_denied(
    node: Node, loops: LoopDevices
) -> None:
    devices, _, _, ids = start_node(node, loops, granted=1)

    grant = node.allocate([ids[devices[0].path]])
    report = node.run_workload(grant, [devices[0].path], group_add=())

    assert report.devices[devices[0].path]["exists"] is True
    assert report.devices[devices[0].path]["read_error"] == "EACCES"


def test_a_node_without_udev_leaves_a_granted_device_unusable_for_non_root(
    node: Node, loops: LoopDevices
) -> None:
    start_node(node, loops, granted=1)
    bare = loops.create(3, udev_rule=False)  # root:root 0600, as devtmpfs makes it
    listed = node.wait_for_list(lambda d: len(healthy(d)) == 2)
    bare_id = node.ids_by_path(listed)[bare.path]

    grant = node.allocate([bare_id])
    report = node.run_workload(grant, [bare.path])

    # its group is root's: not added
    assert e2e_workload.device_groups([bare.path], node_group) == ()
    assert report.devices[bare.path]["exists"] is True
    assert report.devices[bare.path]["read_error"] == "EACCES"


def test_read_only_permissions_let_the_workload_read_but_not_write(
    node: Node, loops: LoopDevices
) -> None:
    devices, excluded, _, ids = start_node(node, loops, granted=1)
    device = devices[0]
    writable = node.run_workload(node.allocate([ids[device.path]]), [device.path], write=True)
    assert writable.devices[device.path]["write_error"] is None, writable.output

    node.write_config(plugin_config(loops.glob, [excluded], permissions="r"))
    deadline = time.monotonic() + 10
    grant = node.allocate([ids[device.path]])
    while grant.devices[0].permissions != "r" and time.monotonic() < deadline:
        time.sleep(0.1)
        grant = node.allocate([ids[device.path]])
    report = node.run_workload(grant, [device.path], write=True)

    assert grant.devices[0].permissions == "r", node.plugin_logs()[-2000:]
    assert report.read_marker(device) == device.marker
    assert report.devices[device.path]["write_error"] == "EPERM"


def test_a_removed_device_is_reported_and_a_new_one_is_granted_within_a_second(
    node: Node, loops: LoopDevices, figure: Figure
) -> None:
    devices, _, _, ids = start_node(node, loops)
    gone = devices[1]
    gone_id = ids[gone.path]

    loops.remove(gone)
    removed_at = time.monotonic()
    after_removal, removal_latency = node.first_list_after(
        removed_at, lambda d: d.get(gone_id, UNHEALTHY) == UNHEALTHY
    )
    created_at = time.monotonic()
    new = loops.create(4)
    after_creation, creation_latency = node.first_list_after(
        created_at, lambda d: len(healthy(d) - set(ids.values())) == 1
    )
    new_id = (healthy(after_creation) - set(ids.values())).pop()
    report = node.run_workload(node.allocate([new_id]), [new.path])

    figure("removal_to_list_seconds", removal_latency)
    figure("creation_to_list_seconds", creation_latency)
    assert removal_latency <= DEADLINE_SECONDS, f"removal seen after {removal_latency:.3f} s"
    assert healthy(after_removal) == {ids[devices[0].path], ids[devices[2].path]}
    assert creation_latency <= DEADLINE_SECONDS, f"new device seen after {creation_latency:.3f} s"
    assert node.granted_paths(new_id) == (new.path,)
    assert report.read_marker(new) == new.marker


def test_after_a_kubelet_restart_the_plugin_registers_within_a_second_and_grants_again(
    node: Node, loops: LoopDevices, figure: Figure
) -> None:
    devices, _, _, _ = start_node(node, loops, granted=2)

    restarted_at = node.kubelet.restart()
    registration = node.kubelet.wait_for_registration(count=2, timeout=10)
    listed = node.wait_for_list(lambda d: len(healthy(d)) == 2)
    ids = node.ids_by_path(listed)
    report = node.run_workload(node.allocate(list(ids.values())), [d.path for d in devices])

    latency = registration.received_at - restarted_at
    figure("restart_to_registration_seconds", latency)
    assert latency <= DEADLINE_SECONDS, f"re-registered {latency:.3f} s after the restart"
    for device in devices:
        assert report.read_marker(device) == device.marker


def test_sigterm_stops_the_plugin_cleanly_and_removes_its_socket(
    node: Node, loops: LoopDevices, figure: Figure
) -> None:
    start_node(node, loops, granted=1)
    assert node.socket_path.is_socket()

    exit_code, took = node.stop_plugin()
    figure("docker_stop_seconds", took)

    assert exit_code == 0, node.plugin_logs()[-2000:]
    assert took <= SIGTERM_EXIT_SECONDS, f"docker stop took {took:.2f} s"
    assert not node.socket_path.exists()


def test_a_loop_device_carrying_a_mounted_file_system_is_never_advertised_nor_granted(
    node: Node, loops: LoopDevices, tmp_path: Path
) -> None:
    devices = [loops.create(i) for i in range(3)]
    in_use = devices[1]
    with mounted_file_system(in_use, tmp_path / "mnt") as mount_point:
        node.write_config(plugin_config(loops.glob, []))
        node.start()
        node.kubelet.wait_for_registration(timeout=START_TIMEOUT)
        listed = node.wait_for_list(lambda d: len(healthy(d)) == 2, timeout=START_TIMEOUT)
        ids = node.ids_by_path(listed)
        assert set(ids) == {devices[0].path, devices[2].path}, node.plugin_logs()[-3000:]
        # Nothing the kubelet may allocate grants it: every advertised unit, all at once.
        granted = node.allocate(sorted(healthy(listed)))
        assert in_use.path not in {d.host_path for d in granted.devices}
        time.sleep(1.0)  # a few watcher rounds: still not advertised
        assert in_use.path not in node.ids_by_path(node.kubelet.lists()[-1])

        unmounting_at = time.monotonic()  # before: the plugin may see it before umount returns
        unmount(mount_point)
        after, _ = node.first_list_after(unmounting_at, lambda d: len(healthy(d)) == 3)
    assert in_use.path in node.ids_by_path(after)


def test_a_missing_config_at_start_grants_nothing_until_the_config_map_appears(
    node: Node, loops: LoopDevices, daemonset: Mapping[str, Any]
) -> None:
    devices = [loops.create(i) for i in range(2)]
    node.start()  # no config written: the ConfigMap key is missing
    node.kubelet.wait_for_registration(timeout=START_TIMEOUT)
    assert node.wait_for_list(lambda d: True, timeout=START_TIMEOUT) == {}
    container = e2e_manifest.plugin_container(daemonset)
    path, port = e2e_manifest.http_probe_target(container, "readinessProbe")
    assert node.plugin_http_status(path, port) == 503
    time.sleep(1.0)  # a few watcher rounds: still nothing
    assert all(lst == {} for lst in node.kubelet.lists()), node.kubelet.lists()
    assert "no valid config yet" in node.plugin_logs()

    node.write_config(plugin_config(loops.glob, []))
    listed = node.wait_for_list(lambda d: len(healthy(d)) == 2, timeout=START_TIMEOUT)
    assert set(node.ids_by_path(listed)) == {d.path for d in devices}


# -- CDI: the engine resolves the plugin's CDI names from the spec it keeps ----------

CDI_OWNER = {"uid": 1000, "gid": 1000, "mode": "0600"}


def cdi_spec_path(node: Node) -> Path:
    """Where the plugin's spec lands on this host: the DaemonSet's CDI hostPath."""
    cdi_dir = e2e_plugin_run.plugin_setting(node.plugin_run, "--cdi-dir")
    host_dir = node.plugin_run.host_path_of(cdi_dir)
    assert host_dir is not None, f"--cdi-dir {cdi_dir} is not on a hostPath volume"
    return Path(host_dir) / cdi.spec_file_name(cdi.cdi_kind_for(registration_resource(node)))


def registration_resource(node: Node) -> str:
    return e2e_plugin_run.plugin_setting(node.plugin_run, "--resource")


def spec_device_paths(spec_path: Path) -> dict[str, list[str]]:
    """CDI device name → the host paths of its device nodes, from the file on disk."""
    spec = json.loads(spec_path.read_text())
    return {
        device["name"]: [n["hostPath"] for n in device["containerEdits"]["deviceNodes"]]
        for device in spec["devices"]
    }


@pytest.fixture
def cdi_engine(docker_client: Any) -> None:
    """The engine must read CDI specs (`invoke setup` turns its cdi feature on)."""
    spec_dirs = docker_client.info().get("CDISpecDirs") or []
    assert "/var/run/cdi" in spec_dirs, (
        f"the engine reads CDI specs from {spec_dirs}: run `invoke setup` (it enables the "
        "engine's cdi feature)"
    )
    Path("/var/run/cdi").mkdir(parents=True, exist_ok=True)


def test_with_cdi_a_non_root_workload_without_the_disk_group_opens_the_granted_nodes(
    node: Node, loops: LoopDevices, cdi_engine: None
) -> None:
    # root:root 0600 on the host, as on a node without udev: no group could open them.
    devices = [loops.create(i, udev_rule=False) for i in range(2)]
    config = plugin_config(loops.glob, [], grant_mode="all")
    node.write_config({**config, "cdi": "only", "device-owner": CDI_OWNER})
    node.start()
    node.kubelet.wait_for_registration(timeout=START_TIMEOUT)
    listed = node.wait_for_list(lambda d: len(healthy(d)) == 2, timeout=START_TIMEOUT)
    spec_path = cdi_spec_path(node)

    grant = node.allocate(sorted(healthy(listed))[:1])
    report = node.run_workload(grant, [d.path for d in devices], group_add=(), via="cdi")

    assert grant.devices == ()  # cdi: only — the workload gets its nodes from the spec alone
    kind = cdi.cdi_kind_for(registration_resource(node))
    assert grant.cdi_devices == (f"{kind}=all",)
    assert sorted(spec_device_paths(spec_path)["all"]) == sorted(d.path for d in devices)
    assert grant.envs["PDP_DEVICES"] == ",".join(sorted(d.path for d in devices))
    assert report.exit_code == 0, report.output
    assert (report.uid, report.groups, report.cap_eff) == (1000, (1000,), "0000000000000000")
    for device in devices:
        assert report.devices[device.path]["owner"] == [1000, 1000, "0o600"]
        assert report.read_marker(device) == device.marker, report.output


def test_with_cdi_a_read_only_grant_still_refuses_writes(
    node: Node, loops: LoopDevices, cdi_engine: None
) -> None:
    device = loops.create(0, udev_rule=False)
    config = plugin_config(loops.glob, [], permissions="r")
    node.write_config({**config, "device-owner": CDI_OWNER})
    node.start()
    node.kubelet.wait_for_registration(timeout=START_TIMEOUT)
    listed = node.wait_for_list(lambda d: len(healthy(d)) == 1, timeout=START_TIMEOUT)

    grant = node.allocate(sorted(healthy(listed)))
    report = node.run_workload(grant, [device.path], group_add=(), write=True, via="cdi")

    assert report.read_marker(device) == device.marker, report.output
    # The owner may open it for writing; the device cgroup from the spec's "r" may not.
    assert report.devices[device.path]["write_error"] == "EPERM"


def test_the_cdi_spec_follows_the_devices_and_leaves_with_the_plugin(
    node: Node, loops: LoopDevices, cdi_engine: None
) -> None:
    # The spec is written only when a grant needs it: cdi chosen explicitly here.
    config = {**plugin_config(loops.glob, []), "cdi": "both"}
    devices, _, _, _ = start_node(node, loops, granted=2, config=config)
    spec_path = cdi_spec_path(node)
    assert sorted(p for paths in spec_device_paths(spec_path).values() for p in paths) == sorted(
        d.path for d in devices
    )

    loops.remove(devices[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        named = {p for paths in spec_device_paths(spec_path).values() for p in paths}
        if devices[1].path not in named:
            break
        time.sleep(0.05)
    assert named == {devices[0].path}, node.plugin_logs()[-2000:]

    exit_code, _ = node.stop_plugin()
    assert exit_code == 0
    assert not spec_path.exists()
