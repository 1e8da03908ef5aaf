"""The HTTP endpoint on `--listen`: `/healthz`, `/readyz` and `/metrics`.

`/healthz` answers while the process can serve HTTP at all; `/readyz` only
while the plugin is registered with the kubelet and the kubelet holds a
ListAndWatch stream open (that is when the node advertises our devices).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from power_device_plugin.metrics import PluginMetrics

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How often the idle HTTP loop wakes to see whether stop() was asked for.
SHUTDOWN_POLL_SECONDS = 1.0


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


@dataclass(frozen=True)
class Probes:
    """What the endpoint asks the plugin; each returns True when the condition holds."""

    ready: Callable[[], bool]


class HealthServer:
    """Serves the three endpoints from a daemon thread until `stop()`."""

    def __init__(self, address: ListenAddress, probes: Probes, metrics: PluginMetrics) -> None:
        handler = _handler_class(probes, metrics)
        server_class = _IPv6Server if ":" in address.host else ThreadingHTTPServer
        self._server = server_class((address.host, address.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="health-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        """The bound port (useful when asked for port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_class(probes: Probes, metrics: PluginMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._reply(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                if probes.ready():
                    self._reply(200, b"ready\n", "text/plain; charset=utf-8")
                else:
                    body = b"not ready: not registered with the kubelet or no ListAndWatch stream\n"
                    self._reply(503, body, "text/plain; charset=utf-8")
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
