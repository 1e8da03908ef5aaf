"""IBM single-resource config files give byte-for-byte the answers recorded before
several resources per process existed: the ListAndWatch list and the Allocate answer
of every unit (and of all units together).

The recorded answers are in ``recorded/ibm_answers.json``; ``PDP_RECORD=1`` writes
them again (only ever from a tree whose answers are known to be right). They were recorded
with the single-resource code path (parse_config, scan, one DeviceState); the test
goes through the several-resources path the plugin now serves with.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from tests.unit.conftest import FakeHost

from power_device_plugin.api import pb
from power_device_plugin.config import ResourceConfig, parse_resources
from power_device_plugin.devices import DeviceState
from power_device_plugin.host_use import read_host_use
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.resources import ResourceStates, naming_for, scan_resources
from power_device_plugin.server import DevicePluginServicer, Refused

RECORDED = Path(__file__).parent / "recorded" / "ibm_answers.json"

# IBM's format as the tests and the docs use it: every key IBM had, and ours beside them.
IBM_CONFIGS: dict[str, dict[str, Any]] = {
    "per-device-glob": {"include-devices": ["/dev/fake*"], "grant-mode": "per-device"},
    "ibm-nx-gzip-all": {
        "nx-gzip": True,
        "permissions": "RW",
        "include-devices": ["/dev/dm-*"],
        "exclude-devices": ["/dev/dm-9"],
        "discovery-strategy": "default",
        "scan-interval": "60s",
        "upper-limit": 10,
    },
    "per-device-shared": {
        "include-devices": ["/dev/fake*", "/dev/mapper/mpatha"],
        "grant-mode": "per-device",
        "upper-limit": 3,
        "permissions": "r",
    },
    "cdi-both-owner": {
        "include-devices": ["/dev/fake*"],
        "grant-mode": "per-device",
        "device-owner": {"uid": 1000, "gid": 1000, "mode": "0600"},
    },
    "every-block-device-time": {"discovery-strategy": "time", "scan-interval": "10m"},
}


def build_host(root: Path) -> FakeHost:
    host = FakeHost(root)
    host.disk("sda", partitions=("sda1",))
    host.disk("fake0")
    host.disk("fake1")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a0980383146", slaves=("sda",))
    host.dm("dm-1", "mpathb", uuid="mpath-3600a0980383147")
    host.dm("dm-9", "mpathz", uuid="mpath-3600a0980383149")
    host.char_node("/dev/crypto/nx-gzip")
    host.mount("/dev/sda1", "/")
    return host


def answers_of(doc: dict[str, Any], host: FakeHost) -> dict[str, str]:
    """Hex of each answer: the list, then Allocate of each unit and of all units."""
    config, _ = parse_resources(json.dumps(doc), "config.json")
    made: list[DeviceState] = []

    def make_state(resource: ResourceConfig) -> DeviceState:
        made.append(DeviceState(naming=naming_for(resource)))
        return made[-1]

    states = ResourceStates(make_state)
    host_use = read_host_use(host.proc, host.sys)
    states.update(scan_resources(config, host.dev, host.sys, host_use, False), config)
    assert len(made) == 1
    state = states.states()["power-dev-plugin/dev"]
    servicer = DevicePluginServicer(state, PluginMetrics(), threading.Event())
    devices = state.current().devices
    out = {"list": servicer.list_wire(devices).hex()}
    ids = [d.id for d in devices]
    for device_id in ids:
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=[device_id])]
        )
        out[f"allocate {device_id}"] = allocated(servicer, request)
    if ids:
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=ids[:5])]
        )
        out["allocate first five"] = allocated(servicer, request)
    return out


def allocated(servicer: DevicePluginServicer, request: pb.AllocateRequest) -> str:
    try:
        return servicer.allocate_wire(request).hex()
    except Refused as refused:
        return f"refused {refused.code.name}: {refused.details}"


def all_answers(tmp_path: Path) -> dict[str, dict[str, str]]:
    found = {}
    for name, doc in IBM_CONFIGS.items():
        host = build_host(tmp_path / name)
        found[name] = answers_of(doc, host)
    return found


def test_ibm_configs_give_the_recorded_answers_byte_for_byte(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes are made with os.mknod, which needs root")
    found = all_answers(tmp_path)
    if os.environ.get("PDP_RECORD") == "1":
        RECORDED.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(RECORDED.read_text())
    assert sorted(found) == sorted(recorded)
    for name in recorded:
        assert found[name] == recorded[name], name
    digest = hashlib.sha256(RECORDED.read_bytes()).hexdigest()
    assert digest  # the file is read whole


def test_every_recorded_config_advertises_something() -> None:
    recorded = json.loads(RECORDED.read_text())
    for name, answers in recorded.items():
        assert len(answers) > 1, name
