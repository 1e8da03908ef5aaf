"""The HTTP endpoint on `--listen`: `/healthz`, `/readyz` and `/metrics`.

`/healthz` fails (503, naming the loop) when the kubelet lifecycle loop or the
device watcher has not made progress for `STALL_SECONDS`: each beats a
:class:`Heartbeat` once per round. `/readyz` is ready only when a valid config
has been read, the plugin is registered with the kubelet and the kubelet holds
a ListAndWatch stream open; otherwise its body says which is missing.

The endpoint is reachable by anything on the pod network, and the kubelet restarts
the plugin when its probes fail, so a probe must get its answer while other
clients hold connections open and take them again. The bounds, and why each:

- At most `MAX_CONNECTIONS` (128) connections are held: file descriptors and
  buffers stay bounded (128 sockets, each with at most ~12 KiB of request and one
  reply: ~1.5 MiB at worst). 128 rather than a handful, because a slow client
  that holds a slot costs nothing but its slot, while one closed to make room
  connects again at once and queues ahead of the probes: up to 128 slow clients
  sit in their slots until the head timeout and cost no CPU at all.
- When the table is full, a new connection is never refused: the oldest held
  connection that has not yet sent a complete request head is closed to make
  room; if every held connection is being answered, the oldest of those goes.
  It is closed outright, with no 503 first: under a flood, writing that reply
  and ending the connection gently cost a third of the CPU of each connection.
  A probe sends its whole head in one write right after connecting, so it is the
  newest connection and is answered before it could become the oldest; a slow
  or silent client is the one that pays. Refusing the newcomer instead (as this
  module did with 8 slots) let 8 clients sending a byte a second fail every probe.
- A connection has `HEAD_TIMEOUT_SECONDS` (2 s) from its accept to complete its
  request head, and `CONNECTION_TIMEOUT_SECONDS` (5 s) for the whole exchange
  (a slow reader of `/metrics`). Legitimate clients need milliseconds for both.
- Each wake-up reads the connections that are ready before it accepts new ones,
  and accepts at most half the table: a connection accepted in one round has the
  whole next round to be read before newer ones could push it out. A connection
  is also read at once when accepted, so a head already sent is answered then.
- The listen backlog is `_LISTEN_BACKLOG` (4096, as Go servers ask for; the
  kernel caps it at `net.core.somaxconn`): when the accept queue is full the
  kernel drops SYNs, and a client retries a dropped SYN only after 1 s, which
  alone would break the 1 s answer under a flood of reconnecting clients. A
  queued connection costs kernel memory, no descriptor of ours.
- A head that cannot become a valid request is answered 400 as soon as it shows:
  the request line is checked byte by byte as it arrives (a TLS ClientHello's
  first byte 0x16, binary, a bare CR, a malformed method, target or version), so
  it holds no slot until a timeout.

How it serves, and why. The standard library's ``http.server`` (with
``socketserver``, ``http.client`` and ``email``) costs 1.3 MiB of RSS and about
18 ms of start-up, and a thread per connection, to answer three GET paths (and a
thread per connection is unbounded under attack). This module answers them
itself, from ONE daemon thread: a non-blocking selector loop over the listening
socket, a wake pipe (`stop()` writes a byte to it) and at most
``max_connections`` client connections, each with a read buffer, a write buffer
and a deadline. It speaks a small subset of HTTP/1.1 (RFC 9112), which is all a
kubelet probe or a Prometheus scrape needs:

- The request head is read up to its empty line, at most
  `MAX_REQUEST_HEAD_BYTES` (beyond: 431). Lines end in CRLF or a bare LF (RFC
  9112 section 2.2 allows a recipient to accept LF alone); a bare CR anywhere
  is 400. One empty line before the request line is ignored (section 2.2); a
  second one is 400. The request line must be ``METHOD SP target SP HTTP/x.y``
  (else 400, answered as soon as the line ends, without waiting for the header
  fields); HTTP/1.0 and HTTP/1.1 only (else 505); GET and HEAD only (else 405
  with ``Allow: GET, HEAD``). The target is the origin form (``/healthz``) or
  the absolute form (``http://host:port/healthz``, which section 3.2.2 says a
  server must accept); its query string is ignored. Header fields and request
  bodies are not looked at: no path depends on them.
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
  Connections closed to make room are logged as a warning at most once a minute,
  with their count: someone is holding connections open without requests.
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
# A client sends its request head in one write right after connecting; 2 s covers a few
# lost packets on a congested network, and is when a slow head's slot is taken back.
HEAD_TIMEOUT_SECONDS = 2.0
# Beyond this, the oldest connection without a complete request head makes room.
# Each costs a descriptor and at most ~12 KiB of buffers.
MAX_CONNECTIONS = 128
# A probe's head is a few hundred bytes; 8 KiB is the usual bound of HTTP servers.
MAX_REQUEST_HEAD_BYTES = 8192
# Both loops go round at least every few seconds (the longest wait is the kubelet
# registration backoff, 5 s, plus a 3 s Register timeout); a minute without a
# round means a loop is stuck, and the kubelet should restart the container.
STALL_SECONDS = 60.0
ALLOWED_METHODS = ("GET", "HEAD")
SERVED_VERSIONS = ("HTTP/1.0", "HTTP/1.1")

# Connections the kernel may hold completed before the loop accepts them. A full queue
# drops SYNs, which clients retry only after 1 s: keep it deeper than any flood we answer.
# The kernel caps it at net.core.somaxconn (4096 by default since Linux 5.4).
_LISTEN_BACKLOG = 4096
_RECV_BYTES = 4096
# Closing connections to make room is logged at most this often.
_EVICTION_LOG_SECONDS = 60.0
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
# What a request line may look like while it is still arriving: a start of
# ``METHOD SP target SP HTTP/d.d``. Anything else can never become a request.
_REQUEST_LINE_START = re.compile(
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?: (?:[\x21-\x7e]+"
    rb"(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?)?)?)?)?"
)
# A CR not followed by LF (RFC 9112 section 2.2: the element is invalid). A CR that is
# the last byte received so far may still be followed by its LF.
_BARE_CR = re.compile(rb"\r(?!\n)")
# The scheme and authority of an absolute-form target (RFC 9112 section 3.2.2).
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]*", re.IGNORECASE)
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
        """The target's path: without its query string and, for the absolute form
        (``http://host/healthz``), without its scheme and authority."""
        target = self.target
        absolute = _ABSOLUTE_FORM.match(target)
        if absolute:
            target = target[absolute.end() :]
            if not target.startswith("/"):
                target = "/" + target  # `http://host` and `http://host?x` ask for `/`
        return target.split("?", 1)[0]


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


def read_head(received: bytes) -> Request | Reply | None:
    """The request once its head is complete; the error reply as soon as the bytes
    received so far cannot become a valid head; None while they still can.

    Lines end in CRLF or a bare LF; one empty line before the request line is
    ignored (RFC 9112 section 2.2). Header fields are only scanned for a bare CR
    and for the empty line that ends them."""
    bare_cr = _BARE_CR.search(received)
    if bare_cr is not None and bare_cr.end() < len(received):
        return BAD_REQUEST
    start = 2 if received.startswith(b"\r\n") else 1 if received.startswith(b"\n") else 0
    newline = received.find(b"\n", start)
    line = received[start : newline if newline >= 0 else len(received)]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not _REQUEST_LINE_START.fullmatch(line):
        return BAD_REQUEST
    if newline >= 0:
        request = parse_request_line(line)
        if isinstance(request, Reply):
            return request  # at once: the header fields cannot mend a bad request line
        # The head ends with the first empty line: LF LF or LF CR LF after a line.
        ends = (received.find(b"\n\n", newline), received.find(b"\n\r\n", newline))
        found = [i for i in ends if i >= 0]
        if found:
            end = min(found)
            length = end + (2 if received[end + 1 : end + 2] == b"\n" else 3)
            return request if length <= MAX_REQUEST_HEAD_BYTES else HEAD_TOO_LARGE
    return HEAD_TOO_LARGE if len(received) >= MAX_REQUEST_HEAD_BYTES else None


def reply_to(received: bytes, probes: Probes, metrics: PluginMetrics) -> Reply | None:
    """The reply to what a connection sent so far, or None while its request head
    is still incomplete and within bounds."""
    request = read_head(received)
    if request is None:
        return None
    if isinstance(request, Reply):
        log.debug("http %d for a request head starting %.200r", request.status, received[:200])
        return request
    reply = answer(request, probes, metrics)
    log.debug("http %s %.200s %d", request.method, request.target, reply.status)
    return replace(reply, head_only=True) if request.method == "HEAD" else reply


class _Connection:
    """One client: what it sent, what is left to send it, and when it must be done
    (its head by `deadline` while `outgoing` is None, its whole exchange after)."""

    __slots__ = ("accepted", "deadline", "outgoing", "received", "sock")

    def __init__(self, sock: socket.socket, accepted: float, deadline: float) -> None:
        self.sock = sock
        self.accepted = accepted
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


class HealthServer:
    """Serves the three endpoints from one daemon thread until `stop()`."""

    def __init__(
        self,
        address: ListenAddress,
        probes: Probes,
        metrics: PluginMetrics,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = CONNECTION_TIMEOUT_SECONDS,
        head_timeout: float = HEAD_TIMEOUT_SECONDS,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        self._probes = probes
        self._metrics = metrics
        self._max_connections = max_connections
        # Half the table: a connection accepted in one round outlives the next round's
        # accepts, so it is read at least once before newer ones could push it out.
        self._accepts_per_round = max(1, max_connections // 2)
        self._timeout = timeout
        self._head_timeout = min(head_timeout, timeout)
        self._listener = _listening_socket(address)
        self._port = int(self._listener.getsockname()[1])
        # Touched by the serving thread only (and by nobody once it has ended). A dict
        # keeps the order of accepts: the first entry is the oldest connection.
        self._connections: dict[_Connection, None] = {}
        self._evicted = 0
        self._eviction_logged = -_EVICTION_LOG_SECONDS
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
                    # Connections first: what they sent is served before newcomers
                    # could push them out of the table.
                    accept = False
                    for key, events in ready:
                        if key.fileobj is self._listener:
                            accept = True
                        elif isinstance(key.data, _Connection):
                            self._serve_connection(selector, key.data, events)
                    if accept:
                        self._accept(selector)
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
        for _ in range(self._accepts_per_round):
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
            sock.setblocking(False)
            if len(self._connections) >= self._max_connections:
                self._make_room(selector)
            now = time.monotonic()
            connection = _Connection(sock, now, now + self._head_timeout)
            self._connections[connection] = None
            selector.register(sock, selectors.EVENT_READ, connection)
            # A client usually sends its head right after connecting: answer it now
            # if it is here already (a read that finds nothing costs one system call).
            self._serve_connection(selector, connection, selectors.EVENT_READ)

    def _make_room(self, selector: selectors.BaseSelector) -> None:
        """Close the oldest connection still without a complete request head, or,
        when every one is being answered, the oldest of those."""
        victim = next((c for c in self._connections if c.outgoing is None), None)
        if victim is None:
            victim = next(iter(self._connections))
        self._close(selector, victim, gently=False)
        self._evicted += 1
        now = time.monotonic()
        if now - self._eviction_logged >= _EVICTION_LOG_SECONDS:
            log.warning(
                "health endpoint: closed %d connection(s) to make room for new ones "
                "(at most %d are held); clients are holding connections open without "
                "completing a request or reading its reply",
                self._evicted,
                self._max_connections,
            )
            self._evicted = 0
            self._eviction_logged = now

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
        connection.deadline = connection.accepted + self._timeout
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
            if connection.outgoing is None:
                log.debug(
                    "http connection closed: no complete request head within %.1fs",
                    self._head_timeout,
                )
            else:
                log.debug("http connection closed: reply not taken within %.1fs", self._timeout)
            self._close(selector, connection)

    def _close(
        self, selector: selectors.BaseSelector, connection: _Connection, gently: bool = True
    ) -> None:
        if connection not in self._connections:
            return  # closed already
        del self._connections[connection]
        selector.unregister(connection.sock)
        if gently:
            _close_gently(connection.sock)
        else:
            connection.sock.close()  # a reset, if it sent what we did not read: no matter
