"""NUMA topology: from sysfs to the advertised units the kubelet's topology manager reads."""

from __future__ import annotations

import threading

from tests.unit.conftest import FakeHost, config_of

from power_device_plugin.api import pb
from power_device_plugin.devices import DeviceState
from power_device_plugin.discovery import scan
from power_device_plugin.host_use import HostUse
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.server import DevicePluginServicer, list_response

NOT_USED = HostUse(in_use={})


def numa_of(host: FakeHost, config_keys: dict[str, object]) -> dict[str, tuple[int, ...]]:
    result = scan(config_of(**config_keys), host.dev, host.sys, NOT_USED)
    return {c.host_path: c.numa_nodes for c in result.advertised()}


def test_a_disk_and_its_partitions_carry_the_disks_numa_node(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1",))
    host.sysfs("sda/device/numa_node", "1")
    host.disk("sdb")
    host.sysfs("sdb/device/numa_node", "-1")  # the kernel's "no affinity"
    host.disk("sdc")  # no device/numa_node at all (virtio here)
    assert numa_of(host, {"include_devices": ["/dev/sd*"]}) == {
        "/dev/sda": (1,),
        "/dev/sda1": (1,),
        "/dev/sdb": (),
        "/dev/sdc": (),
    }


def test_a_multipath_map_carries_the_nodes_of_its_paths(host: FakeHost) -> None:
    for name, node in (("sdp", "0"), ("sdq", "2"), ("sdr", "2")):
        host.disk(name)
        host.sysfs(f"{name}/device/numa_node", node)
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sdp", "sdq"))
    host.dm("dm-1", "mpathb", uuid="mpath-3600b", slaves=("sdr",))
    found = numa_of(host, {"include_devices": ["/dev/dm-*"]})
    assert found == {"/dev/dm-0": (0, 2), "/dev/dm-1": (2,)}


def test_per_device_units_report_their_device_topology_on_the_wire(host: FakeHost) -> None:
    host.disk("sda")
    host.sysfs("sda/device/numa_node", "3")
    host.disk("sdb")
    config = config_of(include_devices=["/dev/sd*"], grant_mode="per-device", upper_limit=2)
    state = DeviceState()
    state.update(scan(config, host.dev, host.sys, NOT_USED), config)
    wire = list_response(state.current().devices)
    nodes = {d.ID: [n.ID for n in d.topology.nodes] for d in wire.devices}
    assert sorted(nodes.values()) == [[], [], [3], [3]]
    assert all(d.HasField("topology") == bool(nodes[d.ID]) for d in wire.devices)


def test_all_mode_units_name_a_node_only_when_the_whole_set_sits_on_it(host: FakeHost) -> None:
    host.disk("sda")
    host.sysfs("sda/device/numa_node", "1")
    host.disk("sdb")
    host.sysfs("sdb/device/numa_node", "1")
    config = config_of(include_devices=["/dev/sd*"])
    state = DeviceState()
    state.update(scan(config, host.dev, host.sys, NOT_USED), config)
    assert {d.numa_nodes for d in state.current().devices} == {(1,)}

    host.sysfs("sdb/device/numa_node", "0")
    state.update(scan(config, host.dev, host.sys, NOT_USED), config)
    assert {d.numa_nodes for d in state.current().devices} == {()}


def test_list_and_watch_sends_the_topology(host: FakeHost) -> None:
    host.disk("sda")
    host.sysfs("sda/device/numa_node", "0")
    config = config_of(include_devices=["/dev/sda"], grant_mode="per-device")
    state = DeviceState()
    state.update(scan(config, host.dev, host.sys, NOT_USED), config)
    servicer = DevicePluginServicer(state, PluginMetrics(), threading.Event())
    # What every ListAndWatch stream sends (serialised once per snapshot).
    first = pb.ListAndWatchResponse.FromString(servicer.list_wire(state.current().devices))
    assert [[n.ID for n in d.topology.nodes] for d in first.devices] == [[0]]
