"""Plugin figures on a fake node of N `dm-*` devices, against the goals of issue 10 (needs root).

Each case runs the real plugin in its own process (or, with `--image`, the plugin
image the way the DaemonSet runs it) against the kubelet stand-in of the
integration tests, and measures from outside:

- first full list after start (process started -> ListAndWatch with N units),
- RSS after that list (VmRSS of the plugin's process, from the host's /proc),
  and again once settled (after the plugin's first 5 s idle round),
- Allocate p50/p99 through a gRPC client on the plugin's unix socket,
- 1000 concurrent Allocates (8 threads x 125) and how many failed,
- kubelet restart -> re-registration (max of a few),
- hotplug: node created -> update, node removed -> update,
- idle CPU (% of one core) over a window, from utime+stime in /proc/PID/stat.

Cases: `all` (the default grant mode: every unit grants all N devices, N
DeviceSpecs per Allocate), `per-device`, and with `--san` the SAN-node scale (N
multipath maps over 4N `sd*` paths, include `/dev/dm-*`, default mode).

    scripts/in-venv python bench/plugin_bench.py [--devices 1000] [--mode both] [--san]
        [--image 127.0.0.1:5000/power-dev-plugin:TAG] [--quick] [--json-only]

Prints a table (figure, value, goal, met / NOT met, the Go plugin's figure as
measured earlier in issue 10) and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from bench.fake_node import BenchNode  # noqa: E402
from tests.integration.kubelet_stub import KubeletStub  # noqa: E402
from tests.integration.plugin_process import free_port  # noqa: E402

from power_device_plugin.api import pb, rpc  # noqa: E402

SOCKET_NAME = "pdp-bench.sock"
INCLUDE = ["/dev/dm-*"]
SAN_PATHS_PER_MAP = 4
CONCURRENT_THREADS = 8
CONCURRENT_PER_THREAD = 125
# After the first list: the plugin's idle rounds come every 5 s.
SETTLE_SECONDS = 5.5


def byte_compiled_copy(source: Path, dest: Path, compile_argv: list[str], inside: str) -> Path:
    """A copy of the plugin package with its bytecode, compiled by the interpreter that
    will run it (`compile_argv`, seeing `dest` as `inside`): what an installed package
    and the image have. Run from the tree as it is, with PYTHONDONTWRITEBYTECODE set
    (scripts/in-venv), every start would compile each module again and be measured
    doing so."""
    shutil.copytree(
        source / "power_device_plugin",
        dest / "power_device_plugin",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [*compile_argv, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", inside],
        check=True,
        capture_output=True,
    )
    return dest


# The goals: (figure, comparison, bound). "<=" unless said otherwise.
GOALS: dict[str, dict[str, float]] = {
    "all": {
        "allocate_p50_ms": 0.91,  # at or below Go on the same workload
        "allocate_p99_ms": 1.55,
        "rss_mib": 40.0,
        "idle_cpu_percent": 0.2,
        "first_list_s": 0.3,
        "first_list_from_process_s": 0.3,
        "reregistration_s": 1.0,
        "hotplug_add_s": 1.0,
        "hotplug_remove_s": 1.0,
        "concurrent_errors": 0,
    },
    "per-device": {
        "allocate_p99_ms": round(1.2 * 0.84, 3),  # within 1.2x of Go's p99
        "rss_mib": 40.0,
        "idle_cpu_percent": 0.2,
        "first_list_s": 0.3,
        "first_list_from_process_s": 0.3,
        "reregistration_s": 1.0,
        "hotplug_add_s": 1.0,
        "hotplug_remove_s": 1.0,
        "concurrent_errors": 0,
    },
    "san": {
        "idle_cpu_percent": 0.3,
        "hotplug_add_s": 1.0,
        "hotplug_remove_s": 1.0,
        "first_list_s": 0.5,
        "first_list_from_process_s": 0.5,
        "rss_mib": 45.0,
    },
}

# squat/generic-device-plugin on the same workloads, measured earlier (issue 10), not in this run.
GO_REFERENCE: dict[str, dict[str, float]] = {
    "all": {
        "allocate_p50_ms": 0.91,
        "allocate_p99_ms": 1.55,
        "rss_mib": 162.0,
        "idle_cpu_percent": 13.9,
        "first_list_s": 0.54,
        "reregistration_s": 5.47,
    },
    "per-device": {
        "allocate_p50_ms": 0.45,
        "allocate_p99_ms": 0.84,
        "rss_mib": 20.2,
        "idle_cpu_percent": 0.15,
        "first_list_s": 0.03,
        "reregistration_s": 5.59,
    },
    "san": {},
}

UNITS = {
    "allocate_p50_ms": "ms",
    "allocate_p99_ms": "ms",
    "options_p50_ms": "ms",
    "concurrent_errors": "",
    "concurrent_wall_s": "s",
    "rss_mib": "MiB",
    "rss_settled_mib": "MiB",
    "rss_after_burst_mib": "MiB",
    "rss_end_mib": "MiB",
    "idle_cpu_percent": "%",
    "first_list_s": "s",
    "first_list_from_process_s": "s",
    "reregistration_s": "s",
    "hotplug_add_s": "s",
    "hotplug_remove_s": "s",
    "threads": "",
    "threads_after_burst": "",
}


@dataclass(frozen=True)
class Settings:
    devices: int
    allocations: int
    warmup: int
    restarts: int
    hotplugs: int
    idle_seconds: float
    image: str | None
    python: str
    plugin_env: tuple[tuple[str, str], ...] = ()  # extra environment of the plugin
    image_cpus: str | None = None  # docker --cpus; the DaemonSet's limit is 0.2
    # Run this tree's src/ (and the dev venv's pure-Python inotify_simple) in the image,
    # ahead of the code the image was built with: the image's runtime, this code.
    image_src: bool = False


# -- the process under test -----------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def process_start_monotonic(pid: int) -> float:
    """When `pid` was started, on this process's monotonic clock (10 ms resolution).

    /proc/<pid>/stat gives the start in clock ticks since boot (field 22); the offset
    between the boot clock and the monotonic clock is read here. For an image run this
    leaves out what `docker run` spends before the container's process exists."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    started_since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    offset = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
    return started_since_boot - offset


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def cpu_seconds(pid: int) -> float:
    # After the command name (which may hold spaces): utime, stime are fields 14, 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def supports_host_proc(help_text: str) -> bool:
    return "--host-proc" in help_text


class Plugin:
    """A started plugin: a local `python -m power_device_plugin serve` or a container."""

    def __init__(self, node: BenchNode, settings: Settings) -> None:
        self.node = node
        self.settings = settings
        self.port = free_port()
        self.log_path = node.root / "plugin.log"
        self.container: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._source: Path | None = None

    def source(self) -> Path:
        """This tree's src/ (or PDP_BENCH_SRC), byte-compiled for the runtime that runs it."""
        if self._source is None:
            source = Path(os.environ.get("PDP_BENCH_SRC", ROOT / "src"))
            dest = self.node.root / "src"
            if self.settings.image:
                compile_argv = [
                    "docker", "run", "--rm", "--network", "none",
                    "-v", f"{dest}:/bench/src", "--entrypoint", "python3", self.settings.image,
                ]  # fmt: skip
                self._source = byte_compiled_copy(source, dest, compile_argv, "/bench/src")
            else:
                self._source = byte_compiled_copy(source, dest, [self.settings.python], str(dest))
        return self._source

    @property
    def socket_path(self) -> Path:
        return self.node.plugin_dir / SOCKET_NAME

    def _local_command(self) -> list[str]:
        environment = {**os.environ, "PYTHONPATH": str(self.source())}
        base = [self.settings.python, "-m", "power_device_plugin", "serve"]
        help_text = subprocess.run(
            [*base, "--help"], capture_output=True, text=True, env=environment, check=False
        ).stdout
        extra = [f"--host-proc={self.node.proc}"] if supports_host_proc(help_text) else []
        if "--cdi-dir" in help_text:
            # The CDI spec is written as on a node, into the bench's own directory.
            extra.append(f"--cdi-dir={self.node.root / 'cdi'}")
        return [
            *base,
            f"--plugin-dir={self.node.plugin_dir}",
            f"--dev-root={self.node.dev}",
            f"--sys-root={self.node.sys}",
            f"--config={self.node.config}",
            f"--socket-name={SOCKET_NAME}",
            f"--listen=127.0.0.1:{self.port}",
            *extra,
        ]

    def _image_command(self, image: str) -> list[str]:
        help_text = subprocess.run(
            ["docker", "run", "--rm", image, "serve", "--help"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        host_proc = supports_host_proc(help_text)
        node = self.node
        # As manifests/base/daemonset.yaml runs it: read-only root, all capabilities
        # dropped, no privilege escalation, its env and memory limit, the host's
        # /dev and /sys read-only under /host, the config as a directory mount.
        command = [
            "docker", "run", "-d", "--network", "host",
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--memory", "128m",
            *(["--cpus", self.settings.image_cpus] if self.settings.image_cpus else []),
            "-e", "PYTHONDONTWRITEBYTECODE=1", "-e", "MALLOC_ARENA_MAX=2",
            *[f"--env={k}={v}" for k, v in self.settings.plugin_env],
            "-v", f"{node.plugin_dir}:/var/lib/kubelet/device-plugins",
            "-v", f"{node.dev}:/host/dev:ro",
            "-v", f"{node.sys}:/host/sys:ro",
            "-v", f"{node.config_dir}:/etc/power-device-plugin:ro",
            # The DaemonSet's read-write CDI spec directory: the spec is written at start.
            "-v", f"{node.root / 'cdi'}:/var/run/cdi",
        ]  # fmt: skip
        if self.settings.image_src:
            import inotify_simple  # the dev venv has it: a single pure-Python file

            command += [
                "-v", f"{self.source()}:/bench/src:ro",
                "-v", f"{inotify_simple.__file__}:/bench/deps/inotify_simple.py:ro",
                "-e", "PYTHONPATH=/bench/src:/bench/deps:/opt/power-device-plugin/site-packages",
            ]  # fmt: skip
        if host_proc:
            command += ["-v", f"{node.proc}:/host/proc:ro"]
        command += [
            image,
            "serve",
            "--config=/etc/power-device-plugin/config.json",
            "--plugin-dir=/var/lib/kubelet/device-plugins",
            "--dev-root=/host/dev",
            "--sys-root=/host/sys",
            f"--socket-name={SOCKET_NAME}",
            f"--listen=127.0.0.1:{self.port}",
            "--log-format=json",
            "--log-level=info",
        ]
        if host_proc:
            command.append("--host-proc=/host/proc")
        return command

    def command(self) -> list[str]:
        if self.settings.image:
            return self._image_command(self.settings.image)
        return self._local_command()

    def start(self, command: list[str]) -> float:
        """Start it; returns the monotonic time it was started."""
        if self.settings.image:
            started = time.monotonic()
            self.container = subprocess.run(
                command, capture_output=True, text=True, check=True
            ).stdout.strip()
            return started
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
        environment["PYTHONPATH"] = str(self.source())
        environment.update(dict(self.settings.plugin_env))
        with self.log_path.open("wb") as log_file:
            started = time.monotonic()
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=environment
            )
        return started

    @property
    def pid(self) -> int:
        """The host PID of the plugin's Python process."""
        if self._pid is None:
            if self.process is not None:
                self._pid = self.process.pid
            else:
                inspected = subprocess.run(
                    ["docker", "inspect", "-f", "{{.State.Pid}}", str(self.container)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                self._pid = _largest_descendant(int(inspected.strip()))
        return self._pid

    def log(self) -> str:
        if self.container:
            return subprocess.run(
                ["docker", "logs", self.container], capture_output=True, text=True, check=False
            ).stdout
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.container:
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True, check=False)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _largest_descendant(pid: int) -> int:
    """The container's main process, or its child with the largest RSS (an init in front)."""
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(c) for c in children_file.read_text().split()] if children_file.exists() else []
    if not children:
        return pid
    return max([pid, *children], key=rss_mib)


# -- measurements -------------------------------------------------------------


def _count_is(count: int) -> Callable[[dict[str, str]], bool]:
    return lambda devices: len(devices) == count


def list_seen(
    kubelet: KubeletStub, count: int | None, after: float, timeout: float = 60.0
) -> float:
    """When the newest connection first received a list at or after `after` (of `count` units).

    `count` None takes any list: a removed device stays listed (Unhealthy) while the
    config still selects it, so a removal shows as an update, not as a shorter list.
    The stand-in stamps each list as it arrives, so polling here adds no error.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connections = kubelet.connections
        if connections:
            for received_at, devices in list(connections[-1].lists):
                if received_at >= after and (count is None or len(devices) == count):
                    return received_at
        time.sleep(0.005)
    raise TimeoutError(f"no list of {count or 'any number of'} units within {timeout}s")


def allocate_latency(
    stub: rpc.DevicePluginStub, ids: list[str], settings: Settings
) -> dict[str, float]:
    requests = [
        pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[i])])
        for i in ids
    ]
    for call in range(settings.warmup):
        stub.Allocate(requests[call % len(requests)], timeout=5)
    latencies = []
    for call in range(settings.allocations):
        before = time.perf_counter()
        stub.Allocate(requests[call % len(requests)], timeout=5)
        latencies.append((time.perf_counter() - before) * 1000)
    baseline = []
    for _ in range(min(settings.allocations, 500)):
        before = time.perf_counter()
        stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        baseline.append((time.perf_counter() - before) * 1000)
    return {
        "allocate_p50_ms": statistics.median(latencies),
        "allocate_p99_ms": percentile(latencies, 0.99),
        "options_p50_ms": statistics.median(baseline),  # what the gRPC round trip alone costs
    }


def concurrent_allocates(stub: rpc.DevicePluginStub, ids: list[str]) -> dict[str, float]:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for call in range(CONCURRENT_PER_THREAD):
            device_id = ids[(offset * CONCURRENT_PER_THREAD + call) % len(ids)]
            request = pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=[device_id])]
            )
            try:
                stub.Allocate(request, timeout=10)
            except grpc.RpcError as error:
                with lock:
                    errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CONCURRENT_THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"concurrent_errors": len(errors), "concurrent_wall_s": time.monotonic() - started}


def reregistration(kubelet: KubeletStub, count: int, settings: Settings) -> float:
    times = []
    for _ in range(settings.restarts):
        restarted_at = kubelet.restart()
        registration = kubelet.wait_for_registration(len(kubelet.registrations) + 1, timeout=15)
        times.append(registration.received_at - restarted_at)
        kubelet.wait_for_list(_count_is(count), timeout=15)
    return max(times)


def granted_paths(stub: rpc.DevicePluginStub, unit: str) -> set[str]:
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=[unit])]
    )
    response = stub.Allocate(request, timeout=5)
    return {spec.host_path for spec in response.container_responses[0].devices}


def removal_seen(
    kubelet: KubeletStub, plugin: Plugin, mode: str, path: str, after: float, timeout: float = 15.0
) -> float:
    """When the plugin showed that `path` is gone.

    per-device: the unit turns Unhealthy, so a new list arrives. all: the units
    stay Healthy (the others still grant), so no list is due; the removal shows
    in the answer: Allocate of a unit stops granting the path (polled every 10 ms).
    """
    if mode != "all":
        return list_seen(kubelet, None, after, timeout)
    channel = grpc.insecure_channel(f"unix://{plugin.socket_path}")
    stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
    unit = sorted(kubelet.lists()[-1])[0]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if path not in granted_paths(stub, unit):
                return time.monotonic()
            new_list = [t for t, _ in list(kubelet.latest_connection().lists) if t >= after]
            if new_list:
                return new_list[0]
            time.sleep(0.01)
    finally:
        channel.close()
    raise TimeoutError(f"{path} still granted {timeout}s after its node was removed")


def hotplug(
    kubelet: KubeletStub, node: BenchNode, plugin: Plugin, mode: str, settings: Settings
) -> dict[str, float]:
    added, removed = [], []
    for round_ in range(settings.hotplugs):
        index = settings.devices + round_  # a free dm minor, no paths
        created_at = time.monotonic()
        node.add_dm(index)
        added.append(list_seen(kubelet, None, created_at, timeout=15) - created_at)
        time.sleep(0.5)
        removed_at = time.monotonic()
        node.remove_dm(index)
        seen = removal_seen(kubelet, plugin, mode, f"/dev/dm-{index}", removed_at)
        removed.append(seen - removed_at)
        time.sleep(0.5)
    return {"hotplug_add_s": max(added), "hotplug_remove_s": max(removed)}


def idle_cpu(pid: int, seconds: float) -> float:
    time.sleep(1.0)  # let the last update settle
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)


def run_case(case: str, settings: Settings) -> dict[str, float]:
    """One plugin process on a fresh fake node; every figure of the case."""
    node = BenchNode()
    figures: dict[str, float] = {}
    try:
        if case == "san":
            node.build_san(settings.devices, SAN_PATHS_PER_MAP)
            mode = "all"
        else:
            node.build_plain(settings.devices)
            mode = case
        node.write_config({"include-devices": INCLUDE, "grant-mode": mode})
        count = settings.devices
        plugin = Plugin(node, settings)
        command = plugin.command()
        with KubeletStub(node.plugin_dir) as kubelet:
            started = plugin.start(command)
            try:
                kubelet.wait_for_registration(timeout=60)
                first_list = list_seen(kubelet, count, started)
                figures["first_list_s"] = first_list - started
                figures["first_list_from_process_s"] = first_list - process_start_monotonic(
                    plugin.pid
                )
                devices = kubelet.wait_for_list(_count_is(count), timeout=5)
                time.sleep(1.0)  # start-up garbage settles
                figures["rss_mib"] = rss_mib(plugin.pid)
                figures["threads"] = thread_count(plugin.pid)
                # Past the lifecycle's first 5 s safety round (which trims the heap).
                time.sleep(SETTLE_SECONDS)
                figures["rss_settled_mib"] = rss_mib(plugin.pid)
                if case != "san":
                    ids = sorted(devices)
                    channel = grpc.insecure_channel(f"unix://{plugin.socket_path}")
                    stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
                    figures.update(allocate_latency(stub, ids, settings))
                    figures.update(concurrent_allocates(stub, ids))
                    channel.close()
                    figures["rss_after_burst_mib"] = rss_mib(plugin.pid)
                    figures["threads_after_burst"] = thread_count(plugin.pid)
                    figures["reregistration_s"] = reregistration(kubelet, count, settings)
                figures.update(hotplug(kubelet, node, plugin, mode, settings))
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


# -- report ---------------------------------------------------------------------


def met(goal: float, value: float) -> str:
    return "met" if value <= goal else "NOT met"


def table(results: dict[str, dict[str, float]], settings: Settings) -> str:
    runner = f"image {settings.image}" if settings.image else f"python {settings.python}"
    lines = [
        f"plugin bench: {settings.devices} devices, run by {runner}",
        "Go column: squat/generic-device-plugin as measured earlier (issue 10), not in this run",
        f"{'case':<11} {'figure':<25} {'value':>10} {'unit':<4} {'goal':>8}  "
        f"{'verdict':<8} {'Go (earlier)':>12}",
    ]
    for case, figures in results.items():
        for name, value in figures.items():
            goal = GOALS[case].get(name)
            go = GO_REFERENCE[case].get(name)
            lines.append(
                f"{case:<11} {name:<25} {value:>10.3f} {UNITS.get(name, ''):<4} "
                f"{'' if goal is None else f'<= {goal:g}':>8}  "
                f"{'' if goal is None else met(goal, value):<8} "
                f"{'' if go is None else f'{go:g}':>12}"
            )
    return "\n".join(lines)


def settings_from(args: argparse.Namespace) -> Settings:
    env = tuple(tuple(item.split("=", 1)) for item in args.plugin_env)
    extra = {"plugin_env": env, "image_cpus": args.image_cpus, "image_src": args.image_src}
    if args.quick:
        return Settings(args.devices, 300, 50, 2, 1, 5.0, args.image, args.python, **extra)
    return Settings(args.devices, 2000, 200, 5, 3, 20.0, args.image, args.python, **extra)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--mode", choices=("all", "per-device", "both"), default="both")
    parser.add_argument("--san", action="store_true", help="also the SAN-node scale case")
    parser.add_argument("--image", help="run this plugin image (amd64) as the DaemonSet does")
    parser.add_argument(
        "--plugin-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the plugin (e.g. MALLOC_ARENA_MAX=2); repeatable",
    )
    parser.add_argument(
        "--image-cpus", help="docker --cpus for --image (the DaemonSet's limit is 0.2)"
    )
    parser.add_argument(
        "--image-src",
        action="store_true",
        help="with --image: run this tree's src/ (and inotify_simple) on the image's runtime",
    )
    parser.add_argument("--quick", action="store_true", help="short windows, for a smoke run")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs the plugin (local runs)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("plugin_bench: needs root (device nodes are made with os.mknod)", file=sys.stderr)
        return 2
    settings = settings_from(args)
    cases = ["all", "per-device"] if args.mode == "both" else [args.mode]
    if args.san:
        cases.append("san")
    results: dict[str, dict[str, float]] = {}
    for case in cases:
        results[case] = run_case(case, settings)
    if not args.json_only:
        print(table(results, settings))
    record: dict[str, Any] = {
        "bench": "plugin",
        "devices": settings.devices,
        "quick": args.quick,
        "runner": f"image:{settings.image}" if settings.image else "venv",
        "plugin_env": dict(settings.plugin_env),
        "image_cpus": settings.image_cpus,
        "image_src": settings.image_src,
        **results,
        "goals": {case: GOALS[case] for case in results},
        "go_earlier": {case: GO_REFERENCE[case] for case in results},
    }
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
