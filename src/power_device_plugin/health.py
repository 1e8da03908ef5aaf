"""The HTTP endpoint on `--listen`: `/healthz`, `/readyz` and `/metrics`.

`/healthz` fails (503, naming the loop) when the kubelet lifecycle loop or the
device watcher has not made progress for `STALL_SECONDS`: each beats a
:class:`Heartbeat` once per round. `/readyz` is ready only when a valid config
has been read, the plugin is registered with the kubelet and the kubelet holds
a ListAndWatch stream open; otherwise its body says which is missing.

The endpoint is reachable by anything on the pod network, so it is bounded: a
connection that sends nothing is closed after `CONNECTION_TIMEOUT_SECONDS`, and
beyond `MAX_CONNECTIONS` at once a connection gets a quick 503 and is closed.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from power_device_plugin.metrics import PluginMetrics

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# stop() wakes the idle HTTP loop at once (a byte on a pipe); this is only the safety
# net, how often the loop looks at the stop flag on its own. Nothing else wakes it.
SHUTDOWN_POLL_SECONDS = 5.0
# A probe or a scrape is one short request; anything slower is a stuck or hostile client.
CONNECTION_TIMEOUT_SECONDS = 5.0
MAX_CONNECTIONS = 8
# Both loops go round at least every few seconds (the longest wait is the kubelet
# registration backoff, 5 s, plus a 3 s Register timeout); a minute without a
# round means a loop is stuck, and the kubelet should restart the container.
STALL_SECONDS = 60.0
BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 32\r\nConnection: close\r\n\r\ntoo many connections, try again\n"
)


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


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` of them; the rest get a
    canned 503 and are closed at once, without a thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0.5)
                request.sendall(BUSY_REPLY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _IPv6Server(_BoundedServer):
    address_family = socket.AF_INET6


class HealthServer:
    """Serves the three endpoints from a daemon thread until `stop()`."""

    def __init__(
        self,
        address: ListenAddress,
        probes: Probes,
        metrics: PluginMetrics,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = CONNECTION_TIMEOUT_SECONDS,
    ) -> None:
        handler = _handler_class(probes, metrics, timeout)
        server_class = _IPv6Server if ":" in address.host else _BoundedServer
        self._server = server_class((address.host, address.port), handler, max_connections)
        # handle_request() is called only once the socket is readable: never wait there.
        self._server.timeout = 0
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket; returns once the serving thread has ended."""
        if self._stopping.is_set():
            return  # stopped already: the pipe's descriptors may belong to others by now
        self._stopping.set()
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        self._server.server_close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _serve(self) -> None:
        # serve_forever() would wake every poll interval to look for shutdown(); this
        # loop sleeps until a connection or stop()'s byte on the wake pipe arrives.
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.fileno(), selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stopping.is_set():
                ready = selector.select(SHUTDOWN_POLL_SECONDS)
                if self._stopping.is_set():
                    break
                if any(key.fd == self._server.fileno() for key, _ in ready):
                    self._server.handle_request()


def _handler_class(
    probes: Probes, metrics: PluginMetrics, connection_timeout: float
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # StreamRequestHandler applies this to the socket: a silent client is cut off.
        timeout = connection_timeout

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            text = "text/plain; charset=utf-8"
            if path == "/healthz":
                problem = probes.not_live()
                if problem is None:
                    self._reply(200, b"ok\n", text)
                else:
                    self._reply(503, f"unhealthy: {problem}\n".encode(), text)
            elif path == "/readyz":
                problem = probes.not_ready()
                if problem is None:
                    self._reply(200, b"ready\n", text)
                else:
                    self._reply(503, f"not ready: {problem}\n".encode(), text)
            elif path == "/metrics":
                self._reply(200, metrics.exposition(), PROMETHEUS_CONTENT_TYPE)
            else:
                self._reply(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Probes hit this every few seconds; keep them out of the normal log.
            log.debug("http %s", format % args)

    return Handler
