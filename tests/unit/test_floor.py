"""The floor: the plugin runs on Python 3.9 with Debian bookworm's grpcio 1.51 / protobuf 4.21.

A venv with exactly those versions is made once under `.cache/` (Python 3.9
from pyenv when present, else the current interpreter), and the real plugin and
the kubelet stand-in both run in it, talking over unix sockets.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What Debian bookworm ships for every architecture (python3-grpcio, python3-protobuf).
FLOOR_REQUIREMENTS = ("grpcio==1.51.3", "protobuf==4.21.12")


def clean_env() -> dict[str, str]:
    """The environment without this venv's or the plugin's settings."""
    drop = ("PDP_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def floor_interpreter() -> str:
    found = sorted(glob.glob("/root/.pyenv/versions/3.9.*/bin/python3.9"))
    if found:
        return found[-1]
    return shutil.which("python3.9") or sys.executable


@pytest.fixture(scope="module")
def floor_python() -> Path:
    interpreter = floor_interpreter()
    version = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    venv_dir = ROOT / ".cache" / f"floor-venv-py{version}"
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    # Two test runs at once must not build the same venv over each other.
    with open(venv_dir.with_name(venv_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_floor_venv(interpreter, venv_dir)


def ensure_floor_venv(interpreter: str, venv_dir: Path) -> Path:
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".installed"
    wanted = " ".join(FLOOR_REQUIREMENTS)
    if not (python.exists() and stamp.exists() and stamp.read_text().strip() == wanted):
        if interpreter == sys.executable:
            venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
        else:
            made = subprocess.run(
                [interpreter, "-m", "venv", "--clear", str(venv_dir)],
                capture_output=True, text=True, env=clean_env(),
            )  # fmt: skip
            assert made.returncode == 0, f"{interpreter} -m venv {venv_dir} failed:\n{made.stderr}"
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--progress-bar", "off",
             *FLOOR_REQUIREMENTS],
            capture_output=True, text=True, env=clean_env(),
        )  # fmt: skip
        assert install.returncode == 0, f"installing the floor failed:\n{install.stderr}"
        stamp.write_text(wanted + "\n")
    return python


def run_on_floor(
    python: Path, script: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{ROOT}"
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(script)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def test_floor_venv_has_exactly_the_debian_versions(floor_python: Path) -> None:
    result = run_on_floor(
        floor_python,
        """
        import json, sys, grpc, google.protobuf
        from power_device_plugin.api import pb, rpc
        print(json.dumps({
            "python": "%d.%d" % sys.version_info[:2],
            "grpcio": grpc.__version__,
            "protobuf": google.protobuf.__version__,
            "device": pb.Device(ID="a", health="Healthy").SerializeToString().hex(),
        }))
        """,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["grpcio"] == "1.51.3"
    assert seen["protobuf"] == "4.21.12"
    assert seen["device"] == "0a016112074865616c746879"  # field 1 "a", field 2 "Healthy"
    if floor_interpreter() != sys.executable:
        assert seen["python"] == "3.9"


def test_plugin_serves_registers_streams_and_allocates_on_the_floor(floor_python: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the fake node's device nodes are made with os.mknod, which needs root")
    result = run_on_floor(
        floor_python,
        """
        import json, subprocess, sys
        from tests.integration.kubelet_stub import KubeletStub
        from tests.integration.plugin_process import FakeNode, start_plugin

        node = FakeNode()
        node.write_config({"include-devices": ["/dev/fake*"], "grant-mode": "per-device"})
        node.device("fake0")
        node.device("fake1")
        scan = subprocess.run(
            [sys.executable, "-m", "power_device_plugin", "scan", "--output", "json",
             f"--dev-root={node.dev}", f"--sys-root={node.sys}", f"--config={node.config}"],
            capture_output=True, text=True,
        )
        report = {"scan_exit": scan.returncode, "scan": json.loads(scan.stdout or "null")}
        try:
            with KubeletStub(node.plugin_dir) as kubelet:
                plugin = start_plugin(node, python=sys.executable)
                try:
                    registration = kubelet.wait_for_registration(timeout=20)
                    devices = kubelet.wait_for_list(lambda d: len(d) == 2, timeout=10)
                    options = kubelet.latest_connection().options
                    grant = kubelet.allocate(sorted(devices)).container_responses[0]
                    report.update(
                        version=registration.version,
                        devices=devices,
                        preferred_offered=options.get_preferred_allocation_available,
                        granted=sorted(spec.host_path for spec in grant.devices),
                    )
                finally:
                    plugin.stop()
                    report["plugin_exit"] = plugin.process.returncode
                    report["log"] = plugin.log()[-3000:]
        finally:
            node.cleanup()
        print(json.dumps(report))
        """,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["scan_exit"] == 0
    assert len(report["scan"]["devices"]) == 2
    assert report["version"] == "v1beta1", report["log"]
    assert set(report["devices"].values()) == {"Healthy"}
    assert report["preferred_offered"] is True
    assert report["granted"] == ["/dev/fake0", "/dev/fake1"]
    assert report["plugin_exit"] == 0, report["log"]
