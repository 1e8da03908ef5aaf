"""The health endpoint's serving loop: it sleeps until a connection or stop()."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from power_device_plugin import health
from power_device_plugin.health import HealthServer, Probes, parse_listen
from power_device_plugin.metrics import PluginMetrics


def _server() -> HealthServer:
    return HealthServer(
        parse_listen("127.0.0.1:0"), Probes(not_ready=lambda: None), PluginMetrics()
    )


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.timeout(60)
def test_stop_wakes_the_idle_loop_without_waiting_for_the_safety_poll(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With the safety poll an hour away, only stop()'s wake-up can end the loop in time.
    monkeypatch.setattr(health, "SHUTDOWN_POLL_SECONDS", 3600.0)
    server = _server()
    server.start()
    port = server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
        assert reply.read() == b"ready\n"
    server.stop()
    assert not server._thread.is_alive()
    assert _refused(port)


def test_requests_are_served_one_after_another_between_idle_waits() -> None:
    server = _server()
    server.start()
    try:
        for path, body in (("/healthz", b"ok\n"), ("/readyz", b"ready\n"), ("/healthz", b"ok\n")):
            with urllib.request.urlopen(
                f"http://127.0.0.1:{server.port}{path}", timeout=5
            ) as reply:
                assert reply.read() == body
    finally:
        server.stop()


def test_a_server_never_started_stops_at_once_and_closes_its_port() -> None:
    server = _server()
    port = server.port
    server.stop()
    assert _refused(port)


def test_stopping_twice_is_harmless() -> None:
    server = _server()
    server.start()
    server.stop()
    server.stop()
    assert not server._thread.is_alive()
