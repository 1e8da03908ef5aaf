"""What a hostile or buggy client of the plugin socket costs the kubelet (needs root).

The real plugin process on a fake node of N `dm-*` devices (all mode) against the
kubelet stand-in, measured from outside:

- Allocate and GetPreferredAllocation latency, idle (p50/p99), then while `--storms`
  storms of 1000 ListAndWatch streams open and drop (tests/integration/stream_storm.py:
  waves of 100 on one channel, each wave cancelled once answered or ended, or after
  2 s): p50/p99/max, calls that failed (DEADLINE_EXCEEDED after `--deadline` s when a
  call is starved);
- RSS after the storms and the peak (VmHWM), then the peak after four concurrent
  Allocates of 100 000 container requests and an Allocate naming a device ID just
  under 4 MiB (what gRPC's default limit lets through);
- the length of the longest log line and of the longest status details seen;
- SIGTERM to exit, with the kubelet's stream open.

    scripts/in-venv python bench/rpc_storm.py [--devices 1000] [--storms 10]
    PDP_BENCH_SRC=/tmp/old/src scripts/in-venv python bench/rpc_storm.py   # another tree

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.fake_node import BenchNode  # noqa: E402
from bench.plugin_bench import Plugin, Settings, percentile, rss_mib  # noqa: E402
from tests.integration.kubelet_stub import KubeletStub  # noqa: E402
from tests.integration.stream_storm import StreamStorm  # noqa: E402

from power_device_plugin.api import pb, rpc  # noqa: E402

STREAMS_PER_STORM = 1000
BIG_REQUESTS = 4
BIG_CONTAINERS = 100_000


def peak_rss_mib(pid: int) -> float:
    """VmHWM; NaN once the process has exited."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return float("nan")
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Figures(dict[str, Any]):
    """Printed as they are taken, so a run cut short still shows what it measured."""

    def __setitem__(self, key: str, value: Any) -> None:
        print(f"{key:28} {value}", flush=True)
        super().__setitem__(key, value)


def unary_latencies(
    stub: rpc.DevicePluginStub, units: list[str], deadline: float, until: threading.Event | int
) -> dict[str, Any]:
    allocate = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=units[:1])]
    )
    preferred = pb.PreferredAllocationRequest(
        container_requests=[
            pb.ContainerPreferredAllocationRequest(available_deviceIDs=units, allocation_size=1)
        ]
    )
    allocate_ms: list[float] = []
    preferred_ms: list[float] = []
    errors: list[str] = []
    calls = 0
    while (until.is_set() is False) if isinstance(until, threading.Event) else calls < until:
        calls += 1
        for request, call, samples in (
            (allocate, stub.Allocate, allocate_ms),
            (preferred, stub.GetPreferredAllocation, preferred_ms),
        ):
            before = time.perf_counter()
            try:
                call(request, timeout=deadline)
            except grpc.RpcError as error:
                errors.append(str(error.code()))  # type: ignore[attr-defined]
                continue
            samples.append((time.perf_counter() - before) * 1000)
        time.sleep(0.002)

    def stats(samples: list[float]) -> dict[str, float]:
        if not samples:
            return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
        return {
            "p50_ms": round(statistics.median(samples), 3),
            "p99_ms": round(percentile(samples, 0.99), 3),
            "max_ms": round(max(samples), 3),
        }

    return {
        "allocate": stats(allocate_ms),
        "preferred": stats(preferred_ms),
        "calls": len(allocate_ms) + len(preferred_ms),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
    }


def big_inputs(stub: rpc.DevicePluginStub, units: list[str]) -> dict[str, Any]:
    results: list[str] = []
    details: list[int] = []
    lock = threading.Lock()

    def call(request: pb.AllocateRequest) -> None:
        try:
            stub.Allocate(request, timeout=60)
            outcome, length = "OK", 0
        except grpc.RpcError as error:
            outcome = str(error.code())  # type: ignore[attr-defined]
            length = len(error.details() or "")  # type: ignore[attr-defined]
        with lock:
            results.append(outcome)
            details.append(length)

    many = pb.AllocateRequest(
        container_requests=[
            pb.ContainerAllocateRequest(devices_ids=units[:1]) for _ in range(BIG_CONTAINERS)
        ]
    )
    threads = [threading.Thread(target=call, args=(many,)) for _ in range(BIG_REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    call(
        pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[units[0], "x" * (4 * 1024 * 1024 - 64)])
            ]
        )
    )
    call(
        pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[units[0], "x" * (1024 * 1024)])
            ]
        )
    )
    return {"outcomes": results, "longest_details": max(details)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--storms", type=int, default=10)
    parser.add_argument("--deadline", type=float, default=5.0, help="per call, seconds")
    parser.add_argument("--idle-calls", type=int, default=500)
    args = parser.parse_args()
    settings = Settings(
        devices=args.devices, allocations=0, warmup=0, restarts=0, hotplugs=0,
        idle_seconds=0, image=None, python=sys.executable,
    )  # fmt: skip
    node = BenchNode()
    figures = Figures()
    plugin = Plugin(node, settings)
    try:
        node.build_plain(args.devices)
        node.write_config({"include-devices": ["/dev/dm-*"], "grant-mode": "all"})
        with KubeletStub(node.plugin_dir) as kubelet:
            plugin.start(plugin.command())
            kubelet.wait_for_registration(timeout=30)
            units = sorted(kubelet.wait_for_list(lambda d: len(d) == args.devices, timeout=30))
            stub = kubelet.latest_connection().stub
            time.sleep(1.0)
            figures["rss_start_mib"] = round(rss_mib(plugin.pid), 1)
            figures["idle"] = unary_latencies(stub, units, args.deadline, args.idle_calls)

            storm = StreamStorm(plugin.socket_path, args.storms * STREAMS_PER_STORM).start()
            figures["storm"] = unary_latencies(stub, units, args.deadline, storm.done)
            figures["storm"]["seconds"] = round(time.monotonic() - storm.started, 1)
            figures["storm"].update(vars(storm.counts))
            storm.stop(60)
            figures["kubelet_stream_alive"] = kubelet.latest_connection().stream_error is None
            time.sleep(1.0)
            figures["rss_after_storms_mib"] = round(rss_mib(plugin.pid), 1)
            figures["rss_peak_storms_mib"] = round(peak_rss_mib(plugin.pid), 1)

            figures["big_inputs"] = big_inputs(stub, units)
            figures["rss_peak_big_inputs_mib"] = round(peak_rss_mib(plugin.pid), 1)
            figures["longest_log_line"] = max(map(len, plugin.log().splitlines()))
            assert plugin.process is not None
            if plugin.process.poll() is not None:
                figures["plugin_exited"] = plugin.process.returncode
                print(plugin.log()[-2000:])
                return 1
            figures["rss_end_mib"] = round(rss_mib(plugin.pid), 1)
            before = time.monotonic()
            plugin.process.send_signal(signal.SIGTERM)
            plugin.process.wait(timeout=30)
            figures["sigterm_exit_s"] = round(time.monotonic() - before, 3)
    finally:
        plugin.stop()
        node.cleanup()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
