"""What an all-mode Allocate answer of N DeviceSpecs costs: built per call, cached, pre-serialised.

In process, with the plugin's real stubs and `server.container_response`:

- build: `container_response(grant)` + `AllocateResponse(...)` per call,
- serialise: `SerializeToString()` of that message (gRPC does this per call),
- then through gRPC on a unix socket, client p50/p99 of Allocate answered by
  (a) building per call (today), (b) returning one cached message object,
  (c) a generic handler whose response serializer is the identity over cached bytes.

    scripts/in-venv python bench/response_cost.py [--devices 1000] [--calls 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from power_device_plugin.api import pb, rpc  # noqa: E402
from power_device_plugin.devices import ContainerGrant, DeviceSpecGrant  # noqa: E402
from power_device_plugin.server import container_response  # noqa: E402

METHOD = "/v1beta1.DevicePlugin/Allocate"


def per_call_ms(action: Callable[[], object], calls: int) -> float:
    for _ in range(min(calls, 50)):
        action()
    started = time.perf_counter()
    for _ in range(calls):
        action()
    return (time.perf_counter() - started) * 1000 / calls


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def client_latency(socket: str, calls: int) -> dict[str, float]:
    channel = grpc.insecure_channel(f"unix://{socket}")
    stub = rpc.DevicePluginStub(channel)
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["x"])]
    )
    for _ in range(100):
        stub.Allocate(request, timeout=5)
    samples = []
    for _ in range(calls):
        before = time.perf_counter()
        stub.Allocate(request, timeout=5)
        samples.append((time.perf_counter() - before) * 1000)
    channel.close()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }


def serve(handler: grpc.GenericRpcHandler | None, servicer: Any, socket: str) -> grpc.Server:
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    if handler is not None:
        server.add_generic_rpc_handlers((handler,))
    else:
        rpc.add_DevicePluginServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    grant = ContainerGrant(
        devices=tuple(
            DeviceSpecGrant(f"/dev/dm-{i}", f"/dev/dm-{i}", "rw") for i in range(args.devices)
        )
    )

    def build() -> pb.AllocateResponse:
        return pb.AllocateResponse(container_responses=[container_response(grant)])

    cached = build()
    cached_bytes = cached.SerializeToString()
    figures: dict[str, Any] = {
        "devices": args.devices,
        "response_bytes": len(cached_bytes),
        "build_ms": round(per_call_ms(build, 300), 3),
        "serialise_ms": round(per_call_ms(cached.SerializeToString, 300), 3),
        "parse_ms": round(
            per_call_ms(lambda: pb.AllocateResponse.FromString(cached_bytes), 300), 3
        ),
    }

    class PerCall(rpc.DevicePluginServicer):  # type: ignore[misc]
        def Allocate(self, request: object, context: object) -> pb.AllocateResponse:
            return build()

    class Cached(rpc.DevicePluginServicer):  # type: ignore[misc]
        def Allocate(self, request: object, context: object) -> pb.AllocateResponse:
            return cached

    def identity(data: bytes) -> bytes:
        return data

    preserialised = grpc.method_handlers_generic_handler(
        "v1beta1.DevicePlugin",
        {
            "Allocate": grpc.unary_unary_rpc_method_handler(
                lambda request, context: cached_bytes,
                request_deserializer=pb.AllocateRequest.FromString,
                response_serializer=identity,
            )
        },
    )
    for name, handler, servicer in (
        ("grpc_build_per_call", None, PerCall()),
        ("grpc_cached_message", None, Cached()),
        ("grpc_preserialised_bytes", preserialised, None),
    ):
        socket = f"/tmp/response-cost-{os.getpid()}.sock"
        server = serve(handler, servicer, socket)
        try:
            figures[name] = client_latency(socket, args.calls)
        finally:
            server.stop(0).wait()
            if os.path.exists(socket):
                os.unlink(socket)
    print(json.dumps({"bench": "response_cost", **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
