"""ListAndWatch streams opened and dropped in waves, as a buggy or hostile client of
the plugin socket would: used by tests and bench/rpc_storm.py.

A wave opens its streams at once, spread over CHANNELS connections of their own (so a
bound per connection does not hide them from the plugin), waits until each one was
answered, ended or refused, or WAVE_SECONDS, and then drops them all: while a wave
lasts, its answered streams stay open.

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
CHANNELS = 10
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


async def _wave(stubs: list[rpc.DevicePluginStub], size: int, counts: StormCounts) -> None:
    calls = [stubs[n % len(stubs)].ListAndWatch(pb.Empty()) for n in range(size)]
    counts.opened += size

    async def first(call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
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
        if message is grpc.aio.EOF:
            counts.ended_by_plugin += 1
        else:
            counts.answered += 1

    await asyncio.gather(*(first(call) for call in calls))
    for call in calls:
        call.cancel()


async def _storm(socket: Path, streams: int, stop: threading.Event, counts: StormCounts) -> None:
    # A private subchannel pool each: one connection per channel.
    channels = [
        grpc.aio.insecure_channel(
            f"unix://{socket}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(CHANNELS)
    ]
    try:
        stubs = [rpc.DevicePluginStub(c) for c in channels]  # type: ignore[no-untyped-call]
        while counts.opened < streams and not stop.is_set():
            await _wave(stubs, min(WAVE, streams - counts.opened), counts)
    finally:
        for channel in channels:
            await channel.close()


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
