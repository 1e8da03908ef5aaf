"""The rehearsed jobs' only way out: an HTTP proxy across the network namespace boundary.

Each rehearsed job runs in a network namespace of its own, so its loopback registry on
127.0.0.1:5000 is its own (as on a GitHub runner) and never the host's. What a job
fetches (pip from PyPI, apt from the Debian mirror) goes through `serve_proxy`, which
runs in the host's namespace and listens on a unix socket (a file both sides see), and
`forward_tcp`, which runs inside the job's namespace and listens on 127.0.0.1:PORT:
`HTTPS_PROXY`/`HTTP_PROXY` point there. CONNECT tunnels (https) and absolute-URI
requests (plain http, apt) are served; nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from urllib.parse import urlsplit

PROXY_PORT = 3128


def parse_request_line(line: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, request line to send upstream) of a proxy request line.

    `CONNECT host:443 HTTP/1.1` tunnels; `GET http://host/path HTTP/1.1` is sent on as
    `GET /path HTTP/1.1` to host:80. Anything else raises ValueError."""
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3:
        raise ValueError(f"not a request line: {line!r}")
    method, target, version = parts
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"CONNECT needs host:port, got {target!r}")
        return method, host.strip("[]"), int(port), b""
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"only absolute http:// targets are proxied, got {target!r}")
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    return method, url.hostname, url.port or 80, f"{method} {path} {version}\r\n".encode()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


async def _serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        first = await reader.readline()
        method, host, port, line = parse_request_line(first)
        headers = b""
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            if method != "CONNECT" and not header.lower().startswith(b"proxy-"):
                headers += header
        upstream = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
    except (ValueError, OSError, asyncio.TimeoutError) as error:
        writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{error}\r\n".encode())
        writer.close()
        return
    if method == "CONNECT":
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
    else:
        upstream[1].write(line + headers + b"\r\n")
    await _splice((reader, writer), upstream)


async def _forward_client(
    socket_path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        upstream = await asyncio.open_unix_connection(socket_path)
    except OSError:
        writer.close()
        return
    await _splice((reader, writer), upstream)


class Background:
    """An asyncio server run in a daemon thread; `stop()` closes it."""

    def __init__(self, make_server: object) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._error: BaseException | None = None
        self._make = make_server
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(self._make())  # type: ignore[operator]
        except BaseException as error:  # reported to the starting thread
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def serve_proxy(socket_path: Path) -> Background:
    """The proxy, in this (the host's) network namespace, on a unix socket."""
    socket_path.unlink(missing_ok=True)

    async def make() -> asyncio.AbstractServer:
        return await asyncio.start_unix_server(_serve_client, path=str(socket_path))

    return Background(make)


def forward_tcp(socket_path: Path, port: int = PROXY_PORT) -> Background:
    """127.0.0.1:port → the proxy's unix socket, in the job's network namespace."""

    async def make() -> asyncio.AbstractServer:
        async def client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await _forward_client(str(socket_path), r, w)

        return await asyncio.start_server(client, "127.0.0.1", port)

    return Background(make)
