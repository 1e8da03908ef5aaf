"""Hostile clients of the health endpoint, and the endpoint in a process of its own.

Shared by tests/unit/test_health_attacks.py (behaviour) and bench/probe_attack.py
(figures). Everything talks to 127.0.0.1 only.

- `serving_process` runs a `HealthServer` on 127.0.0.1 in a fresh interpreter (as
  the plugin runs it: nothing else in the process), so its threads, descriptors and
  RSS are the endpoint's own; `process_stats` reads them from /proc.
- `attacking` runs `main` below in another interpreter: ``count`` slowloris
  clients, each sending one byte of a request head a second that never ends, and
  connecting again at once whenever the server closes it (the attack of issue 18);
  with ``burst``, each first sends that many bytes of the head at once, so the
  server holds nearly its whole head bound per connection.
- `probe` is a kubelet probe: connect, send the whole head, read to the close.
"""

from __future__ import annotations

import os
import random
import resource
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
# Valid so far and never complete: no rule but a timeout or a bound can reject it.
SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 8000

_SERVER = """
import sys
sys.path.insert(0, sys.argv[1])
from power_device_plugin.health import HealthServer, Probes, parse_listen
from power_device_plugin.metrics import PluginMetrics
server = HealthServer(parse_listen("127.0.0.1:0"), Probes(not_ready=lambda: None), PluginMetrics())
server.start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass(frozen=True)
class Served:
    pid: int
    port: int


@dataclass(frozen=True)
class Stats:
    threads: int
    fds: int
    rss_kib: int


def process_stats(pid: int) -> Stats:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Stats(
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_kib=int(fields["VmRSS"].split()[0]),
    )


@contextmanager
def serving_process(src: Path = ROOT / "src") -> Iterator[Served]:
    """The endpoint of the code under ``src``, alone in a process, until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(src)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield Served(process.pid, port)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def attacking(
    port: int, count: int, seconds: float = 60.0, burst: int = 0
) -> Iterator[subprocess.Popen[str]]:
    """``count`` slowloris clients against ``port`` until the block ends (or ``seconds``)."""
    process = subprocess.Popen(
        [sys.executable, __file__, str(port), str(count), str(seconds), str(burst)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "connecting"
        yield process
    finally:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: closed without a status line
    seconds: float


def probe(port: int, path: str = "/healthz", timeout: float = 10.0) -> Answer:
    """What a kubelet probe sees: the status, and the time from connect to the close."""
    start = time.monotonic()
    chunks = []
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as connection:
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode())
            while chunk := connection.recv(4096):
                chunks.append(chunk)
    except OSError:
        pass  # a reset after the reply still leaves the reply read
    seconds = time.monotonic() - start
    raw = b"".join(chunks)
    if not raw.startswith(b"HTTP/1.1 "):
        return Answer(None, seconds)
    return Answer(int(raw[9:12]), seconds)


class _Slowloris:
    """``count`` connections, each sending one byte of `SLOW_HEAD` a second (the first
    ``burst`` bytes at once)."""

    def __init__(self, port: int, count: int, burst: int = 0) -> None:
        self.port = port
        self.burst = burst
        self.selector = selectors.DefaultSelector()
        # socket -> [bytes sent, when the next byte is due]
        self.clients: dict[socket.socket, list[float]] = {}
        self.connects = 0
        for _ in range(count):
            self.connect(time.monotonic() + random.random())

    def connect(self, first_byte_at: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((LOOPBACK, self.port))
        self.selector.register(sock, selectors.EVENT_READ)
        self.clients[sock] = [0, first_byte_at]
        self.connects += 1

    def drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.clients[sock]
        sock.close()
        self.connect(time.monotonic() + 1.0)

    def run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, _ in self.selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    gone = not sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    gone = False
                except OSError:
                    gone = True  # reset, or the connect itself failed
                if gone:
                    self.drop(sock)
            now = time.monotonic()
            for sock, state in list(self.clients.items()):
                sent, due = int(state[0]), state[1]
                if due > now:
                    continue
                size = self.burst if sent == 0 and self.burst else 1
                try:
                    state[0] = sent + sock.send(SLOW_HEAD[sent : sent + size])
                except (BlockingIOError, InterruptedError):
                    pass  # not connected yet: try again next second
                except OSError:
                    self.drop(sock)
                    continue
                state[1] = due + 1.0


def main(argv: list[str]) -> int:
    port, count, seconds, burst = int(argv[0]), int(argv[1]), float(argv[2]), int(argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    attack = _Slowloris(port, count, burst)
    print("connecting", flush=True)
    attack.run(seconds)
    print(f"connects {attack.connects}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
