"""The real plugin as a subprocess on a fake node: device trees, config, plugin dir.

Reusable by the node end-to-end suite: `FakeNode` builds `<root>/dev` and
`<root>/sys` with real device nodes (os.mknod, needs root), and `<root>/proc`
with a host mount table of its own (so a loop device of this machine that
happens to be mounted cannot collide with a fake node's device numbers), and
`start_plugin` runs `python -m power_device_plugin serve` against them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"


class FakeNode:
    """A node's /dev, /sys, config file and device plugin directory under one temp dir.

    The root is short and under /tmp on purpose: a unix socket path must fit
    in 108 bytes.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pdp-", dir="/tmp"))
        self.dev = self.root / "dev"
        self.sys = self.root / "sys"
        self.plugin_dir = self.root / "dp"
        self.proc = self.root / "proc"
        self.config = self.root / "config.json"
        for directory in (self.dev, self.sys / "block", self.plugin_dir, self.proc / "1"):
            directory.mkdir(parents=True)
        self._mounts: list[str] = []
        self._write_mounts()
        (self.proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
        self._minor = 0

    def _write_mounts(self) -> None:
        lines = ["22 1 0:21 / /proc rw,relatime - proc proc rw", *self._mounts]
        scratch = self.proc / "1" / "mountinfo.tmp"
        scratch.write_text("\n".join(lines) + "\n")
        scratch.replace(self.proc / "1" / "mountinfo")

    def mount(self, name: str, mount_point: str) -> None:
        """The host mounting `<dev>/<name>` at `mount_point` (a line in its mountinfo)."""
        rdev = os.stat(self.dev / name).st_rdev
        number = f"{os.major(rdev)}:{os.minor(rdev)}"
        self._mounts.append(f"{40 + len(self._mounts)} 1 {number} / {mount_point} rw - ext4 x rw")
        self._write_mounts()

    def unmount_all(self) -> None:
        self._mounts.clear()
        self._write_mounts()

    def remove_config(self) -> None:
        self.config.unlink()

    def device(self, name: str) -> Path:
        """A block device node `<dev>/<name>` (host path /dev/<name>)."""
        path = self.dev / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._minor += 1
        os.mknod(path, stat.S_IFBLK | 0o660, os.makedev(7, self._minor))
        return path

    def remove(self, name: str) -> None:
        (self.dev / name).unlink()

    def write_config(self, doc: dict[str, Any] | str) -> None:
        """Replace the config file atomically (as a ConfigMap update would)."""
        text = doc if isinstance(doc, str) else json.dumps(doc)
        scratch = self.config.with_suffix(".tmp")
        scratch.write_text(text)
        scratch.replace(self.config)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PluginProcess:
    """A running `power-device-plugin serve`."""

    process: subprocess.Popen[bytes]
    node: FakeNode
    port: int
    log_path: Path
    socket_name: str
    started_at: float = field(default_factory=time.monotonic)

    @property
    def socket_path(self) -> Path:
        return self.node.plugin_dir / self.socket_name

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def wait_http(self, path: str, status: int, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                code, body = self.http_get(path)
                if code == status:
                    return body
                last = code
            except OSError as error:
                last = error
            time.sleep(0.05)
        raise TimeoutError(f"GET {path} did not answer {status} within {timeout}s (last: {last})")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_plugin(
    node: FakeNode,
    *extra_args: str,
    python: str = sys.executable,
    socket_name: str = "pdp-test.sock",
    env: dict[str, str] | None = None,
) -> PluginProcess:
    """Start `python -m power_device_plugin serve` on the node (not waiting for it)."""
    port = free_port()
    log_path = node.root / f"plugin-{port}.log"
    command = [
        python,
        "-m",
        "power_device_plugin",
        "serve",
        f"--plugin-dir={node.plugin_dir}",
        f"--dev-root={node.dev}",
        f"--sys-root={node.sys}",
        f"--host-proc={node.proc}",
        f"--config={node.config}",
        f"--socket-name={socket_name}",
        f"--listen=127.0.0.1:{port}",
        *extra_args,
    ]
    if not any(arg.startswith("--cdi-dir") for arg in extra_args):
        # The node's own CDI directory, never the host's /var/run/cdi: a plugin removes
        # a stale spec of its kind at start, which would take a live one from the host.
        command.append(f"--cdi-dir={node.root / 'cdi'}")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    environment["PYTHONPATH"] = str(SRC)
    environment.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment
        )
    return PluginProcess(process, node, port, log_path, socket_name)
