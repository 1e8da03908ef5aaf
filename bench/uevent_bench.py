"""Kernel event -> kubelet update: how long a health change takes to reach a ListAndWatch
stream when a uevent names the device, and what a burst of thousands costs (needs root).

In one process: the fake node of the plugin bench (`plain`: N dm maps; `san`: N
multipath maps over 4N sd paths), a `DeviceState`, the plugin's `DeviceWatcher`
running its notifier, the gRPC servicer on a unix socket, and a ListAndWatch client
standing in for the kubelet. Events are datagrams in the kernel's format fed through
a socketpair into the notifier's uevent source (the fake tree's devices have no
kernel of their own to send them); everything after the socket is the plugin's code.
A socketpair queues few datagrams, so a burst is delivered as fast as the plugin
reads it.

- single: a device's sysfs fact is changed (plain: `size` to 0 and back; san: every
  path of a map `offline` and back), then one `change` event is sent for it (san:
  for its last path); latency = event sent -> the kubelet's list shows the new health.
- burst: one `change` event for every sd path (4000 at N = 1000), with one map's
  paths all gone offline among them; latency = first event sent -> the list shows that
  map Unhealthy; the plugin's CPU for the burst; rounds (targeted / full rescans).
- idle CPU of the process over a window, with the uevent socket (the kernel's own, so
  what other devices on this machine do reaches it) and without it.

    scripts/in-venv python bench/uevent_bench.py [--devices 1000] [--samples 100]
        [--idle-seconds 20] [--shape plain,san]

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.fake_node import SECTORS, BenchNode, _sd_name  # noqa: E402

from power_device_plugin.api import pb, rpc  # noqa: E402
from power_device_plugin.config import load_config  # noqa: E402
from power_device_plugin.devices import DeviceState  # noqa: E402
from power_device_plugin.metrics import PluginMetrics  # noqa: E402
from power_device_plugin.notify import WakingEvent  # noqa: E402
from power_device_plugin.server import DevicePluginServicer, add_servicer  # noqa: E402
from power_device_plugin.uevents import UeventSocket, format_uevent  # noqa: E402
from power_device_plugin.watch import DeviceWatcher, StaticConfig  # noqa: E402

PATHS_PER_MAP = 4
Devices = dict[str, str]


class Feed:
    """The kernel's side of the socketpair."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.seqnum = 0

    def source(self) -> UeventSocket:
        return UeventSocket(self.theirs, kernel_only=False)

    def change(self, name: str, number: tuple[int, int]) -> None:
        self.seqnum += 1
        extra = {
            "MAJOR": str(number[0]),
            "MINOR": str(number[1]),
            "DEVNAME": name,
            "DEVTYPE": "disk",
        }
        self.ours.send(
            format_uevent("change", f"/devices/virtual/block/{name}", "block", extra, self.seqnum)
        )


class Kubelet:
    """A ListAndWatch stream's lists, with the time each arrived."""

    def __init__(self, socket_path: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.lists: list[tuple[float, Devices]] = []
        self._changed = threading.Condition()
        self._stream = rpc.DevicePluginStub(self.channel).ListAndWatch(pb.Empty())
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._stream:
                devices = {d.ID: d.health for d in response.devices}
                with self._changed:
                    self.lists.append((time.monotonic(), devices))
                    self._changed.notify_all()
        except grpc.RpcError:
            pass

    def first_after(
        self, since: float, matches: Callable[[Devices], bool], timeout: float
    ) -> float:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for received_at, devices in self.lists:
                    if received_at >= since and matches(devices):
                        return received_at - since
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching list within {timeout} s")
                self._changed.wait(left)

    def close(self) -> None:
        self._stream.cancel()
        self.channel.close()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


class Plugin:
    """The plugin's parts in this process, on a fake node."""

    def __init__(self, node: BenchNode, feed: Feed | None) -> None:
        self.node = node
        self.state = DeviceState()
        config, _ = load_config(node.config)
        self.watcher = DeviceWatcher(
            self.state,
            StaticConfig(config),
            node.dev,
            node.sys,
            node.proc,
            uevent_source=feed.source if feed is not None else None,
        )
        self.watcher.check()
        self.stop = WakingEvent()
        self.thread = threading.Thread(target=self.watcher.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.socket_path = str(node.plugin_dir / "bench.sock")
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        add_servicer(DevicePluginServicer(self.state, PluginMetrics(), self.stop), self.server)
        self.server.add_insecure_port(f"unix://{self.socket_path}")
        self.server.start()
        self.kubelet = Kubelet(self.socket_path)
        self.kubelet.first_after(0.0, lambda d: bool(d), 30.0)
        # The watcher opens the uevent source in its first round.
        time.sleep(0.3)
        self.units = {r.host_path: r.device_id + "-r0" for r in self.state.current().records}

    def close(self) -> None:
        self.kubelet.close()
        self.stop.set()
        self.server.stop(0)
        self.thread.join(5.0)


def write(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def single_latencies(plugin: Plugin, feed: Feed, shape: str, samples: int) -> list[float]:
    node = plugin.node
    latencies: list[float] = []
    for sample in range(samples):
        index = (sample * 37) % (len(plugin.units) // 2) * 2  # spread over the maps
        unit = plugin.units[f"/dev/dm-{index}"]
        for health, bad in (("Unhealthy", True), ("Healthy", False)):
            if shape == "plain":
                write(node.sys / "block" / f"dm-{index}" / "size", "0" if bad else str(SECTORS))
                name, number = f"dm-{index}", (node.dm_major, index)
            else:
                paths = [index * PATHS_PER_MAP + p for p in range(PATHS_PER_MAP)]
                for path in paths:
                    state = node.sys / "block" / _sd_name(path) / "device" / "state"
                    write(state, "offline" if bad else "running")
                name, number = _sd_name(paths[-1]), (node.sd_major, paths[-1])
            sent = time.monotonic()
            feed.change(name, number)
            latency = plugin.kubelet.first_after(
                sent, lambda d, u=unit, h=health: d.get(u) == h, 5.0
            )
            if bad:
                latencies.append(latency)
            time.sleep(0.06)
    return latencies


def burst(plugin: Plugin, feed: Feed, count: int) -> dict[str, Any]:
    """``count`` change events, one per sd path; map 0's paths all offline among them."""
    node = plugin.node
    unit = plugin.units["/dev/dm-1"]
    for path in range(PATHS_PER_MAP, 2 * PATHS_PER_MAP):
        write(node.sys / "block" / _sd_name(path) / "device" / "state", "offline")
    rounds_before = dict(plugin.watcher.uevent_rounds)
    cpu_before = cpu_seconds()
    sent = time.monotonic()
    sender_cpu = time.thread_time()
    for index in range(count):
        feed.change(_sd_name(index % (len(plugin.units) * PATHS_PER_MAP)), (node.sd_major, index))
    sender_cpu = time.thread_time() - sender_cpu
    delivered = time.monotonic() - sent
    latency = plugin.kubelet.first_after(sent, lambda d: d.get(unit) == "Unhealthy", 30.0)
    time.sleep(1.0)  # let the last rounds finish
    cpu = cpu_seconds() - cpu_before - sender_cpu
    for path in range(PATHS_PER_MAP, 2 * PATHS_PER_MAP):
        write(node.sys / "block" / _sd_name(path) / "device" / "state", "running")
    rounds = {k: v - rounds_before[k] for k, v in plugin.watcher.uevent_rounds.items()}
    return {
        "burst_events": count,
        "burst_delivered_s": round(delivered, 3),
        "burst_to_update_s": round(latency, 3),
        "burst_cpu_s": round(cpu, 3),
        "burst_rounds_refreshed": rounds["refreshed"],
        "burst_rounds_rescanned": rounds["rescanned"],
    }


def idle_cpu(node: BenchNode, uevents: bool, seconds: float) -> tuple[float, int]:
    """% of one core over ``seconds``, and the rounds uevents caused meanwhile (the
    kernel's own socket: other block devices of this machine reach it)."""
    state = DeviceState()
    config, _ = load_config(node.config)
    watcher = DeviceWatcher(
        state, StaticConfig(config), node.dev, node.sys, node.proc, uevents=uevents
    )
    watcher.check()
    stop = WakingEvent()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(1.0)
    before, started = cpu_seconds(), time.monotonic()
    rounds_before = sum(watcher.uevent_rounds.values())
    time.sleep(seconds)
    percent = 100 * (cpu_seconds() - before) / (time.monotonic() - started)
    rounds = sum(watcher.uevent_rounds.values()) - rounds_before
    stop.set()
    thread.join(5.0)
    return round(percent, 3), rounds


def run_shape(shape: str, devices: int, samples: int, idle_seconds: float) -> dict[str, Any]:
    node = BenchNode()
    try:
        if shape == "plain":
            node.build_plain(devices)
        else:
            node.build_san(devices, PATHS_PER_MAP)
        node.write_config(
            {
                "include-devices": ["/dev/dm-*"],
                "grant-mode": "per-device",
                "scan-interval": "60s",
            }
        )
        figures: dict[str, Any] = {"shape": shape, "devices": devices}
        feed = Feed()
        plugin = Plugin(node, feed)
        try:
            latencies = single_latencies(plugin, feed, shape, samples)
            figures["event_to_update_median_ms"] = round(1000 * statistics.median(latencies), 1)
            figures["event_to_update_p99_ms"] = round(1000 * percentile(latencies, 0.99), 1)
            figures["samples"] = len(latencies)
            if shape == "san":
                figures.update(burst(plugin, feed, devices * PATHS_PER_MAP))
            figures["full_scans_during_singles"] = plugin.watcher.uevent_rounds["rescanned"]
        finally:
            plugin.close()
        if idle_seconds > 0:
            without, _ = idle_cpu(node, False, idle_seconds)
            with_uevents, rounds = idle_cpu(node, True, idle_seconds)
            figures["idle_cpu_percent_without_uevents"] = without
            figures["idle_cpu_percent_with_uevents"] = with_uevents
            figures["idle_uevent_rounds"] = rounds
        return figures
    finally:
        node.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--shape", default="plain,san")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (the fake node has real device nodes)")
    results = [
        run_shape(shape, args.devices, args.samples, args.idle_seconds)
        for shape in args.shape.split(",")
    ]
    for figures in results:
        print(f"-- {figures['shape']}, {figures['devices']} maps")
        for key, value in figures.items():
            if key not in ("shape", "devices"):
                print(f"   {key:36} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
