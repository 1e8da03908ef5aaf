"""The CDI spec keeper: a stale spec removed at start, a spec that cannot be written
shown (problem text, metric) and retried until it can, on real file-system errors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from tests.unit.conftest import config_of
from tests.unit.test_grant_cdi import KIND, dm

from power_device_plugin import cdi
from power_device_plugin.cli import CDI_RETRY_SECONDS, CdiSpecKeeper, RepublishingState
from power_device_plugin.devices import GrantNaming
from power_device_plugin.discovery import ScanResult
from power_device_plugin.metrics import PluginMetrics

OWNER_CONFIG = {"include_devices": ["/dev/dm-*"], "device_owner": {"uid": 1000}}


def stale_spec(directory: Path, devices: int = 3) -> Path:
    """What an earlier run left: our spec naming ``devices`` devices, and a temporary."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / cdi.spec_file_name(KIND)
    owner = cdi.DeviceOwner(uid=1000)
    nodes = [
        cdi.CdiNode(f"/dev/dm-{i}", f"/dev/dm-{i}", "block", 252, i, "rw") for i in range(devices)
    ]
    spec = cdi.build_spec(
        KIND, [cdi.CdiDevice(f"dm-{i}", (n,)) for i, n in enumerate(nodes)], owner
    )
    cdi.write_spec(directory, KIND, spec)
    (directory / f".{path.name}{cdi.TEMP_MARKER}dead").write_text("half")
    return path


def gauge(metrics: PluginMetrics) -> float:
    line = next(
        line
        for line in metrics.exposition().decode().splitlines()
        if line.startswith("pdp_cdi_spec_failing ")
    )
    return float(line.split()[1])


def keeper_and_state(directory: Path) -> tuple[CdiSpecKeeper, RepublishingState, PluginMetrics]:
    metrics = PluginMetrics()
    keeper = CdiSpecKeeper(directory, KIND, metrics)
    state = RepublishingState(GrantNaming(), keeper.write)
    keeper.republish = state.publish_again
    return keeper, state, metrics


def test_a_spec_left_from_an_earlier_run_is_removed_at_start_when_no_config_is_valid(
    tmp_path: Path,
) -> None:
    spec = stale_spec(tmp_path / "cdi")
    other = tmp_path / "cdi" / "vendor.example-gpu.json"
    other.write_text("{}")
    keeper, _, metrics = keeper_and_state(tmp_path / "cdi")

    keeper.clear_stale()  # no scan ran: no valid config

    assert sorted(p.name for p in (tmp_path / "cdi").iterdir()) == [other.name]
    assert not spec.exists()
    assert keeper.problem == ""
    assert gauge(metrics) == 0


def test_a_spec_the_first_scan_rewrote_is_kept_at_start(tmp_path: Path) -> None:
    spec = stale_spec(tmp_path)
    keeper, state, _ = keeper_and_state(tmp_path)
    state.update(ScanResult((dm(0),)), config_of(**OWNER_CONFIG))

    keeper.clear_stale()

    names = [d["name"] for d in json.loads(spec.read_text())["devices"]]
    assert len(names) == 2  # dm-0 and all: this run's list, not the 3 devices left before


def test_a_spec_that_cannot_be_written_is_a_problem_a_metric_and_no_stale_spec(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cdi"
    spec = stale_spec(directory)
    keeper, state, metrics = keeper_and_state(directory)
    # A real failure: the spec's name is taken by a directory (os.replace: EISDIR)...
    spec.unlink()
    spec.mkdir()

    state.update(ScanResult((dm(0),)), config_of(**OWNER_CONFIG))

    assert "CDI spec not kept" in keeper.problem
    assert "Is a directory" in keeper.problem
    assert f"retrying every {CDI_RETRY_SECONDS:g}s" in keeper.problem
    assert gauge(metrics) == 1
    assert state.current().allocate(["set-0"]).cdi_devices == ()

    # ... and once it is free again, one retry brings the spec and the CDI names back.
    spec.rmdir()
    keeper.retry()

    assert keeper.problem == ""
    assert gauge(metrics) == 0
    assert state.current().allocate(["set-0"]).cdi_devices == (f"{KIND}=all",)
    assert spec.is_file()


def test_the_spec_of_the_last_list_is_retried_not_an_older_one(tmp_path: Path) -> None:
    keeper, state, _ = keeper_and_state(tmp_path)
    spec = tmp_path / cdi.spec_file_name(KIND)
    spec.mkdir()
    state.update(ScanResult((dm(0),)), config_of(**OWNER_CONFIG))
    state.update(ScanResult((dm(0), dm(1))), config_of(**OWNER_CONFIG))
    spec.rmdir()

    keeper.retry()

    named = {d["name"] for d in json.loads(spec.read_text())["devices"]}
    assert len(named) == 3  # two devices and all


def test_a_stale_spec_that_cannot_be_removed_is_a_problem_until_it_can(tmp_path: Path) -> None:
    # The CDI dir's path is a regular file: listing it fails (ENOTDIR), as an unmounted
    # or mistyped --cdi-dir would.
    blocked = tmp_path / "cdi"
    blocked.write_text("not a directory")
    keeper, _, metrics = keeper_and_state(blocked)

    keeper.clear_stale()
    assert "Not a directory" in keeper.problem
    assert gauge(metrics) == 1

    blocked.unlink()
    keeper.retry()
    assert keeper.problem == ""
    assert gauge(metrics) == 0


def test_the_retry_thread_brings_the_spec_back_within_two_retry_periods(tmp_path: Path) -> None:
    keeper, state, _ = keeper_and_state(tmp_path)
    spec = tmp_path / cdi.spec_file_name(KIND)
    spec.mkdir()
    state.update(ScanResult((dm(0),)), config_of(**OWNER_CONFIG))
    assert keeper.problem
    stopping = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stopping,), daemon=True)
    thread.start()
    try:
        spec.rmdir()
        freed = time.monotonic()
        while keeper.problem and time.monotonic() - freed < 2 * CDI_RETRY_SECONDS + 1:
            time.sleep(0.02)
        took = time.monotonic() - freed
        assert keeper.problem == ""
        assert took <= 2 * CDI_RETRY_SECONDS
        assert spec.is_file()
    finally:
        stopping.set()
        keeper.stop()
        thread.join(timeout=2)
    assert not thread.is_alive()


def test_an_idle_keeper_thread_stops_at_once(tmp_path: Path) -> None:
    keeper, _, _ = keeper_and_state(tmp_path)
    stopping = threading.Event()
    thread = threading.Thread(target=keeper.run, args=(stopping,), daemon=True)
    thread.start()
    stopping.set()
    keeper.stop()
    thread.join(timeout=1)
    assert not thread.is_alive()


@pytest.mark.parametrize("mode", ["off", "both"])
def test_a_failing_removal_under_cdi_off_is_a_problem_too(tmp_path: Path, mode: str) -> None:
    blocked = tmp_path / "cdi"
    blocked.write_text("not a directory")
    keeper, state, _ = keeper_and_state(blocked)
    state.update(ScanResult(()), config_of(include_devices=["/dev/dm-*"], cdi=mode))
    assert "Not a directory" in keeper.problem
