"""The health endpoint: its serving loop sleeps until a connection or stop(), and its
small HTTP/1.1 responder answers probes and scrapes over real sockets."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


# --- the responder over real sockets -----------------------------------------------------


class _Exposition:
    """Stands in for PluginMetrics: the endpoint calls nothing but exposition()."""

    def __init__(self, text: bytes = b"pdp_example 1\n", error: Exception | None = None) -> None:
        self.text = text
        self.error = error

    def exposition(self) -> bytes:
        if self.error is not None:
            raise self.error
        return self.text


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse(raw: bytes) -> _Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {raw!r}"
    status_line, *fields = head.decode("ascii").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = dict(f.split(": ", 1) for f in fields)
    return _Response(int(status), headers, body)


def _read_to_close(connection: socket.socket) -> bytes:
    connection.settimeout(5)
    chunks = []
    while chunk := connection.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _exchange(port: int, *parts: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``parts`` (pausing between them), read the reply until the server closes."""
    with socket.create_connection((host, port), timeout=5) as connection:
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.05)
            connection.sendall(part)
        return _read_to_close(connection)


def _get_raw(port: int, target: str, method: str = "GET") -> _Response:
    return _parse(_exchange(port, f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))


@contextmanager
def _serving(
    probes: Probes | None = None,
    metrics: object = None,
    listen: str = "127.0.0.1:0",
    **bounds: float,
) -> Iterator[HealthServer]:
    server = HealthServer(
        parse_listen(listen),
        probes or Probes(not_ready=lambda: None),
        metrics or _Exposition(),  # type: ignore[arg-type]
        **bounds,  # type: ignore[arg-type]
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _closed_by_server(connection: socket.socket) -> bool:
    connection.settimeout(5)
    try:
        return connection.recv(100) == b""
    except ConnectionResetError:
        return True


def test_every_reply_says_its_type_and_length_and_that_the_connection_closes() -> None:
    with _serving() as server:
        reply = _get_raw(server.port, "/healthz")
    assert reply.status == 200
    assert reply.body == b"ok\n"
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert reply.headers["Content-Length"] == "3"
    assert reply.headers["Connection"] == "close"


@pytest.mark.parametrize(
    ("target", "status", "body"),
    [
        ("/healthz?verbose=1", 200, b"ok\n"),
        ("/readyz?x", 200, b"ready\n"),
        ("/", 404, b"not found: try /healthz, /readyz or /metrics\n"),
        ("/healthz/", 404, b"not found: try /healthz, /readyz or /metrics\n"),
    ],
)
def test_paths_are_matched_exactly_and_query_strings_are_ignored(
    target: str, status: int, body: bytes
) -> None:
    with _serving() as server:
        reply = _get_raw(server.port, target)
    assert (reply.status, reply.body) == (status, body)


def test_metrics_serves_the_exposition_as_prometheus_text() -> None:
    with _serving(metrics=_Exposition(b"pdp_devices 2\n")) as server:
        reply = _get_raw(server.port, "/metrics")
    assert (reply.status, reply.body) == (200, b"pdp_devices 2\n")
    assert reply.headers["Content-Type"] == health.PROMETHEUS_CONTENT_TYPE


def test_not_live_and_not_ready_answer_503_with_the_reason() -> None:
    probes = Probes(not_ready=lambda: "no config", not_live=lambda: "watcher stuck")
    with _serving(probes) as server:
        assert _get_raw(server.port, "/healthz").body == b"unhealthy: watcher stuck\n"
        reply = _get_raw(server.port, "/readyz")
    assert (reply.status, reply.body) == (503, b"not ready: no config\n")


def test_head_gets_the_headers_of_get_without_the_body() -> None:
    with _serving() as server:
        raw = _exchange(server.port, b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = _parse(raw)
    assert reply.status == 200
    assert reply.headers["Content-Length"] == str(len(b"ready\n"))
    assert reply.body == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get"])
def test_other_methods_get_405_naming_the_allowed_ones(method: str) -> None:
    with _serving() as server:
        reply = _get_raw(server.port, "/healthz", method=method)
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD"
    assert reply.headers["Connection"] == "close"


@pytest.mark.parametrize(
    "request_head",
    [
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1 extra\r\n\r\n",
        b"GET /healthz HTTQ/1.1\r\n\r\n",
        b"GET /h\xc3\xa9 HTTP/1.1\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_a_malformed_request_line_gets_400(request_head: bytes) -> None:
    with _serving() as server:
        reply = _parse(_exchange(server.port, request_head))
    assert reply.status == 400
    assert reply.body.startswith(b"bad request")


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9", "HTTP/1.2"])
def test_an_unsupported_http_version_gets_505(version: str) -> None:
    with _serving() as server:
        reply = _parse(_exchange(server.port, f"GET /healthz {version}\r\n\r\n".encode()))
    assert reply.status == 505


def test_http_1_0_is_served() -> None:
    with _serving() as server:
        reply = _parse(_exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert (reply.status, reply.body) == (200, b"ok\n")


def _head_of_length(length: int) -> bytes:
    start, end = b"GET /healthz HTTP/1.1\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (length - len(start) - len(end)) + end


def test_a_request_head_of_the_largest_size_is_served() -> None:
    with _serving() as server:
        reply = _parse(_exchange(server.port, _head_of_length(health.MAX_REQUEST_HEAD_BYTES)))
    assert reply.status == 200


@pytest.mark.parametrize(
    "request_head",
    [
        _head_of_length(health.MAX_REQUEST_HEAD_BYTES + 1),
        # No end of headers at all: the server stops reading at its bound.
        b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * health.MAX_REQUEST_HEAD_BYTES,
    ],
)
def test_an_over_long_request_head_gets_431(request_head: bytes) -> None:
    with _serving() as server:
        reply = _parse(_exchange(server.port, request_head))
    assert reply.status == 431


def test_a_request_sent_in_pieces_within_the_deadline_is_answered() -> None:
    pieces = (b"GE", b"T /read", b"yz HTTP/1.1\r", b"\nHost: x\r\n", b"\r", b"\n")
    with _serving() as server:
        reply = _parse(_exchange(server.port, *pieces))
    assert (reply.status, reply.body) == (200, b"ready\n")


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    with _serving(timeout=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as silent:
            assert _closed_by_server(silent)
        assert _get_raw(server.port, "/healthz").status == 200


def test_a_connection_that_stops_halfway_is_closed_after_the_timeout() -> None:
    with _serving(timeout=0.3) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as halfway:
            halfway.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert _closed_by_server(halfway)
        assert _get_raw(server.port, "/readyz").status == 200


def test_beyond_max_connections_the_oldest_idle_one_is_closed_and_the_new_one_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _serving(max_connections=2, timeout=30.0, head_timeout=30.0) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        try:
            for i in range(3):
                # Connections are accepted in the order they were made: the oldest goes.
                assert _get_raw(server.port, "/healthz").status == 200
                assert _closed_by_server(held[i])
                held.append(socket.create_connection(("127.0.0.1", server.port)))
            for connection in held[3:]:
                connection.sendall(b"GET /readyz HTTP/1.1\r\n\r\n")
                assert _parse(_read_to_close(connection)).status == 200
        finally:
            for connection in held:
                connection.close()
    # Said once, not once per connection: an attack must not flood the log.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("health endpoint: closed 1 connection(s) to make room")


def _raise() -> str | None:
    raise RuntimeError("probe broke")


def test_a_raising_probe_gets_500_and_the_next_request_is_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with _serving(Probes(not_ready=_raise)) as server:
        reply = _get_raw(server.port, "/readyz")
        assert reply.status == 500
        assert b"/readyz" in reply.body
        assert _get_raw(server.port, "/healthz").status == 200
    assert any(r.exc_info and "probe broke" in str(r.exc_info[1]) for r in caplog.records)


def test_a_raising_exposition_gets_500_and_the_next_request_is_served() -> None:
    with _serving(metrics=_Exposition(error=ValueError("no registry"))) as server:
        assert _get_raw(server.port, "/metrics").status == 500
        assert _get_raw(server.port, "/readyz").status == 200


def test_requests_are_logged_at_debug_and_never_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=health.__name__)
    with _serving() as server:
        _get_raw(server.port, "/healthz?x=1")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == health.__name__]
    assert (logging.DEBUG, "http GET /healthz?x=1 200") in messages
    assert all(level < logging.INFO for level, _ in messages)


def test_ipv6_loopback_is_served() -> None:
    try:
        server = HealthServer(
            parse_listen("[::1]:0"),
            Probes(not_ready=lambda: None),
            _Exposition(),  # type: ignore[arg-type]
        )
    except OSError as error:
        pytest.skip(f"this host has no IPv6 loopback to listen on: {error}")
    server.start()
    try:
        raw = _exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n", host="::1")
    finally:
        server.stop()
    assert _parse(raw).body == b"ready\n"


def test_stop_closes_the_connections_still_open() -> None:
    server = HealthServer(
        parse_listen("127.0.0.1:0"),
        Probes(not_ready=lambda: None),
        _Exposition(),  # type: ignore[arg-type]
        timeout=3600.0,
        head_timeout=3600.0,
    )
    server.start()
    idle = socket.create_connection(("127.0.0.1", server.port))
    halfway = socket.create_connection(("127.0.0.1", server.port))
    try:
        halfway.sendall(b"GET /healthz HTTP/1.1\r\n")
        # Accepted in order: once a later connection is answered, both are the loop's.
        assert _get_raw(server.port, "/healthz").status == 200
        server.stop()
        assert not server._thread.is_alive()
        assert _closed_by_server(idle)
        assert _closed_by_server(halfway)
    finally:
        idle.close()
        halfway.close()
        server.stop()


def test_importing_the_module_brings_in_no_http_server_machinery() -> None:
    # prometheus_client (imported by the metrics module) pulls in http.server itself;
    # a stand-in metrics module keeps this test about what health imports.
    script = """
import sys, types
stub = types.ModuleType("power_device_plugin.metrics")
class PluginMetrics:
    def exposition(self):
        return b""
stub.PluginMetrics = PluginMetrics
sys.modules["power_device_plugin.metrics"] = stub
before = set(sys.modules)
import power_device_plugin.health
print("\\n".join(sorted(set(sys.modules) - before)))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(result.stdout.split())
    assert "power_device_plugin.health" in loaded
    forbidden = ("http.server", "socketserver", "http.client", "email")
    assert not [m for m in loaded if m in forbidden or m.startswith("email.")]


# --- the pure parts ----------------------------------------------------------------------


def test_a_request_line_is_parsed_into_method_and_target() -> None:
    request = health.parse_request_line(b"GET /metrics?name=x HTTP/1.1")
    assert request == health.Request("GET", "/metrics?name=x")
    assert isinstance(request, health.Request)
    assert request.path == "/metrics"


def test_an_encoded_reply_has_its_status_line_headers_and_body() -> None:
    reply = health.Reply(405, b"no\n", allow="GET, HEAD")
    assert reply.encode(now=784111777.0) == (
        b"HTTP/1.1 405 Method Not Allowed\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 3\r\n"
        b"Connection: close\r\n"
        b"Allow: GET, HEAD\r\n"
        b"\r\n"
        b"no\n"
    )


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: kube-probe/1.32\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n",
        b"\r\nHEAD http://node.example:8080/metrics?name=x HTTP/1.0\r\n\r\n",
        b"\nGET /readyz HTTP/1.1\nHost: x\n\n",
    ],
)
def test_no_start_of_a_valid_head_is_refused_and_the_whole_head_is_the_request(
    head: bytes,
) -> None:
    # A client may send its head a byte at a time: no prefix may earn an early 400.
    for length in range(len(head)):
        assert health.read_head(head[:length]) is None, head[:length]
    request = health.read_head(head)
    assert isinstance(request, health.Request)
    assert request.method in ("GET", "HEAD")


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/healthz", "/healthz"),
        ("/metrics?name=x", "/metrics"),
        ("http://node:8080/healthz", "/healthz"),
        ("HTTPS://node/readyz?x=1", "/readyz"),
        ("http://[::1]:8080/metrics", "/metrics"),
        ("http://node", "/"),
        ("http://node?x", "/"),
        ("http://node//healthz", "//healthz"),
        ("ftp://node/healthz", "ftp://node/healthz"),
    ],
)
def test_the_path_of_origin_and_absolute_form_targets(target: str, path: str) -> None:
    assert health.Request("GET", target).path == path
