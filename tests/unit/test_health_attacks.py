"""The health endpoint against hostile and odd clients (issue 18): a probe is answered
within a second while slowloris clients come and go, with threads, descriptors and
RSS bounded; heads that can never become a request are answered at once; the
absolute form and a leading empty line are accepted as RFC 9112 says. Real sockets,
127.0.0.1 only."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from tests.unit.http_attack import (
    LOOPBACK,
    Answer,
    attacking,
    probe,
    process_stats,
    serving_process,
)

from power_device_plugin import health
from power_device_plugin.health import HealthServer, Probes, parse_listen

# The DaemonSet's probes time out after 2 s; issue 18 asks for an answer within 1 s.
PROBE_DEADLINE_SECONDS = 1.0


class _Exposition:
    def __init__(self, text: bytes = b"pdp_example 1\n") -> None:
        self.text = text

    def exposition(self) -> bytes:
        return self.text


@contextmanager
def _serving(metrics: _Exposition | None = None, **bounds: float) -> Iterator[HealthServer]:
    server = HealthServer(
        parse_listen(f"{LOOPBACK}:0"),
        Probes(not_ready=lambda: None),
        metrics or _Exposition(),  # type: ignore[arg-type]
        **bounds,  # type: ignore[arg-type]
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _send_and_wait(port: int, data: bytes, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``data``, send nothing more, and read until the server closes: what came
    back and how long the server took to close."""
    start = time.monotonic()
    chunks = []
    with socket.create_connection((LOOPBACK, port), timeout=wait) as connection:
        connection.sendall(data)
        try:
            while chunk := connection.recv(4096):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail(f"{data[:40]!r}: the server held the connection for {wait}s")
    return b"".join(chunks), time.monotonic() - start


def _status(raw: bytes) -> int | None:
    return int(raw[9:12]) if raw.startswith(b"HTTP/1.1 ") else None


# --- slowloris ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("attackers", [8, 16, 100, 1000])
def test_a_probe_is_answered_within_a_second_while_slow_clients_hold_and_retake_connections(
    attackers: int,
) -> None:
    with serving_process() as served:
        assert probe(served.port).status == 200
        before = process_stats(served.pid)
        with attacking(served.port, attackers):
            time.sleep(1.5)  # every attacker connected, the first ones sending
            answers: list[Answer] = []
            peak = before
            for _ in range(6):
                answers.append(probe(served.port))
                now = process_stats(served.pid)
                peak = max(peak, now, key=lambda s: s.fds)
                time.sleep(0.2)
            during = process_stats(served.pid)
    assert [a.status for a in answers] == [200] * len(answers), answers
    slowest = max(a.seconds for a in answers)
    assert slowest <= PROBE_DEADLINE_SECONDS, answers
    # One serving thread, as before the attack; one descriptor per held connection
    # (and one accepted before another is closed to make room); buffers bounded.
    assert during.threads == before.threads
    assert peak.fds <= before.fds + health.MAX_CONNECTIONS + 1
    assert during.rss_kib - before.rss_kib < 4096, (before, during)


# --- heads that can never become a request -----------------------------------------------


def _client_hello() -> bytes:
    """The first flight of a real TLS client: its ClientHello record."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a handshake record
    return hello


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /healthz HTTP/1.1\rHost: x\r\r", id="CR-only line ends"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\ry: z\r\n\r\n", id="bare CR in a field"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="start of TLS record"),
        pytest.param(b"\x00\x01\x02 garbage", id="binary, no line end"),
        pytest.param(b"GET /healthz HTTQ", id="not HTTP, no line end"),
        pytest.param(b"GET  /healthz", id="two spaces, no line end"),
        pytest.param(b"GET /healthz HTTP/1.1 extra\r\nHost: x\r\n", id="bad line, fields open"),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", id="SSH banner"),
        pytest.param(b"\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n", id="two empty lines first"),
    ],
)
def test_a_head_that_can_never_be_a_request_is_answered_400_at_once(head: bytes) -> None:
    with _serving() as server:
        raw, seconds = _send_and_wait(server.port, head)
    assert _status(raw) == 400, raw
    assert seconds < PROBE_DEADLINE_SECONDS


def test_a_tls_client_hello_is_answered_400_at_once() -> None:
    with _serving() as server:
        raw, seconds = _send_and_wait(server.port, _client_hello())
    assert _status(raw) == 400, raw
    assert seconds < PROBE_DEADLINE_SECONDS


def test_a_tls_client_is_refused_at_once_rather_than_left_waiting() -> None:
    # What a scraper configured for https sees: a failed handshake, not a 5 s stall.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with _serving() as server:
        start = time.monotonic()
        connection = socket.create_connection((LOOPBACK, server.port), timeout=5)
        with connection, pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(connection, server_hostname="localhost")
        assert time.monotonic() - start < PROBE_DEADLINE_SECONDS


# --- RFC 9112 leniency -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status", "body"),
    [
        pytest.param(b"GET /healthz HTTP/1.1\nHost: x\n\n", 200, b"ok\n", id="LF-only"),
        pytest.param(b"GET /readyz HTTP/1.0\n\n", 200, b"ready\n", id="LF-only, no fields"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n", 200, b"ok\n", id="mixed ends"),
        pytest.param(b"\r\nGET /healthz HTTP/1.1\r\n\r\n", 200, b"ok\n", id="leading CRLF"),
        pytest.param(b"\nGET /readyz HTTP/1.1\n\n", 200, b"ready\n", id="leading LF"),
        pytest.param(
            b"GET http://127.0.0.1:8080/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
            b"ok\n",
            id="absolute form",
        ),
        pytest.param(
            b"GET HTTP://node.example/readyz?verbose HTTP/1.1\r\n\r\n",
            200,
            b"ready\n",
            id="absolute form, scheme in capitals, query",
        ),
        pytest.param(
            b"GET https://[::1]:8080/metrics HTTP/1.1\r\n\r\n",
            200,
            b"pdp_example 1\n",
            id="absolute form, https, IPv6 authority",
        ),
        pytest.param(
            b"GET http://node.example HTTP/1.1\r\n\r\n",
            404,
            b"not found: try /healthz, /readyz or /metrics\n",
            id="absolute form, empty path is /",
        ),
        pytest.param(
            b"GET http://node.example//healthz HTTP/1.1\r\n\r\n",
            404,
            b"not found: try /healthz, /readyz or /metrics\n",
            id="absolute form, path kept as sent",
        ),
    ],
)
def test_lf_line_ends_a_leading_empty_line_and_the_absolute_form_are_served(
    head: bytes, status: int, body: bytes
) -> None:
    with _serving() as server:
        raw, seconds = _send_and_wait(server.port, head)
    assert _status(raw) == status, raw
    assert raw.partition(b"\r\n\r\n")[2] == body
    assert seconds < PROBE_DEADLINE_SECONDS


# --- the connection table ----------------------------------------------------------------


def test_a_head_not_complete_within_the_head_timeout_frees_its_slot_before_the_whole_timeout() -> (
    None
):
    with _serving(head_timeout=0.3, timeout=30.0) as server:
        raw, seconds = _send_and_wait(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert raw == b""
    assert 0.2 < seconds < 5.0


def _closed(connection: socket.socket) -> bool:
    try:
        return connection.recv(4096) == b""
    except ConnectionResetError:
        return True


def _slow_client(port: int) -> socket.socket:
    connection = socket.create_connection((LOOPBACK, port), timeout=5)
    connection.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    return connection


def test_a_full_table_makes_room_for_a_probe_by_closing_its_oldest_slow_connection() -> None:
    with _serving(max_connections=4, timeout=30.0, head_timeout=30.0) as server:
        slow = [_slow_client(server.port) for _ in range(4)]
        try:
            # Every slot is held: each probe pushes out the oldest slow client.
            for oldest in range(2):
                assert probe(server.port).status == 200
                assert _closed(slow[oldest])
                slow.append(_slow_client(server.port))  # the table is full again
            # The younger slow clients kept their slots, and are served when done.
            for held in slow[2:]:
                held.sendall(b"a\r\n\r\n")
                assert _status(held.recv(4096)) == 200
        finally:
            for connection in slow:
                connection.close()


def _slow_reader(port: int) -> socket.socket:
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.settimeout(5)
    connection.connect((LOOPBACK, port))
    connection.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    return connection


def test_when_every_slot_holds_a_reply_nobody_reads_the_oldest_makes_room_for_a_probe() -> None:
    # A reply larger than the kernel's buffers: the server holds it until it is read.
    body = b"pdp_padding 1\n" * (1 << 20)
    with _serving(_Exposition(body), max_connections=2, timeout=30.0) as server:
        readers = [_slow_reader(server.port) for _ in range(2)]
        try:
            time.sleep(0.3)  # both requests read and their replies started
            assert probe(server.port).status == 200
            taken = []
            for reader in readers:
                chunks = []
                with contextlib.suppress(ConnectionResetError):
                    while chunk := reader.recv(1 << 16):
                        chunks.append(chunk)
                taken.append(b"".join(chunks).partition(b"\r\n\r\n")[2])
            assert len(taken[0]) < len(body)  # the oldest was cut off
            assert taken[1] == body  # the younger one kept its slot and got it all
        finally:
            for reader in readers:
                reader.close()
