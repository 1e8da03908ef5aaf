"""The lifecycle and the ListAndWatch streams in process, with every periodic check
pushed out of reach: what happens here happens because of a notification or
because an RPC ended, not because a poll came round."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tests.integration.kubelet_stub import KubeletStub

from power_device_plugin import lifecycle, server
from power_device_plugin.api import pb, rpc
from power_device_plugin.devices import DeviceState
from power_device_plugin.lifecycle import Endpoint, PluginLifecycle
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.notify import WakingEvent
from power_device_plugin.server import DevicePluginServicer, ServingLoop

AN_HOUR = 3600.0


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def no_periodic_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "POLL_SECONDS", AN_HOUR)
    monkeypatch.setattr(lifecycle, "SAFETY_POLL_SECONDS", AN_HOUR)
    monkeypatch.setattr(server, "STREAM_WAKE_SECONDS", AN_HOUR)


@pytest.fixture
def running_plugin(
    tmp_path: Path, no_periodic_checks: None
) -> Iterator[tuple[PluginLifecycle, KubeletStub, DeviceState]]:
    plugin_dir = tmp_path / "device-plugins"
    state = DeviceState()
    stopping = WakingEvent()
    metrics = PluginMetrics()
    servicer = DevicePluginServicer(state, metrics, stopping)
    endpoint = Endpoint(plugin_dir, "pdp.sock", "power-dev-plugin/dev")
    with KubeletStub(plugin_dir) as kubelet:
        plugin = PluginLifecycle(endpoint, servicer, metrics, stopping)
        thread = threading.Thread(target=plugin.run)
        thread.start()
        try:
            yield plugin, kubelet, state
        finally:
            stopping.set()
            state.close_subscriptions()
            thread.join(10.0)
    assert not thread.is_alive(), "the lifecycle did not stop when asked"


def test_a_kubelet_restart_is_noticed_through_the_plugin_directory(
    running_plugin: tuple[PluginLifecycle, KubeletStub, DeviceState],
) -> None:
    plugin, kubelet, _ = running_plugin
    kubelet.wait_for_registration(1, timeout=10.0)
    assert plugin.waiting_by == "inotify"
    for restart in range(3):
        # Restart only once the stand-in holds its stream, as a kubelet would.
        assert _until(lambda: kubelet.latest_connection().lists != [])
        kubelet.restart()
        kubelet.wait_for_registration(restart + 2, timeout=10.0)


def test_the_old_stream_ends_when_the_kubelet_restarts(
    running_plugin: tuple[PluginLifecycle, KubeletStub, DeviceState],
) -> None:
    plugin, kubelet, _ = running_plugin
    kubelet.wait_for_registration(1, timeout=10.0)
    assert _until(lambda: plugin._servicer.streams.open == 1)
    kubelet.restart()
    kubelet.wait_for_registration(2, timeout=10.0)
    # One stream: the new kubelet's. The old one ended with its server, not left waiting.
    assert _until(lambda: plugin.ready() and plugin._servicer.streams.open == 1)
    assert _until(lambda: kubelet.latest_connection().lists != [])


def test_a_cancelled_stream_is_closed_at_once(tmp_path: Path, no_periodic_checks: None) -> None:
    state = DeviceState()
    servicer = DevicePluginServicer(state, PluginMetrics(), threading.Event())
    serving = ServingLoop(servicer)
    socket = tmp_path / "plugin.sock"
    serving.serve(f"unix://{socket}")
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.ListAndWatch(pb.Empty())
            next(stream)
            assert _until(lambda: servicer.streams.open == 1)
            stream.cancel()
            # STREAM_WAKE_SECONDS is an hour: only the RPC's end can close it.
            assert _until(lambda: servicer.streams.open == 0)
    finally:
        serving.stop(0)
        serving.close()
    # One subscription was the serving loop's own feed; closing it ends it.
    assert state.subscriber_count() == 0


def _failed_registrations(plugin: PluginLifecycle) -> float:
    return plugin._metrics.registrations.labels(result="failed").samples()[0][2]


def test_a_kubelet_that_stops_is_logged_as_stopped_and_one_outage_is_one_failure(
    running_plugin: tuple[PluginLifecycle, KubeletStub, DeviceState],
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin, kubelet, _ = running_plugin
    kubelet.wait_for_registration(1, timeout=10.0)
    assert _until(lambda: plugin.ready())
    with caplog.at_level("DEBUG", logger="power_device_plugin.lifecycle"):
        kubelet.stop()  # kubelet.sock removed, not recreated
        assert _until(lambda: "kubelet stopped" in caplog.text)
        # Three seconds of outage: several attempts (0.1, 0.2, 0.4, 0.8, 1.6 s apart).
        time.sleep(3.0)
        kubelet.start()
        kubelet.wait_for_registration(2, timeout=10.0)
        assert _until(lambda: "failed attempts in" in caplog.text)
    assert "recreated" not in caplog.text
    attempts = caplog.text.count("kubelet not reachable")
    assert attempts >= 3
    warnings = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "reachable" in r.msg
    ]
    assert len(warnings) == 1, warnings
    assert _failed_registrations(plugin) == 1
    assert f"after {attempts} failed attempts in" in caplog.text
