"""Where the idle CPU of change detection goes: one watch round's parts, timed in process.

Builds the fake node of the plugin bench (plain: N dm maps; SAN: N maps over 4N sd
paths; needs root) and times what `DeviceWatcher` does every poll (with inotify:
every safety poll), and what a rescan costs (the `scan` command's and the
watcher's), so idle CPU can be split into "stat poll" and "rescans".

    scripts/in-venv python bench/watch_cost.py [--devices 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.fake_node import BenchNode  # noqa: E402

from power_device_plugin.config import load_config  # noqa: E402
from power_device_plugin.discovery import scan  # noqa: E402
from power_device_plugin.host_use import read_host_use  # noqa: E402
from power_device_plugin.watch import device_signature, file_signature  # noqa: E402


def ms_per_call(action: Callable[[], object], calls: int) -> float:
    action()
    started = time.perf_counter()
    for _ in range(calls):
        action()
    return round((time.perf_counter() - started) * 1000 / calls, 3)


def shape_costs(shape: str, devices: int) -> dict[str, float]:
    node = BenchNode()
    try:
        if shape == "san":
            node.build_san(devices, 4)
        else:
            node.build_plain(devices)
        node.write_config({"include-devices": ["/dev/dm-*"], "grant-mode": "all"})
        config, _ = load_config(node.config)
        use = read_host_use(node.proc, node.sys)
        return {
            "device_signature_ms": ms_per_call(
                lambda: device_signature(config, node.dev, node.sys), 50
            ),
            "config_signature_ms": ms_per_call(lambda: file_signature(node.config), 200),
            "host_use_ms": ms_per_call(lambda: read_host_use(node.proc, node.sys), 20),
            # What `scan` (the command) does: every sysfs block device explained.
            "full_scan_ms": ms_per_call(lambda: scan(config, node.dev, node.sys, use), 5),
            # What the watcher does: devices no include matches are not looked at.
            "watcher_scan_ms": ms_per_call(
                lambda: scan(config, node.dev, node.sys, use, explain_unmatched=False), 5
            ),
        }
    finally:
        node.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    figures = {shape: shape_costs(shape, args.devices) for shape in ("plain", "san")}
    print(json.dumps({"bench": "watch_cost", "devices": args.devices, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
