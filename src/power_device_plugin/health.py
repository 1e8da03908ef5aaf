"""The HTTP endpoint on `--listen`: `/healthz`, `/readyz` and `/metrics`.

`/healthz` fails (503, naming the loop) when the kubelet lifecycle loop or the
device watcher has not made progress for `STALL_SECONDS`: each beats a
:class:`Heartbeat` once per round. `/readyz` is ready only when a valid config
has been read, the plugin is registered with the kubelet and the kubelet holds
a ListAndWatch stream open; otherwise its body says which is missing.

The endpoint is reachable by anything on the pod network, so it is bounded: a
connection that has not sent its request and taken its reply within
`CONNECTION_TIMEOUT_SECONDS` is closed, and beyond `MAX_CONNECTIONS` at once a
connection gets `BUSY_REPLY` (503) and is closed.

How it serves, and why. The standard library's ``http.server`` (with
``socketserver``, ``http.client`` and ``email``) costs 1.3 MiB of RSS and about
18 ms of start-up, and a thread per connection, to answer three GET paths. This
module answers them itself, from ONE daemon thread: a non-blocking selector
loop over the listening socket, a wake pipe (`stop()` writes a byte to it) and
at most ``max_connections`` client connections, each with a read buffer, a
write buffer and a deadline (accept time + ``timeout``). It speaks a small
subset of HTTP/1.1, which is all a kubelet probe or a Prometheus scrape needs:

- The request head is read up to its blank line, at most
  `MAX_REQUEST_HEAD_BYTES` (beyond: 431). The request line must be
  ``METHOD SP target SP HTTP/x.y`` (else 400); HTTP/1.0 and HTTP/1.1 only
  (else 505); GET and HEAD only (else 405 with ``Allow: GET, HEAD``). Header
  fields and request bodies are not looked at: no path depends on them. The
  query string is ignored.
- Every reply carries Content-Type, Content-Length and ``Connection: close``,
  and the connection is closed once the reply is written. Without keep-alive a
  connection's whole life fits one deadline and the loop keeps no state per
  request beyond the two buffers; probes and scrapers open a new connection
  each time anyway.
- The probes and the exposition run on the serving thread: they are in-memory
  reads. One raising is logged and answered 500; the loop serves on.
- The loop sleeps until a socket is ready or the nearest connection deadline,
  never longer than `SHUTDOWN_POLL_SECONDS` (the safety net of the stop flag);
  with no connection open, nothing but that safety net wakes it.
- Requests are logged at debug level only: probes come every few seconds.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only the type: the endpoint calls nothing but `exposition()` on it.
    from power_device_plugin.metrics import PluginMetrics

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
# stop() wakes the idle HTTP loop at once (a byte on a pipe); this is only the safety
# net, how often the loop looks at the stop flag on its own. Nothing else wakes an idle loop.
SHUTDOWN_POLL_SECONDS = 5.0
# A probe or a scrape is one short request; anything slower is a stuck or hostile client.
CONNECTION_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 8
# A probe's head is a few hundred bytes; 8 KiB is the usual bound of HTTP servers.
MAX_REQUEST_HEAD_BYTES = 8192
# Both loops go round at least every few seconds (the longest wait is the kubelet
# registration backoff, 5 s, plus a 3 s Register timeout); a minute without a
# round means a loop is stuck, and the kubelet should restart the container.
STALL_SECONDS = 60.0
BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections, try again\n"
)
ALLOWED_METHODS = ("GET", "HEAD")
SERVED_VERSIONS = ("HTTP/1.0", "HTTP/1.1")

# Connections the kernel may hold completed before the loop accepts them.
_LISTEN_BACKLOG = 16
# Accepts per wake-up: a flood of connections cannot keep the loop from serving the rest.
_ACCEPTS_PER_ROUND = 64
_RECV_BYTES = 4096
_HEAD_END = b"\r\n\r\n"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
# RFC 9110 token characters; a target is visible ASCII (no space, no control).
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Heartbeat:
    """When a loop last went round; the clock is injectable for tests."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last


def stalled(heartbeats: Sequence[Heartbeat], bound: float = STALL_SECONDS) -> str | None:
    """Which loops made no progress within ``bound`` seconds, in words; None if all did."""
    late = [
        f"{h.name} has made no progress for {h.age():.0f}s" for h in heartbeats if h.age() > bound
    ]
    return "; ".join(late) if late else None


@dataclass(frozen=True)
class ListenAddress:
    """Where the endpoint listens; an empty host means every address."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """Parse `[host]:port` (`:8080`, `127.0.0.1:9000`, `[::1]:8080`); ValueError says why not."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no port; write [host]:port such as ':8080'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 host in brackets, like '[::1]:8080'")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number from 0 to 65535")
    return ListenAddress(host=host, port=int(port_text))


def _fine() -> str | None:
    return None


@dataclass(frozen=True)
class Probes:
    """What the endpoint asks the plugin: each returns what is wrong, or None when fine."""

    not_ready: Callable[[], str | None]
    not_live: Callable[[], str | None] = field(default=_fine)


@dataclass(frozen=True)
class Request:
    """A parsed request line."""

    method: str
    target: str

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Reply:
    """A status and a body; `encode` makes the bytes sent."""

    status: int
    body: bytes
    content_type: str = TEXT_CONTENT_TYPE
    allow: str = ""
    # A reply to HEAD: the same headers (Content-Length included), no body.
    head_only: bool = False

    def encode(self, now: float | None = None) -> bytes:
        """The status line, the headers and (unless for HEAD) the body."""
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS[self.status]}",
            f"Date: {http_date(time.time() if now is None else now)}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        if self.allow:
            lines.append(f"Allow: {self.allow}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        return head if self.head_only else head + self.body


def http_date(seconds: float) -> str:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` (RFC 9110 IMF-fixdate), whatever the locale."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


BAD_REQUEST = Reply(400, b"bad request: expected a request line like 'GET /healthz HTTP/1.1'\n")
HEAD_TOO_LARGE = Reply(
    431, f"request head too large: at most {MAX_REQUEST_HEAD_BYTES} bytes\n".encode()
)
VERSION_NOT_SUPPORTED = Reply(505, b"HTTP version not supported: use HTTP/1.0 or HTTP/1.1\n")
METHOD_NOT_ALLOWED = Reply(
    405, b"method not allowed: use GET or HEAD\n", allow=", ".join(ALLOWED_METHODS)
)
NOT_FOUND = Reply(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain")


def parse_request_line(line: bytes) -> Request | Reply:
    """The request of ``METHOD SP target SP HTTP/x.y``, or the error reply it earns."""
    try:
        parts = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        return BAD_REQUEST
    if len(parts) != 3:
        return BAD_REQUEST
    method, target, version = parts
    if not (_METHOD.fullmatch(method) and _TARGET.fullmatch(target)):
        return BAD_REQUEST
    if not _VERSION.fullmatch(version):
        return BAD_REQUEST
    if version not in SERVED_VERSIONS:
        return VERSION_NOT_SUPPORTED
    return Request(method, target)


def answer(request: Request, probes: Probes, metrics: PluginMetrics) -> Reply:
    """What the endpoint replies to a well-formed request; 500 if a probe raised."""
    if request.method not in ALLOWED_METHODS:
        return METHOD_NOT_ALLOWED
    try:
        return _route(request.path, probes, metrics)
    except Exception:
        log.exception("answering %s failed; replied 500", request.path)
        return Reply(500, f"internal error answering {request.path}; see the plugin log\n".encode())


def _route(path: str, probes: Probes, metrics: PluginMetrics) -> Reply:
    if path == "/healthz":
        problem = probes.not_live()
        if problem is None:
            return Reply(200, b"ok\n")
        return Reply(503, f"unhealthy: {problem}\n".encode())
    if path == "/readyz":
        problem = probes.not_ready()
        if problem is None:
            return Reply(200, b"ready\n")
        return Reply(503, f"not ready: {problem}\n".encode())
    if path == "/metrics":
        return Reply(200, metrics.exposition(), PROMETHEUS_CONTENT_TYPE)
    return NOT_FOUND


def reply_to(received: bytes, probes: Probes, metrics: PluginMetrics) -> Reply | None:
    """The reply to what a connection sent so far, or None while its request head
    is still incomplete and within bounds."""
    end = received.find(_HEAD_END)
    if end < 0 and len(received) < MAX_REQUEST_HEAD_BYTES:
        return None
    if end < 0 or end + len(_HEAD_END) > MAX_REQUEST_HEAD_BYTES:
        log.debug("http 431 for a request head over %d bytes", MAX_REQUEST_HEAD_BYTES)
        return HEAD_TOO_LARGE
    line = received[: received.find(b"\r\n")]
    request = parse_request_line(line)
    if isinstance(request, Reply):
        log.debug("http %d for request line %.200r", request.status, line)
        return request
    reply = answer(request, probes, metrics)
    log.debug("http %s %.200s %d", request.method, request.target, reply.status)
    return replace(reply, head_only=True) if request.method == "HEAD" else reply


class _Connection:
    """One client: what it sent, what is left to send it, and when it must be done."""

    __slots__ = ("deadline", "outgoing", "received", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.received = bytearray()
        self.outgoing: memoryview | None = None


def _listening_socket(address: ListenAddress) -> socket.socket:
    # An empty host is every IPv4 address, as it always was; `[::]` is every address
    # (IPv6 and, where the host allows, IPv4-mapped too).
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A restarted plugin rebinds at once, over the old connections in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _close_gently(sock: socket.socket) -> None:
    """Close after our last byte: end our side, take what the client already sent
    (closing over unread data would reset the connection, and the client could lose
    the reply), then close. Never blocks."""
    try:
        sock.shutdown(socket.SHUT_WR)
        for _ in range(4):
            if not sock.recv(_RECV_BYTES):
                break
    except OSError:
        pass  # BlockingIOError (nothing more sent) or the client is gone: close anyway
    finally:
        sock.close()


def _refuse_busy(sock: socket.socket) -> None:
    try:
        sock.setblocking(False)
        sock.send(BUSY_REPLY)
    except OSError:
        pass  # best effort: a full buffer or a gone client is not worth waiting for
    _close_gently(sock)


class HealthServer:
    """Serves the three endpoints from one daemon thread until `stop()`."""

    def __init__(
        self,
        address: ListenAddress,
        probes: Probes,
        metrics: PluginMetrics,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = CONNECTION_TIMEOUT_SECONDS,
    ) -> None:
        self._probes = probes
        self._metrics = metrics
        self._max_connections = max_connections
        self._timeout = timeout
        self._listener = _listening_socket(address)
        self._port = int(self._listener.getsockname()[1])
        # Touched by the serving thread only (and by nobody once it has ended).
        self._connections: set[_Connection] = set()
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return self._port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every connection and the socket; returns once the
        serving thread has ended."""
        if self._stopping.is_set():
            return  # stopped already: the pipe's descriptors may belong to others by now
        self._stopping.set()
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    ready = selector.select(self._wait_seconds(time.monotonic()))
                    if self._stopping.is_set():
                        break
                    for key, events in ready:
                        if key.fileobj is self._listener:
                            self._accept(selector)
                        elif isinstance(key.data, _Connection):
                            self._serve_connection(selector, key.data, events)
                    self._close_expired(selector, time.monotonic())
            finally:
                for connection in list(self._connections):
                    self._close(selector, connection)

    def _wait_seconds(self, now: float) -> float:
        # Read at each wait, so a test can move the safety net.
        poll = SHUTDOWN_POLL_SECONDS
        if not self._connections:
            return poll
        nearest = min(connection.deadline for connection in self._connections)
        return max(0.0, min(poll, nearest - now))

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                # Out of descriptors, most likely: the listener stays readable, and the
                # next round tries again once a connection has been closed.
                log.warning("health endpoint: cannot accept a connection: %s", error)
                return
            if len(self._connections) >= self._max_connections:
                _refuse_busy(sock)
                continue
            sock.setblocking(False)
            connection = _Connection(sock, time.monotonic() + self._timeout)
            self._connections.add(connection)
            selector.register(sock, selectors.EVENT_READ, connection)

    def _serve_connection(
        self, selector: selectors.BaseSelector, connection: _Connection, events: int
    ) -> None:
        try:
            if events & selectors.EVENT_READ and connection.outgoing is None:
                self._read(selector, connection)
            elif events & selectors.EVENT_WRITE and connection.outgoing is not None:
                self._write(selector, connection)
        except OSError as error:
            log.debug("http connection dropped: %s", error)
            self._close(selector, connection)
        except Exception:
            # A bug here must cost one connection, never the endpoint.
            log.exception("http connection failed; closed it")
            self._close(selector, connection)

    def _read(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        try:
            chunk = connection.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            self._close(selector, connection)  # gone before its request was complete
            return
        connection.received += chunk
        reply = reply_to(bytes(connection.received), self._probes, self._metrics)
        if reply is None:
            return
        connection.outgoing = memoryview(reply.encode())
        selector.modify(connection.sock, selectors.EVENT_WRITE, connection)
        self._write(selector, connection)  # a reply fits the socket buffer: usually done now

    def _write(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        assert connection.outgoing is not None
        try:
            sent = connection.sock.send(connection.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        connection.outgoing = connection.outgoing[sent:]
        if not connection.outgoing:
            self._close(selector, connection)

    def _close_expired(self, selector: selectors.BaseSelector, now: float) -> None:
        for connection in [c for c in self._connections if c.deadline <= now]:
            log.debug("http connection closed: no request and reply within %.1fs", self._timeout)
            self._close(selector, connection)

    def _close(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        if connection not in self._connections:
            return  # closed already
        self._connections.remove(connection)
        selector.unregister(connection.sock)
        _close_gently(connection.sock)
