"""Plugin figures for 1000 devices on a fake node (needs root for os.mknod).

Runs the real plugin (`python -m power_device_plugin serve`) against the
kubelet stand-in and prints:

- RSS after start-up (first full list sent),
- Allocate latency p50/p99 over 2000 calls through a gRPC client on the unix socket,
- kubelet restart -> re-registration time,
- device-node creation -> ListAndWatch update time,
- idle CPU over 30 s (utime+stime from /proc/PID/stat).

    scripts/in-venv python bench/plugin_bench.py [--devices 1000] [--idle-seconds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.integration.kubelet_stub import KubeletStub  # noqa: E402
from tests.integration.plugin_process import FakeNode, start_plugin  # noqa: E402

from power_device_plugin.api import pb, rpc  # noqa: E402

GOALS = {
    "rss_mib": 40.0,
    "allocate_p99_ms": 0.8,
    "reregistration_s": 1.0,
    "update_s": 1.0,
    "idle_cpu_percent": 0.5,
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime is the 14th
    # field of the line, stime the 15th, in clock ticks.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def has_count(devices: dict[str, str], count: int) -> bool:
    return len(devices) == count


def verdict(name: str, value: float) -> str:
    return "ok" if value <= GOALS[name] else "OVER GOAL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--allocations", type=int, default=2000)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--hotplugs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter that runs the plugin (e.g. the floor venv's python)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("plugin_bench: needs root (device nodes are made with os.mknod)", file=sys.stderr)
        return 2

    node = FakeNode()
    node.write_config({"include-devices": ["/dev/fake*"], "grant-mode": "per-device"})
    for index in range(args.devices):
        node.device(f"fake{index}")
    figures: dict[str, float] = {}
    try:
        with KubeletStub(node.plugin_dir) as kubelet:
            plugin = start_plugin(node, python=args.python)
            try:
                started = time.monotonic()
                kubelet.wait_for_registration(timeout=30)
                devices = kubelet.wait_for_list(lambda d: len(d) == args.devices, timeout=30)
                figures["startup_s"] = time.monotonic() - started
                time.sleep(1.0)  # let start-up garbage settle before measuring
                figures["rss_mib"] = rss_mib(plugin.process.pid)

                ids = sorted(devices)
                channel = grpc.insecure_channel(f"unix://{plugin.socket_path}")
                stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
                requests = [
                    pb.AllocateRequest(
                        container_requests=[pb.ContainerAllocateRequest(devices_ids=[device_id])]
                    )
                    for device_id in ids
                ]
                for request in requests[:200]:  # warm-up
                    stub.Allocate(request, timeout=5)
                latencies = []
                for call in range(args.allocations):
                    request = requests[call % len(requests)]
                    before = time.perf_counter()
                    stub.Allocate(request, timeout=5)
                    latencies.append((time.perf_counter() - before) * 1000)
                # The same client and socket on an empty call: what gRPC itself costs.
                baseline = []
                for _ in range(args.allocations):
                    before = time.perf_counter()
                    stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
                    baseline.append((time.perf_counter() - before) * 1000)
                channel.close()
                figures["options_p50_ms"] = statistics.median(baseline)
                figures["options_p99_ms"] = percentile(baseline, 0.99)
                figures["allocate_p50_ms"] = statistics.median(latencies)
                figures["allocate_p99_ms"] = percentile(latencies, 0.99)

                rereg = []
                for restart in range(args.restarts):
                    restarted_at = kubelet.restart()
                    registration = kubelet.wait_for_registration(
                        len(kubelet.registrations) + 1, timeout=10
                    )
                    rereg.append(registration.received_at - restarted_at)
                    kubelet.wait_for_list(lambda d: len(d) == args.devices, timeout=10)
                    del restart
                figures["reregistration_s"] = max(rereg)
                figures["reregistration_median_s"] = statistics.median(rereg)

                updates = []
                for hotplug in range(args.hotplugs):
                    want = args.devices + hotplug + 1
                    created_at = time.monotonic()
                    node.device(f"fake-new{hotplug}")
                    kubelet.wait_for_list(partial(has_count, count=want), timeout=10)
                    last_time = kubelet.latest_connection().lists[-1][0]
                    updates.append(last_time - created_at)
                figures["update_s"] = max(updates)
                figures["update_median_s"] = statistics.median(updates)

                time.sleep(1.0)
                cpu_before, wall_before = cpu_seconds(plugin.process.pid), time.monotonic()
                time.sleep(args.idle_seconds)
                cpu_used = cpu_seconds(plugin.process.pid) - cpu_before
                figures["idle_cpu_percent"] = 100 * cpu_used / (time.monotonic() - wall_before)
                figures["rss_end_mib"] = rss_mib(plugin.process.pid)
            finally:
                plugin.stop()
    finally:
        node.cleanup()

    print(f"plugin bench: {args.devices} devices (per-device mode), plugin run by {args.python}")
    rows = [
        ("start-up to first full list", figures["startup_s"], "s", None),
        ("RSS after start-up", figures["rss_mib"], "MiB", "rss_mib"),
        ("RSS at the end", figures["rss_end_mib"], "MiB", None),
        ("Allocate p50", figures["allocate_p50_ms"], "ms", None),
        (f"Allocate p99 ({args.allocations} calls)", figures["allocate_p99_ms"], "ms",
         "allocate_p99_ms"),
        ("GetDevicePluginOptions p50 (gRPC baseline)", figures["options_p50_ms"], "ms", None),
        ("GetDevicePluginOptions p99 (gRPC baseline)", figures["options_p99_ms"], "ms", None),
        (f"re-registration, max of {args.restarts}", figures["reregistration_s"], "s",
         "reregistration_s"),
        ("re-registration, median", figures["reregistration_median_s"], "s", None),
        (f"node created -> update, max of {args.hotplugs}", figures["update_s"], "s", "update_s"),
        ("node created -> update, median", figures["update_median_s"], "s", None),
        (f"idle CPU over {args.idle_seconds:.0f} s (% of one core)", figures["idle_cpu_percent"],
         "%", "idle_cpu_percent"),
    ]  # fmt: skip
    for label, value, unit, goal in rows:
        judged = f"goal <= {GOALS[goal]:g}: {verdict(goal, value)}" if goal else ""
        print(f"  {label:<44} {value:9.3f} {unit:<4} {judged}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
