"""ListAndWatch streams opened and dropped in waves on one channel, as a buggy or
hostile client of the plugin socket would: used by tests and bench/rpc_storm.py.
A wave opens its streams at once and drops each one as soon as it was answered.

The storm is a `grpc.aio` client in a thread of its own, so that a wave can wait for
each stream's first list (or its end) with a deadline, without a thread per stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from power_device_plugin.api import pb, rpc

WAVE = 100
# How long a wave waits for its streams' first lists before it drops them anyway.
WAVE_SECONDS = 2.0


@dataclass
class StormCounts:
    opened: int = 0
    answered: int = 0  # got a first list
    ended_by_plugin: int = 0  # RESOURCE_EXHAUSTED: more streams than the plugin keeps
    refused: int = 0  # UNAVAILABLE: refused by HTTP/2 (more calls than one connection may have)
    unanswered: int = 0  # none of these within WAVE_SECONDS (a starved stream)
    other_errors: int = 0


async def _wave(stub: rpc.DevicePluginStub, size: int, counts: StormCounts) -> None:
    calls = [stub.ListAndWatch(pb.Empty()) for _ in range(size)]
    counts.opened += size

    async def first(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        # Each stream is dropped as soon as it was answered (or ended, or given up on).
        try:
            message = await asyncio.wait_for(call.read(), WAVE_SECONDS)
        except asyncio.TimeoutError:
            counts.unanswered += 1
            return
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                counts.ended_by_plugin += 1
            elif error.code() == grpc.StatusCode.UNAVAILABLE:
                counts.refused += 1
            else:
                counts.other_errors += 1
            return
        finally:
            call.cancel()
        if message is grpc.aio.EOF:
            counts.ended_by_plugin += 1
        else:
            counts.answered += 1

    await asyncio.gather(*(first(call) for call in calls))


async def _storm(socket: Path, streams: int, stop: threading.Event, counts: StormCounts) -> None:
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
        while counts.opened < streams and not stop.is_set():
            await _wave(stub, min(WAVE, streams - counts.opened), counts)


class StreamStorm:
    """Opens `streams` streams on `socket` in waves of WAVE; `done` is set at the end."""

    def __init__(self, socket: Path, streams: int) -> None:
        self.counts = StormCounts()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(socket, streams), name="stream-storm", daemon=True
        )

    def _run(self, socket: Path, streams: int) -> None:
        try:
            asyncio.run(_storm(socket, streams, self._stop, self.counts))
        finally:
            self.done.set()

    def start(self) -> StreamStorm:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)
