"""The CDI spec on disk tells the truth: a spec left by an earlier run is gone before
the plugin registers, and a CDI dir that is full shows in /readyz and /metrics and is
recovered within seconds of space returning (a real full tmpfs, not an injected error)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.kubelet_stub import KubeletStub
from tests.integration.plugin_process import FakeNode, PluginProcess

from power_device_plugin import cdi

KIND = cdi.cdi_kind_for("power-dev-plugin/dev")
OWNER_CONFIG: dict[str, Any] = {
    "include-devices": ["/dev/fake*"],
    "grant-mode": "per-device",
    "device-owner": {"uid": 1000, "gid": 1000, "mode": "0600"},
}
# How soon a spec must be back once the CDI dir has room again (issue 18).
RECOVERY_BOUND_SECONDS = 5.0


def spec_names(path: Path) -> set[str]:
    return {d["name"] for d in json.loads(path.read_text())["devices"]}


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics:\n{text}"
    return float(match.group(1))


def wait_until(check: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``check`` every 10 ms; the seconds it took to become true."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what} not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - started


class Watched:
    """When a file was last seen to disappear, polled every 2 ms in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.gone_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.path.exists():
                if self.gone_at is None:
                    self.gone_at = time.monotonic()
            else:
                self.gone_at = None
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def cdi_dir(node: FakeNode) -> Path:
    return node.root / "cdi"


@pytest.fixture
def full_tmpfs(cdi_dir: Path) -> Iterator[Path]:
    """``cdi_dir`` as a 16 KiB tmpfs, filled to the last byte by ``filler``."""
    cdi_dir.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs", str(cdi_dir)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        filler = cdi_dir / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError as error:
            assert error.errno == errno.ENOSPC  # the dir is really full
        finally:
            os.close(fd)
        yield filler
    finally:
        subprocess.run(["umount", "-l", str(cdi_dir)], check=False)


def test_a_spec_left_by_a_killed_plugin_is_removed_before_the_next_one_registers(
    node: FakeNode,
    kubelet: KubeletStub,
    plugin_factory: Callable[..., PluginProcess],
    cdi_dir: Path,
) -> None:
    for name in ("fake0", "fake1", "fake2"):
        node.device(name)
    node.write_config(OWNER_CONFIG)
    first = plugin_factory(f"--cdi-dir={cdi_dir}")
    kubelet.wait_for_registration(timeout=10)
    kubelet.wait_for_list(lambda d: len(d) == 3, timeout=5)
    spec = cdi_dir / cdi.spec_file_name(KIND)
    assert len(spec_names(spec)) == 3, first.log()

    first.signal(signal.SIGKILL)  # no clean stop: the spec stays behind
    first.wait(timeout=5)
    assert spec.exists()
    node.write_config({**OWNER_CONFIG, "grant-mode": "sometimes"})  # invalid while down

    watched = Watched(spec)
    try:
        second = plugin_factory(f"--cdi-dir={cdi_dir}")
        registration = kubelet.wait_for_registration(count=2, timeout=10)
        wait_until(lambda: watched.gone_at is not None, 2.0, "the stale spec removed")
    except TimeoutError as error:
        raise AssertionError(f"{error}; spec still holds {spec_names(spec)}") from None
    finally:
        watched.stop()
    assert watched.gone_at is not None
    assert watched.gone_at <= registration.received_at, second.log()
    assert "left from an earlier run" in second.log()
    assert kubelet.wait_for_list(lambda d: True, timeout=5) == {}


def test_a_spec_left_by_an_earlier_run_is_rewritten_with_the_devices_of_this_one(
    node: FakeNode,
    kubelet: KubeletStub,
    plugin_factory: Callable[..., PluginProcess],
    cdi_dir: Path,
) -> None:
    node.device("fake0")
    node.write_config(OWNER_CONFIG)
    cdi_dir.mkdir()
    spec = cdi_dir / cdi.spec_file_name(KIND)
    stale = {"cdiVersion": "0.5.0", "kind": KIND, "devices": []}
    stale["devices"] = [
        {"name": f"old-{i}", "containerEdits": {"deviceNodes": [{"path": f"/dev/old{i}"}]}}
        for i in range(3)
    ]
    spec.write_text(json.dumps(stale))

    plugin_factory(f"--cdi-dir={cdi_dir}")
    kubelet.wait_for_registration(timeout=10)
    (unit,) = kubelet.wait_for_list(lambda d: len(d) == 1, timeout=5)

    names = spec_names(spec)
    assert len(names) == 1 and not any(n.startswith("old-") for n in names)
    (granted,) = kubelet.allocate([unit]).container_responses
    assert [d.name for d in granted.cdi_devices] == [f"{KIND}={n}" for n in names]


def test_a_full_cdi_dir_shows_in_readyz_and_metrics_and_the_spec_returns_within_5s(
    node: FakeNode,
    kubelet: KubeletStub,
    plugin_factory: Callable[..., PluginProcess],
    cdi_dir: Path,
    full_tmpfs: Path,
) -> None:
    for name in ("fake0", "fake1", "fake2"):
        node.device(name)
    node.write_config(OWNER_CONFIG)
    plugin = plugin_factory(f"--cdi-dir={cdi_dir}")
    try:
        kubelet.wait_for_registration(timeout=10)
        units = kubelet.wait_for_list(lambda d: len(d) == 3, timeout=5)
        spec = cdi_dir / cdi.spec_file_name(KIND)

        body = plugin.wait_http("/readyz", 503, timeout=5)
        assert "CDI spec" in body and "No space left on device" in body, body
        assert metric(plugin.http_get("/metrics")[1], "pdp_cdi_spec_failing") == 1
        # Meanwhile grants carry DeviceSpecs only: no CDI name the runtime cannot resolve.
        (granted,) = kubelet.allocate([sorted(units)[0]]).container_responses
        assert list(granted.cdi_devices) == []
        assert len(granted.devices) == 1
        assert not spec.exists()

        full_tmpfs.unlink()  # space returns
        took = wait_until(spec.exists, 10.0, "the spec written again")
        ready = wait_until(
            lambda: plugin.http_get("/readyz")[0] == 200, 10.0, "/readyz answering 200"
        )
        print(f"spec back {took:.2f}s after space returned; /readyz 200 {ready:.2f}s later")
        assert took <= RECOVERY_BOUND_SECONDS, plugin.log()
        assert metric(plugin.http_get("/metrics")[1], "pdp_cdi_spec_failing") == 0
        assert len(spec_names(spec)) == 3
        (granted,) = kubelet.allocate([sorted(units)[0]]).container_responses
        assert len(granted.cdi_devices) == 1
        assert "CDI spec kept again" in plugin.log()
    finally:
        plugin.stop()
    assert not os.path.exists(cdi_dir / cdi.spec_file_name(KIND))  # a clean stop removes it
