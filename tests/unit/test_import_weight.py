"""What serving imports: none of the modules the plugin stopped importing for their
weight (RSS and start-up time in the image; docs/plugin.md, Performance)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every module `power-device-plugin serve` imports on its way to serving.
SERVING = (
    "power_device_plugin.cli",
    "power_device_plugin.lifecycle",
    "power_device_plugin.server",
    "power_device_plugin.health",
    "power_device_plugin.watch",
    "power_device_plugin.notify",
)
# The whole package or module, and everything under it.
NOT_IMPORTED = (
    "prometheus_client",  # /metrics is written by metrics.py
    "http.server",  # the health endpoint is health.py's own loop
    "socketserver",
    "http.client",
    "email",
    "urllib.request",
    "wsgiref",
    "secrets",  # the CDI temporary's name comes from os.urandom
)


def test_serving_imports_none_of_the_heavy_modules() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {SERVING!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert set(SERVING) <= set(loaded)
    heavy = [m for m in loaded if any(m == n or m.startswith(n + ".") for n in NOT_IMPORTED)]
    assert heavy == []
