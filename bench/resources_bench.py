"""Several resources against one: 2 resources x N/2 devices beside 1 x N (needs root).

Each case runs the real plugin (this tree's src/) on a fresh fake node of N ``dm-*``
devices against the kubelet stand-in, per-device mode (one unit per device), and
measures from outside:

- first full list of every resource (process started -> the last resource's first
  list with all its units),
- RSS once settled (after the first 5 s idle round), from the host's /proc,
- Allocate p50/p99 of one unit, on each resource's socket,
- idle CPU (% of one core) over a window.

    scripts/in-venv python bench/resources_bench.py [--devices 1000] [--quick]
        [--image 127.0.0.1:5000/power-dev-plugin:TAG [--image-src]]

Prints a table and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.fake_node import BenchNode  # noqa: E402
from bench.plugin_bench import (  # noqa: E402
    SETTLE_SECONDS,
    SOCKET_NAME,
    Plugin,
    Settings,
    allocate_latency,
    idle_cpu,
    process_start_monotonic,
    rss_mib,
)
from tests.integration.kubelet_stub import KubeletStub  # noqa: E402

from power_device_plugin.api import rpc  # noqa: E402
from power_device_plugin.config import DEFAULT_RESOURCE  # noqa: E402
from power_device_plugin.resources import socket_name_for  # noqa: E402

FIRST_HALF = ["/dev/dm-[0-9]", "/dev/dm-[1-9][0-9]", "/dev/dm-[1-4][0-9][0-9]"]
SECOND_HALF = ["/dev/dm-[5-9][0-9][0-9]"]


def configs(devices: int) -> dict[str, tuple[dict[str, Any], dict[str, int]]]:
    """Case -> (config.json, units expected per resource). Two halves need N = 1000."""
    if devices != 1000:
        raise SystemExit("the two halves' globs split dm-0..dm-999: use --devices 1000")
    one = {"include-devices": ["/dev/dm-*"], "grant-mode": "per-device"}
    two = {
        "resources": [
            {"name": "bench.example/a", "include-devices": FIRST_HALF, "grant-mode": "per-device"},
            {
                "name": "bench.example/b",
                "include-devices": SECOND_HALF,
                "grant-mode": "per-device",
            },
        ]
    }
    half = devices // 2
    return {
        "1x1000": (one, {DEFAULT_RESOURCE: devices}),
        "2x500": (two, {"bench.example/a": half, "bench.example/b": half}),
    }


def first_full_list(kubelet: KubeletStub, expected: dict[str, int], timeout: float = 60) -> float:
    """When the last resource got its first list with all its units (monotonic)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, float] = {}
    while time.monotonic() < deadline and len(seen) < len(expected):
        for connection in list(kubelet.connections):
            name = connection.registration.resource_name
            if name in expected and name not in seen:
                for received_at, devices in list(connection.lists):
                    if len(devices) == expected[name]:
                        seen[name] = received_at
                        break
        time.sleep(0.005)
    if len(seen) < len(expected):
        raise TimeoutError(f"first lists seen only for {sorted(seen)} within {timeout}s")
    return max(seen.values())


def run_case(
    case: str, doc: dict[str, Any], expected: dict[str, int], settings: Settings
) -> dict[str, float]:
    node = BenchNode()
    figures: dict[str, float] = {}
    try:
        node.build_plain(settings.devices)
        node.write_config(doc)
        plugin = Plugin(node, settings)
        command = plugin.command()
        with KubeletStub(node.plugin_dir) as kubelet:
            started = plugin.start(command)
            try:
                kubelet.wait_for_registration(count=len(expected), timeout=60)
                last = first_full_list(kubelet, expected)
                figures["first_full_list_s"] = last - started
                figures["first_full_list_from_process_s"] = last - process_start_monotonic(
                    plugin.pid
                )
                time.sleep(1.0 + SETTLE_SECONDS)
                figures["rss_settled_mib"] = rss_mib(plugin.pid)
                for index, name in enumerate(expected):
                    socket = SOCKET_NAME if name == DEFAULT_RESOURCE else socket_name_for(name)
                    ids = sorted(
                        kubelet.wait_for_list_of(name, lambda d, n=expected[name]: len(d) == n)
                    )
                    channel = grpc.insecure_channel(f"unix://{node.plugin_dir / socket}")
                    stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
                    latency = allocate_latency(stub, ids, settings)
                    channel.close()
                    figures[f"allocate_p50_ms_r{index}"] = latency["allocate_p50_ms"]
                    figures[f"allocate_p99_ms_r{index}"] = latency["allocate_p99_ms"]
                figures["idle_cpu_percent"] = idle_cpu(plugin.pid, settings.idle_seconds)
                figures["rss_end_mib"] = rss_mib(plugin.pid)
            except Exception:
                print(f"plugin log ({case}):\n{plugin.log()[-4000:]}", file=sys.stderr)
                raise
            finally:
                plugin.stop()
    finally:
        node.cleanup()
    return {k: round(v, 4) for k, v in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="short windows, for a smoke run")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--image", help="run this plugin image (amd64) as the DaemonSet does")
    parser.add_argument(
        "--image-src", action="store_true", help="with --image: run this tree's src/ in it"
    )
    args = parser.parse_args()
    windows = (300, 50, 0, 0, 5.0) if args.quick else (2000, 200, 0, 0, 20.0)
    settings = Settings(args.devices, *windows, args.image, args.python, image_src=args.image_src)
    results = {
        case: run_case(case, doc, expected, settings)
        for case, (doc, expected) in configs(args.devices).items()
    }
    for case, figures in results.items():
        for name, value in figures.items():
            print(f"{case:<7} {name:<32} {value:>10.3f}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
