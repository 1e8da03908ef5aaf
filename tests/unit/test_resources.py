"""Several resources in one config.json: parsing, limits, and one discovery pass
feeding one DeviceState per resource, each device owned by the first resource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.unit.conftest import FakeHost

from power_device_plugin.config import (
    MAX_RESOURCES,
    ConfigError,
    FileConfig,
    ResourceConfig,
    parse_resources,
)
from power_device_plugin.devices import DeviceState
from power_device_plugin.discovery import ADVERTISED, REFUSED
from power_device_plugin.host_use import read_host_use
from power_device_plugin.resources import (
    RULE_FIRST_RESOURCE,
    ResourcesScan,
    ResourceStates,
    capacity_of,
    naming_for,
    scan_resources,
    socket_name_for,
)


def parse(doc: dict[str, Any]) -> tuple[FileConfig, list[str]]:
    return parse_resources(json.dumps(doc), "config.json")


def error_of(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse(doc)
    return caught.value


THREE = {
    "scan-interval": "30s",
    "resources": [
        {"name": "example.com/db-luns", "include-devices": ["/dev/dm-*"]},
        {
            "name": "example.com/scratch",
            "include-devices": ["/dev/fake*"],
            "grant-mode": "per-device",
        },
        {
            "name": "power-dev-plugin/nx-gzip",
            "include-devices": ["/dev/crypto/nx-gzip"],
            "grant-mode": "all",
            "upper-limit": 100,
        },
    ],
}


def test_a_resources_list_gives_each_resource_its_keys_and_the_file_wide_ones() -> None:
    config, warnings = parse(THREE)
    assert warnings == []
    assert config.names == (
        "example.com/db-luns",
        "example.com/scratch",
        "power-dev-plugin/nx-gzip",
    )
    db, scratch, nx = (r.config for r in config.resources)
    assert db.include_devices == ("/dev/dm-*",)
    assert scratch.grant_mode == "per-device"
    assert nx.upper_limit == 100
    assert {r.config.scan_interval_seconds for r in config.resources} == {30.0}
    assert not any(r.single for r in config.resources)
    # What the watcher watches: every resource's globs.
    assert config.include_devices == ("/dev/dm-*", "/dev/fake*", "/dev/crypto/nx-gzip")


def test_ibm_top_level_keys_are_one_resource_named_by_the_flag() -> None:
    config, _ = parse_resources(json.dumps({"nx-gzip": True}), "c.json", "example.com/dev")
    (only,) = config.resources
    assert only.name == "example.com/dev" and only.single and only.config.nx_gzip


def test_top_level_device_keys_beside_resources_are_an_error_naming_them() -> None:
    error = error_of({"nx-gzip": True, "include-devices": ["/dev/x"], "resources": []})
    assert error.field == "resources"
    assert "nx-gzip, include-devices" in error.reason


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"include-devices": ["/dev/x"]}, "resources[0].name", "is missing"),
        ({"name": 3}, "resources[0].name", "must be a string"),
        ({"name": "noslash"}, "resources[0].name", "domain/name"),
        ({"name": "kubernetes.io/disk"}, "resources[0].name", "reserved"),
        ({"name": "Example.com/disk"}, "resources[0].name", "DNS subdomain"),
        ({"name": "a.com/x", "scan-interval": "5s"}, "resources[0].scan-interval", "file-wide"),
        (
            {"name": "a.com/x", "permissions": "rx"},
            "resources[0] (a.com/x).permissions",
            "'x'",
        ),
        (
            {"name": "a.com/x", "upper-limit": 5000},
            "resources[0] (a.com/x).upper-limit",
            "at most 1000",
        ),
    ],
)
def test_an_invalid_entry_names_its_index_and_field(
    entry: dict[str, Any], field: str, words: str
) -> None:
    error = error_of({"resources": [entry]})
    assert error.field == field
    assert words in error.reason


def test_a_resource_named_twice_is_an_error() -> None:
    error = error_of({"resources": [{"name": "a.com/x"}, {"name": "a.com/x"}]})
    assert error.field == "resources[1].name"
    assert "already resources[0]" in error.reason


def test_names_that_would_share_an_env_var_are_an_error() -> None:
    error = error_of({"resources": [{"name": "a.com/x-y"}, {"name": "a.com/x.y"}]})
    assert "PDP_DEVICES_A_COM_X_Y" in error.reason


def test_resources_must_be_a_non_empty_list_within_the_bound() -> None:
    assert "must be a list" in error_of({"resources": {"name": "a.com/x"}}).reason
    assert "is empty" in error_of({"resources": []}).reason
    many = [{"name": f"a.com/r{i}"} for i in range(MAX_RESOURCES + 1)]
    assert f"at most {MAX_RESOURCES}" in error_of({"resources": many}).reason
    config, _ = parse({"resources": many[:MAX_RESOURCES]})
    assert len(config.resources) == MAX_RESOURCES


def test_warnings_name_the_resource() -> None:
    _, warnings = parse({"resources": [{"name": "a.com/x", "colour": "red"}]})
    assert warnings == ["config.json: resources[0] (a.com/x): unknown key 'colour' ignored"]


def test_each_listed_resource_names_its_own_env_socket_and_cdi_kind() -> None:
    config, _ = parse(THREE)
    db, scratch, _nx = config.resources
    assert naming_for(db).env_name == "PDP_DEVICES_EXAMPLE_COM_DB_LUNS"
    assert naming_for(scratch).env_name == "PDP_DEVICES_EXAMPLE_COM_SCRATCH"
    assert naming_for(db).cdi_kind == "example.com/db-luns"
    assert socket_name_for("example.com/scratch") == "pdp-example.com_scratch.sock"
    long = "a" * 200 + ".com/x"
    assert len(socket_name_for(long)) < 64 and socket_name_for(long) == socket_name_for(long)
    single = ResourceConfig("power-dev-plugin/dev", db.config, single=True)
    assert naming_for(single).env_name == "PDP_DEVICES"


def host_with_disks(root: Path) -> FakeHost:
    host = FakeHost(root)
    for name in ("fake0", "fake1", "fake2"):
        host.disk(name)
    host.char_node("/dev/crypto/nx-gzip")
    return host


def test_one_discovery_pass_feeds_a_snapshot_per_resource(tmp_path: Path) -> None:
    host = host_with_disks(tmp_path)
    doc = {
        "resources": [
            {"name": "a.com/first", "include-devices": ["/dev/fake0", "/dev/fake1"]},
            {"name": "a.com/second", "include-devices": ["/dev/fake*"], "grant-mode": "per-device"},
            {"name": "a.com/nx", "include-devices": ["/dev/crypto/nx-gzip"], "upper-limit": 100},
        ]
    }
    config, _ = parse(doc)
    states: dict[str, DeviceState] = {}

    def make(resource: ResourceConfig) -> DeviceState:
        states[resource.name] = DeviceState(naming=naming_for(resource))
        return states[resource.name]

    added: list[str] = []
    multi = ResourceStates(make, on_added=lambda name, state: added.append(name))
    result = scan_resources(config, host.dev, host.sys, read_host_use(host.proc, host.sys))
    assert isinstance(result, ResourcesScan)
    assert multi.update(result, config)
    assert added == ["a.com/first", "a.com/second", "a.com/nx"]
    first = states["a.com/first"].current()
    assert [d.id for d in first.devices] == ["set-0", "set-1"]
    grant = first.allocate(["set-0"])
    assert grant.envs == {"PDP_DEVICES_A_COM_FIRST": "/dev/fake0,/dev/fake1"}
    second = states["a.com/second"].current()
    (only,) = second.devices
    assert only.id.startswith("fake2-")
    assert second.allocate([only.id]).envs == {"PDP_DEVICES_A_COM_SECOND": "/dev/fake2"}
    nx = states["a.com/nx"].current()
    assert len(nx.devices) == 100
    assert nx.allocate(["set-7"]).envs == {"PDP_DEVICES_A_COM_NX": "/dev/crypto/nx-gzip"}
    # The device both select goes to the first; the second says why it refused them.
    refused = [c for c in result.part("a.com/second").candidates if c.verdict == REFUSED]
    assert {c.host_path for c in refused} == {"/dev/fake0", "/dev/fake1"}
    assert {c.rule for c in refused} == {RULE_FIRST_RESOURCE}
    assert all("granted by a.com/first" in c.reason for c in refused)
    advertised = [c.host_path for c in result.part("a.com/first").advertised()]
    assert advertised == ["/dev/fake0", "/dev/fake1"]
    assert result.part("a.com/first").candidates[0].verdict == ADVERTISED


def test_removing_and_renaming_resources_stops_and_starts_them(tmp_path: Path) -> None:
    host = host_with_disks(tmp_path)
    events: list[str] = []
    multi = ResourceStates(
        lambda resource: DeviceState(naming=naming_for(resource)),
        on_added=lambda name, state: events.append(f"+{name}"),
        on_removed=lambda name, state: events.append(f"-{name}"),
        initial=(ResourceConfig("power-dev-plugin/dev", parse({})[0].resources[0].config, True),),
    )
    host_use = read_host_use(host.proc, host.sys)

    def apply(doc: dict[str, Any]) -> None:
        config, _ = parse(doc)
        multi.update(scan_resources(config, host.dev, host.sys, host_use), config)

    apply({"resources": [{"name": "a.com/x"}, {"name": "a.com/y"}]})
    assert events == ["-power-dev-plugin/dev", "+a.com/x", "+a.com/y"]
    events.clear()
    apply({"resources": [{"name": "a.com/x"}, {"name": "a.com/z"}]})
    assert events == ["-a.com/y", "+a.com/z"]
    assert list(multi.states()) == ["a.com/x", "a.com/z"]
    events.clear()
    # IBM's form again: the listed resources go, the one resource comes back.
    apply({"include-devices": ["/dev/fake0"]})
    assert events == ["-a.com/x", "-a.com/z", "+power-dev-plugin/dev"]


def test_the_total_of_units_across_resources_is_bounded(tmp_path: Path) -> None:
    host = host_with_disks(tmp_path)
    entries = [
        {"name": f"a.com/r{i}", "include-devices": ["/dev/crypto/nx-gzip"], "upper-limit": 1000}
        for i in range(21)
    ]
    # One device for each: only the first gets it, so 1000 units; give each its own disk.
    config, _ = parse({"resources": entries})
    result = scan_resources(config, host.dev, host.sys, read_host_use(host.proc, host.sys))
    assert capacity_of(config, result) is None  # the later ones are refused the device
    fake = ResourcesScan(
        result.candidates,
        tuple((r.name, result.part("a.com/r0")) for r in config.resources),
    )
    problem = capacity_of(config, fake)
    assert problem is not None and "21000 units across 21 resources" in problem


def test_the_three_resource_sample_parses_and_its_configmap_carries_it() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2] / "examples" / "resources"
    text = (root / "config.json").read_text()
    config, warnings = parse_resources(text, "config.json")
    assert warnings == []
    assert config.names == (
        "example.com/db-luns",
        "example.com/scratch",
        "power-dev-plugin/nx-gzip",
    )
    db, scratch, nx = (r.config for r in config.resources)
    assert (db.grant_mode, scratch.grant_mode, nx.grant_mode) == ("all", "per-device", "all")
    assert nx.upper_limit == 100 and nx.include_devices == ("/dev/crypto/nx-gzip",)
    configmap = yaml.safe_load((root / "configmap.yaml").read_text())
    assert json.loads(configmap["data"]["config.json"]) == json.loads(text)
