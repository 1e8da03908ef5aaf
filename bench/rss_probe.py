"""What each import and each thread costs in RSS, in a fresh interpreter (no root needed).

    python bench/rss_probe.py            # run by the interpreter to measure
    python bench/rss_probe.py --json     # one JSON line only

Steps, cumulative, each figure VmRSS in MiB after the step: bare interpreter,
`import grpc`, protobuf + the plugin's generated stubs, `prometheus_client`,
the plugin package, 8 idle threads, a started grpc server with a 16-worker
pool, 16 concurrent calls into it (so every worker ran), and the same after a
malloc_trim. Run it under `MALLOC_ARENA_MAX=2` to see what glibc's per-thread
arenas cost.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 2)
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> int:
    steps: dict[str, float] = {"bare": rss_mib()}
    import grpc

    steps["import grpc"] = rss_mib()
    import google.protobuf

    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from power_device_plugin.api import pb, rpc

    steps["+ protobuf + stubs"] = rss_mib()
    import prometheus_client  # noqa: F401

    steps["+ prometheus_client"] = rss_mib()
    import power_device_plugin.cli
    import power_device_plugin.lifecycle  # noqa: F401

    steps["+ plugin modules"] = rss_mib()
    stop = threading.Event()
    idle = [threading.Thread(target=stop.wait, daemon=True) for _ in range(8)]
    for thread in idle:
        thread.start()
    steps["+ 8 idle threads"] = rss_mib()

    from concurrent.futures import ThreadPoolExecutor

    class Options(rpc.DevicePluginServicer):  # type: ignore[misc]
        def GetDevicePluginOptions(self, request: object, context: object) -> object:
            release.wait(2)
            return pb.DevicePluginOptions()

    release = threading.Event()
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    rpc.add_DevicePluginServicer_to_server(Options(), server)
    socket = f"/tmp/rss-probe-{os.getpid()}.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    steps["+ grpc server (16 workers, idle)"] = rss_mib()
    channel = grpc.insecure_channel(f"unix://{socket}")
    stub = rpc.DevicePluginStub(channel)
    futures = [stub.GetDevicePluginOptions.future(pb.Empty()) for _ in range(16)]
    threading.Timer(0.5, release.set).start()
    for future in futures:
        future.result()
    steps["+ 16 concurrent calls (all workers ran)"] = rss_mib()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        steps["+ malloc_trim(0)"] = rss_mib()
    except OSError:
        pass
    channel.close()
    server.stop(0).wait()
    os.unlink(socket) if os.path.exists(socket) else None
    record = {
        "bench": "rss_probe",
        "python": sys.version.split()[0],
        "grpc": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX", ""),
        "steps_mib": steps,
        "threads": threading.active_count(),
    }
    if "--json" not in sys.argv:
        previous = 0.0
        for name, value in steps.items():
            print(f"{name:<42} {value:8.2f} MiB  (+{value - previous:.2f})")
            previous = value
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
