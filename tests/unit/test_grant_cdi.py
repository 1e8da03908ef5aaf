"""What a grant carries besides DeviceSpecs: CDI names, the env and the annotation,
and the CDI spec kept in line with each snapshot."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from tests.unit.conftest import config_of

from power_device_plugin import cdi
from power_device_plugin.cli import CdiSpecKeeper, remove_cdi_spec
from power_device_plugin.devices import (
    DeviceSnapshot,
    DeviceState,
    GrantNaming,
    device_id_for,
)
from power_device_plugin.discovery import ADVERTISED, SOURCE_INCLUDE, Candidate, ScanResult
from power_device_plugin.metrics import PluginMetrics

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "cdi-spec.schema.json").read_text())
KIND = "power-dev-plugin.ibm.com/dev"
ANNOTATION = "power-dev-plugin.ibm.com/dev-devices"


def dm(index: int, problem: str = "") -> Candidate:
    return Candidate(
        path=f"/host/dev/dm-{index}",
        host_path=f"/dev/dm-{index}",
        verdict=ADVERTISED,
        rule="include /dev/dm-*",
        reason="block device node",
        kind="block",
        source=SOURCE_INCLUDE,
        rdev=(252, index),
        problem=problem,
    )


def snapshot_of(*candidates: Candidate, **keys: object) -> DeviceSnapshot:
    """A snapshot whose grants name CDI devices unless ``cdi`` says otherwise."""
    keys.setdefault("cdi", "both")
    state = DeviceState()
    state.update(ScanResult(candidates), config_of(include_devices=["/dev/dm-*"], **keys))
    return state.current()


def spec_writer(directory: Path) -> Callable[[DeviceSnapshot], None]:
    return CdiSpecKeeper(directory, KIND, PluginMetrics()).write


def test_an_all_mode_grant_names_the_all_device_and_lists_every_path_in_env_and_annotation() -> (
    None
):
    snapshot = snapshot_of(dm(0), dm(3), dm(5, problem="size is 0"))
    grant = snapshot.allocate(["set-0"])
    assert [d.host_path for d in grant.devices] == ["/dev/dm-0", "/dev/dm-3"]
    assert grant.cdi_devices == (f"{KIND}=all",)
    assert grant.envs == {"PDP_DEVICES": "/dev/dm-0,/dev/dm-3"}
    assert grant.annotations == {ANNOTATION: "/dev/dm-0,/dev/dm-3"}


def test_a_per_device_grant_names_each_device_it_grants() -> None:
    snapshot = snapshot_of(dm(0), dm(1), dm(2), grant_mode="per-device")
    dm0, dm2 = device_id_for("/dev/dm-0"), device_id_for("/dev/dm-2")
    grant = snapshot.allocate([f"{dm2}-r0", f"{dm0}-r0"])
    assert grant.cdi_devices == (f"{KIND}={dm0}", f"{KIND}={dm2}")
    assert grant.envs["PDP_DEVICES"] == "/dev/dm-0,/dev/dm-2"
    assert [d.container_path for d in grant.devices] == ["/dev/dm-0", "/dev/dm-2"]


@pytest.mark.parametrize(
    ("mode", "specs", "names"),
    [("off", 2, 0), ("both", 2, 1), ("only", 0, 1)],
)
def test_the_cdi_key_decides_between_device_specs_and_cdi_names(
    mode: str, specs: int, names: int
) -> None:
    grant = snapshot_of(dm(0), dm(1), cdi=mode).allocate(["set-0"])
    assert (len(grant.devices), len(grant.cdi_devices)) == (specs, names)
    # The workload can always tell what it got.
    assert grant.envs == {"PDP_DEVICES": "/dev/dm-0,/dev/dm-1"}


def test_the_naming_follows_the_resource() -> None:
    state = DeviceState(naming=GrantNaming("example.com/disks"))
    state.update(ScanResult((dm(0),)), config_of(include_devices=["/dev/dm-*"], cdi="both"))
    grant = state.current().allocate(["set-0"])
    assert grant.cdi_devices == ("example.com/disks=all",)
    assert grant.annotations == {"example.com/disks-devices": "/dev/dm-0"}


def test_spec_devices_are_one_per_healthy_device_plus_all_in_all_mode() -> None:
    snapshot = snapshot_of(dm(0), dm(1), dm(2, problem="dm/suspended is 1"), permissions="r")
    devices = snapshot.cdi_spec_devices()
    assert [d.name for d in devices] == [
        device_id_for("/dev/dm-0"),
        device_id_for("/dev/dm-1"),
        "all",
    ]
    assert [(n.host_path, n.major, n.minor, n.permissions) for n in devices[-1].nodes] == [
        ("/dev/dm-0", 252, 0, "r"),
        ("/dev/dm-1", 252, 1, "r"),
    ]
    per_device = snapshot_of(dm(0), grant_mode="per-device").cdi_spec_devices()
    assert [d.name for d in per_device] == [device_id_for("/dev/dm-0")]
    assert snapshot_of(dm(0), cdi="off").cdi_spec_devices() == ()


def test_every_name_a_grant_gives_is_a_device_of_the_written_spec(tmp_path: Path) -> None:
    for mode in ("all", "per-device"):
        snapshot = snapshot_of(
            dm(0), dm(1), grant_mode=mode, device_owner={"uid": 1000, "gid": 1000, "mode": "0660"}
        )
        spec_writer(tmp_path)(snapshot)
        spec = json.loads((tmp_path / cdi.spec_file_name(KIND)).read_text())
        jsonschema.validate(spec, SCHEMA)
        in_spec = {f"{spec['kind']}={d['name']}" for d in spec["devices"]}
        for unit in snapshot.devices:
            assert set(snapshot.allocate([unit.id]).cdi_devices) <= in_spec
        node = spec["devices"][0]["containerEdits"]["deviceNodes"][0]
        assert (node["uid"], node["gid"], node["fileMode"]) == (1000, 1000, 0o660)


def test_the_spec_is_written_before_the_snapshot_that_names_it_is_published(
    tmp_path: Path,
) -> None:
    seen_at_write: list[int] = []
    state: DeviceState

    def writer(snapshot: DeviceSnapshot) -> None:
        # What Allocate answers from while the spec is written: still the old snapshot.
        seen_at_write.append(len(state.current().records))
        spec_writer(tmp_path)(snapshot)

    state = DeviceState(before_publish=writer)
    state.update(ScanResult((dm(0),)), config_of(include_devices=["/dev/dm-*"], cdi="both"))
    assert seen_at_write == [0]
    assert (tmp_path / cdi.spec_file_name(KIND)).exists()


def test_with_no_healthy_device_or_cdi_off_the_spec_file_is_removed(tmp_path: Path) -> None:
    state = DeviceState(before_publish=spec_writer(tmp_path))
    config = config_of(include_devices=["/dev/dm-*"], cdi="both")
    state.update(ScanResult((dm(0),)), config)
    spec_file = tmp_path / cdi.spec_file_name(KIND)
    assert spec_file.exists()
    state.update(ScanResult(()), config_of(include_devices=["/dev/dm-*"], cdi="off"))
    assert not spec_file.exists()
    state.update(ScanResult((dm(0),)), config)
    assert spec_file.exists()
    remove_cdi_spec(tmp_path, KIND)
    assert not spec_file.exists()
    remove_cdi_spec(tmp_path, KIND)  # nothing there: no error


def unwritable(snapshot: DeviceSnapshot) -> None:
    raise OSError(30, "Read-only file system", "/var/run/cdi")


def test_a_spec_that_cannot_be_written_means_device_specs_only_with_cdi_both() -> None:
    state = DeviceState(before_publish=unwritable)
    state.update(ScanResult((dm(0), dm(1))), config_of(include_devices=["/dev/dm-*"], cdi="both"))
    snapshot = state.current()
    grant = snapshot.allocate(["set-0"])
    assert grant.cdi_devices == ()
    assert len(grant.devices) == 2
    assert "CDI spec not written" in state.cdi_problem
    assert "DeviceSpecs only" in snapshot.capped


def test_a_spec_that_cannot_be_written_advertises_nothing_with_cdi_only() -> None:
    state = DeviceState(before_publish=unwritable)
    state.update(ScanResult((dm(0),)), config_of(include_devices=["/dev/dm-*"], cdi="only"))
    assert state.current().devices == ()
    assert "no units" in state.current().capped


def test_a_spec_written_again_brings_the_cdi_names_back(tmp_path: Path) -> None:
    failing = [True]

    def flaky(snapshot: DeviceSnapshot) -> None:
        if failing[0]:
            unwritable(snapshot)
        spec_writer(tmp_path)(snapshot)

    state = DeviceState(before_publish=flaky)
    config = config_of(include_devices=["/dev/dm-*"], cdi="both")
    state.update(ScanResult((dm(0),)), config)
    assert state.current().allocate(["set-0"]).cdi_devices == ()
    failing[0] = False
    state.update(ScanResult((dm(0),)), config)
    assert state.current().allocate(["set-0"]).cdi_devices == (f"{KIND}=all",)
    assert state.cdi_problem == ""
    assert os.listdir(tmp_path) == [cdi.spec_file_name(KIND)]


def test_device_owner_is_validated_like_every_key() -> None:
    from power_device_plugin.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        config_of(device_owner={"uid": "root"})
    assert raised.value.field == "device-owner.uid"
    with pytest.raises(ConfigError) as raised:
        config_of(cdi="sometimes")
    assert raised.value.field == "cdi"
    assert config_of(device_owner={"mode": "0600"}).device_owner == cdi.DeviceOwner(mode=0o600)


# -- the default: a spec only when a grant needs one -----------------------------------

IBM_CONFIG = {"nx-gzip": False, "permissions": "rw", "include-devices": ["/dev/dm-*"]}


@pytest.mark.parametrize("grant_mode", ["all", "per-device"])
def test_an_ibm_format_config_grants_device_specs_without_cdi_names_and_writes_no_spec(
    tmp_path: Path, grant_mode: str
) -> None:
    spec_file = tmp_path / cdi.spec_file_name(KIND)
    spec_file.write_text('{"cdiVersion": "0.5.0", "kind": "' + KIND + '", "devices": []}')
    state = DeviceState(before_publish=spec_writer(tmp_path))
    state.update(ScanResult((dm(0), dm(1))), config_of(**IBM_CONFIG, grant_mode=grant_mode))
    snapshot = state.current()
    explicit_off = snapshot_of(dm(0), dm(1), **IBM_CONFIG, grant_mode=grant_mode, cdi="off")

    for unit in snapshot.devices:
        grant = snapshot.allocate([unit.id])
        # The answer before CDI: DeviceSpecs, the env and the annotation; no CDI name.
        assert grant.cdi_devices == ()
        assert grant.devices
        assert grant == explicit_off.allocate([unit.id])
    assert snapshot.devices == explicit_off.devices
    assert not spec_file.exists()  # and an older spec of ours is gone
    assert state.cdi_problem == ""


def test_a_device_owner_alone_makes_grants_name_cdi_devices_and_writes_the_spec(
    tmp_path: Path,
) -> None:
    state = DeviceState(before_publish=spec_writer(tmp_path))
    state.update(ScanResult((dm(0),)), config_of(**IBM_CONFIG, device_owner={"uid": 1000}))
    grant = state.current().allocate(["set-0"])
    assert grant.cdi_devices == (f"{KIND}=all",)
    assert [d.host_path for d in grant.devices] == ["/dev/dm-0"]  # both: DeviceSpecs too
    spec = json.loads((tmp_path / cdi.spec_file_name(KIND)).read_text())
    assert spec["devices"][0]["containerEdits"]["deviceNodes"][0]["uid"] == 1000
