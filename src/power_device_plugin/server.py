"""The `v1beta1.DevicePlugin` gRPC service, served on `grpc.aio`.

It only publishes snapshots and answers from the current one: no scans and no
config reads happen on a call path. New snapshots arrive through a
`DeviceState` subscription and are pushed into every open ListAndWatch stream.

Why asyncio. With the thread-pool server every open ListAndWatch stream held one
of the pool's workers for as long as it was open, so a few extra streams beside
the kubelet's left Allocate waiting in the pool's queue (4 workers, 3 extra
streams: DEADLINE_EXCEEDED after 5 s; 1000 streams opened: 106 first lists in
8 s). More workers only move the cliff and cost a thread each. On `grpc.aio` a
stream is a coroutine waiting on an `asyncio.Event`, not a thread: every call,
unary or stream, is answered by the one event-loop thread, and nothing an
answer does blocks (answers come from the snapshot in memory, pre-serialised).
Reserved unary workers on the thread-pool server were the other option; the
sync server hands every call to one FIFO executor, so reserving workers means
telling streams from unary calls inside the executor, which the API does not
offer. Measured with `bench/rpc_storm.py` (docs/plugin.md, Performance):
Allocate p99 under 1 ms idle and a few ms while 1000 streams open and drop.

Bounds, so that no client of the socket can make the plugin grow or starve:

- At most ``MAX_STREAMS`` ListAndWatch streams are open. A new stream beyond it
  is refused (``RESOURCE_EXHAUSTED``) before anything is sent, except the
  kubelet's: the first stream opened after each Register and a
  GetDevicePluginOptions call from the same user agent (what the kubelet does)
  is taken to be the kubelet's, and it ends the oldest other stream instead. Refusing the newest
  extra stream costs the least under a storm (no list sent, no other stream
  woken): 1.0-1.1 s of the plugin's CPU per 3000 streams, against 1.2-1.3 s when
  the newest won and the oldest extra stream was ended.
- A request is at most ``MAX_REQUEST_BYTES`` (the largest the kubelet can send
  is ~0.8 MB: 10 000 units of at most 79 characters), an Allocate has at most
  ``MAX_CONTAINER_REQUESTS`` container requests and its answer at most
  ``MAX_ANSWER_BYTES`` (the kubelet takes 4 MiB): beyond, ``INVALID_ARGUMENT``.
- Error details and log lines quote client input cut to a short prefix
  (``devices.quoted``) and say how many items were bad.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from power_device_plugin import cdi
from power_device_plugin.api import pb
from power_device_plugin.devices import MAX_UNITS as MAX_IDS_PER_CONTAINER
from power_device_plugin.devices import (
    AdvertisedDevice,
    AllocationError,
    ContainerGrant,
    DeviceSnapshot,
    DeviceState,
    GrantKey,
    quoted,
)
from power_device_plugin.metrics import PluginMetrics

log = logging.getLogger(__name__)

# How long the snapshot feed waits for a change before it looks again at whether
# it was closed. A change and closing both wake it at once: this is only a safety net.
STREAM_WAKE_SECONDS = 30.0

SERVICE_NAME = "v1beta1.DevicePlugin"

# ListAndWatch streams open at once. The kubelet holds one (two for a moment while it
# restarts); the rest is room for tools (a debugging client, the bench).
MAX_STREAMS = 16
# Calls in flight on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). A client
# opening a thousand streams at once on one connection gets them through this many at
# a time (the rest wait in the client or are refused, UNAVAILABLE), so the event loop
# never has more than ~32 x 0.3 ms of them in front of the kubelet's Allocate. The
# kubelet has its stream and one call in flight (it admits pods one at a time); 8 was
# tried and refused some of the bench's 8 concurrent Allocates (grpc's Python client
# does not always wait for a free stream).
MAX_CALLS_PER_CONNECTION = 32
# The largest request taken off the wire. The kubelet's largest: a
# GetPreferredAllocation naming every unit, 10 000 x (79 + 2) bytes ~ 0.8 MB.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
# Container requests in one Allocate. The kubelet sends one per call (one container).
MAX_CONTAINER_REQUESTS = 256
# The largest Allocate answer: what a gRPC client takes by default (the kubelet's).
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# Refused or ended calls are summed up in one log line at most this often.
LOG_EVERY_SECONDS = 10.0

_ERROR_CODES = {
    "unknown": grpc.StatusCode.INVALID_ARGUMENT,
    "unhealthy": grpc.StatusCode.FAILED_PRECONDITION,
}


class TooManyParts:
    """What a request's deserialiser gives instead of a message with more than
    ``limit`` container requests: it is refused without being parsed (parsing
    100 000 container requests costs ~20 MiB and tens of milliseconds)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint at `pos`: (value, position after it); past the end when cut short."""
    result = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    return result, len(data) + 1


def more_top_level_fields(data: bytes, limit: int) -> bool:
    """Whether the serialised message `data` has more than `limit` top-level fields
    (repeated ones counted once per element); reads at most ``limit + 1`` of them.
    Malformed data answers False: protobuf's parser then says what is wrong."""
    pos = count = 0
    while pos < len(data):
        count += 1
        if count > limit:
            return True
        tag, pos = _read_varint(data, pos)
        wire_type = tag & 7
        if wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            return False
    return False


R = TypeVar("R")


def bounded_parts(parse: Callable[[bytes], R], limit: int) -> Callable[[bytes], R | TooManyParts]:
    """A request deserialiser that gives :class:`TooManyParts` for more than `limit`
    container requests (the only top-level field of the requests it is used for)."""

    def deserialize(data: bytes) -> R | TooManyParts:
        if more_top_level_fields(data, limit):
            return TooManyParts(limit)
        return parse(data)

    return deserialize


class Refused(Exception):
    """A call answered with an error status; nothing was granted."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def list_response(devices: Sequence[AdvertisedDevice]) -> pb.ListAndWatchResponse:
    """The whole advertised list, as ListAndWatch sends it."""
    return pb.ListAndWatchResponse(
        devices=[
            pb.Device(
                ID=device.id,
                health=device.health,
                topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in device.numa_nodes])
                if device.numa_nodes
                else None,
            )
            for device in devices
        ]
    )


def container_response(grant: ContainerGrant) -> pb.ContainerAllocateResponse:
    """One container's grant in wire form."""
    return pb.ContainerAllocateResponse(
        envs=dict(grant.envs),
        annotations=dict(grant.annotations),
        devices=[
            pb.DeviceSpec(
                container_path=spec.container_path,
                host_path=spec.host_path,
                permissions=spec.permissions,
            )
            for spec in grant.devices
        ],
        mounts=[
            pb.Mount(container_path=container_path, host_path=host_path, read_only=read_only)
            for container_path, host_path, read_only in grant.mounts
        ],
        cdi_devices=[pb.CDIDevice(name=name) for name in grant.cdi_devices],
    )


# AllocateResponse.container_responses is field 1, length-delimited: tag byte 0x0a.
_CONTAINER_RESPONSES_TAG = b"\x0a"
# Distinct grants kept in wire form per snapshot: all mode has one; per-device mode
# one per device (or combination) actually asked for. A bound keeps a stream of odd
# combinations from growing the cache without limit.
MAX_CACHED_GRANTS = 4096


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def allocate_response_wire(containers: Sequence[bytes]) -> bytes:
    """An AllocateResponse in wire form from its containers' serialised responses.

    A repeated message field on the wire is each element as tag + length + bytes, so
    the answer is assembled from cached parts without building a message.
    """
    return b"".join(_CONTAINER_RESPONSES_TAG + _varint(len(part)) + part for part in containers)


class GrantWireCache:
    """Serialised ContainerAllocateResponses of the current snapshot, by grant key.

    The answer for a grant only changes when the snapshot does, so it is built and
    serialised once per snapshot (in all mode: once for every Allocate until the next
    change) instead of once per call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: DeviceSnapshot | None = None
        self._by_key: dict[GrantKey, bytes] = {}

    def container_wire(self, snapshot: DeviceSnapshot, key: GrantKey) -> bytes:
        with self._lock:
            if snapshot is not self._snapshot:
                self._snapshot = snapshot
                self._by_key = {}
            cached = self._by_key.get(key)
        if cached is not None:
            return cached
        wire = container_response(snapshot.grant_for(key)).SerializeToString()
        with self._lock:
            if snapshot is self._snapshot:
                if len(self._by_key) >= MAX_CACHED_GRANTS:
                    self._by_key.clear()
                self._by_key[key] = wire
        return wire


class StreamCounter:
    """How many ListAndWatch streams are open (readiness needs at least one)."""

    def __init__(self, metrics: PluginMetrics) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._metrics = metrics

    def opened(self) -> None:
        with self._lock:
            self._open += 1
            self._metrics.streams.set(self._open)

    def closed(self) -> None:
        with self._lock:
            self._open -= 1
            self._metrics.streams.set(self._open)

    @property
    def open(self) -> int:
        with self._lock:
            return self._open


class ResourceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose lines start with the resource they are about."""

    def __init__(self, logger: logging.Logger, resource: str) -> None:
        super().__init__(logger, {})
        self.resource = resource

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.resource}: {msg}", kwargs


class DevicePluginServicer:
    """The answers, from `state`'s current snapshot: plain functions of a request that
    return the answer or raise :class:`Refused`. :class:`DevicePluginService` puts them
    on the wire; ``stopping`` ends its streams."""

    def __init__(
        self,
        state: DeviceState,
        metrics: PluginMetrics,
        stopping: threading.Event,
        streams: StreamCounter | None = None,
    ) -> None:
        self._state = state
        self._metrics = metrics
        self.stopping = stopping
        # Every line names the resource: one process may serve several.
        self.log = ResourceLog(log, state.resource)
        self.streams = streams if streams is not None else StreamCounter(metrics)
        self._grants = GrantWireCache()
        self._list_lock = threading.Lock()
        self._list_wire: tuple[tuple[AdvertisedDevice, ...], bytes] | None = None

    @property
    def state(self) -> DeviceState:
        return self._state

    def options(self) -> pb.DevicePluginOptions:
        mode = self._state.current().cdi_mode
        self.log.info("GetDevicePluginOptions: cdi %s: %s", mode, cdi.CDI_MODE_NEEDS[mode])
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def list_wire(self, devices: tuple[AdvertisedDevice, ...]) -> bytes:
        """The ListAndWatchResponse of `devices`, serialised once for every stream."""
        with self._list_lock:
            cached = self._list_wire
            if cached is not None and cached[0] is devices:
                return cached[1]
        wire = list_response(devices).SerializeToString()
        with self._list_lock:
            self._list_wire = (devices, wire)
        return wire

    def preferred_allocation(
        self, request: pb.PreferredAllocationRequest | TooManyParts
    ) -> pb.PreferredAllocationResponse:
        # One snapshot for the whole request, as for Allocate.
        snapshot = self._state.current()
        request = _check_container_count("GetPreferredAllocation", request)
        responses = []
        for index, container in enumerate(request.container_requests):
            _check_id_count(index, "available_deviceIDs", len(container.available_deviceIDs))
            _check_id_count(index, "must_include_deviceIDs", len(container.must_include_deviceIDs))
            size = container.allocation_size
            if size < 0:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"container request {index}: allocation_size is {size}, "
                    "it must be 0 or more; no preference given",
                )
            available = list(container.available_deviceIDs)
            must_include = list(container.must_include_deviceIDs)
            outside = set(must_include).difference(available)
            if outside:
                # The kubelet never asks this; answering only from `available` is the contract.
                self.log.warning(
                    "GetPreferredAllocation container request %d: %d must_include_deviceIDs "
                    "(first %s) are not in available_deviceIDs; left out of the answer",
                    index,
                    len(outside),
                    quoted(min(outside)),
                )
            responses.append(
                pb.ContainerPreferredAllocationResponse(
                    deviceIDs=snapshot.preferred(available, must_include, size)
                )
            )
        return pb.PreferredAllocationResponse(container_responses=responses)

    def allocate_wire(self, request: pb.AllocateRequest | TooManyParts) -> bytes:
        """Allocate's answer, serialised: assembled from the snapshot's cached grants."""
        # One snapshot for the whole request: every container is answered from
        # the same list, and any refusal refuses the whole request.
        snapshot = self._state.current()
        try:
            request = _check_container_count("Allocate", request)
            for index, container in enumerate(request.container_requests):
                _check_id_count(index, "devices_ids", len(container.devices_ids))
        except Refused:
            self._metrics.allocations.labels(result="too_large").inc()
            raise
        count = len(request.container_requests)
        responses = []
        size = 0
        for index, container in enumerate(request.container_requests):
            try:
                key = snapshot.grant_key(container.devices_ids)
            except AllocationError as error:
                self._metrics.allocations.labels(result=error.code).inc()
                raise Refused(
                    _ERROR_CODES.get(error.code, grpc.StatusCode.INVALID_ARGUMENT),
                    f"container request {index} of {count} (devices_ids): {error}; "
                    "nothing was allocated",
                ) from None
            part = self._grants.container_wire(snapshot, key)
            size += len(part) + 1 + len(_varint(len(part)))
            if size > MAX_ANSWER_BYTES:
                self._metrics.allocations.labels(result="too_large").inc()
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the answer to {count} container requests would be more than "
                    f"{MAX_ANSWER_BYTES} bytes (reached at container request {index}); "
                    "ask in several calls; nothing was allocated",
                )
            responses.append(part)
            if log.isEnabledFor(logging.DEBUG):
                grant = snapshot.grant_for(key)
                self.log.debug(
                    "Allocate container request %d: %d units granted %d device nodes, "
                    "%d CDI devices, PDP_DEVICES=%s",
                    index,
                    len(container.devices_ids),
                    len(grant.devices),
                    len(grant.cdi_devices),
                    grant.envs.get("PDP_DEVICES", ""),
                )
        self._metrics.allocations.labels(result="ok").inc()
        return allocate_response_wire(responses)


M = TypeVar("M", pb.AllocateRequest, pb.PreferredAllocationRequest)


def _check_container_count(call: str, request: M | TooManyParts) -> M:
    if isinstance(request, TooManyParts):
        count = f"more than {request.limit}"
    elif len(request.container_requests) > MAX_CONTAINER_REQUESTS:
        count = str(len(request.container_requests))
    else:
        return request
    raise Refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{call} has {count} container requests, at most {MAX_CONTAINER_REQUESTS} "
        "are answered in one call (the kubelet sends one per container); nothing was done",
    )


def _check_id_count(index: int, field: str, count: int) -> None:
    if count > MAX_IDS_PER_CONTAINER:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"container request {index}: {field} names {count} device IDs, more than the "
            f"{MAX_IDS_PER_CONTAINER} units the plugin ever advertises; nothing was done",
        )


class _Stream:
    """One open ListAndWatch stream, as the event loop sees it."""

    __slots__ = ("ended", "kubelet", "wake")

    def __init__(self, kubelet: bool) -> None:
        self.wake = asyncio.Event()
        self.ended = ""  # why the plugin ends it ("" while it runs)
        self.kubelet = kubelet


class _RateLimitedLog:
    """Counts an event and logs it at most every LOG_EVERY_SECONDS, with the count."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._count = 0
        self._last = -LOG_EVERY_SECONDS

    def add(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= LOG_EVERY_SECONDS:
            log.warning("%s (%d since the last such line)", self._text, self._count)
            self._count = 0
            self._last = now


class StreamBook:
    """The open ListAndWatch streams, oldest first; used from the event loop only
    (except :meth:`expect_kubelet`).

    At most ``limit`` streams are open. Beyond it, a new stream is refused before
    anything is sent (the cheapest answer under a storm), except the kubelet's,
    which ends the oldest other stream instead: the kubelet always gets its stream.
    The kubelet's is the first stream opened after :meth:`expect_kubelet` (called
    before each Register) and a GetDevicePluginOptions call (:meth:`options_asked`)
    by a client with the same user agent: after Register the kubelet asks for the
    options, then opens its stream. gRPC tells nothing else about a caller (every
    peer on a unix socket is "unix:"), so a client that opens streams all the time
    takes the kubelet's place only if it also calls GetDevicePluginOptions with the
    kubelet's user agent (``grpc-go/...``) right after a registration.
    """

    def __init__(self, counter: StreamCounter, limit: int) -> None:
        self._counter = counter
        self._limit = limit
        self._open: OrderedDict[_Stream, None] = OrderedDict()
        self._expect_kubelet = False
        self._kubelet_agent: str | None = None  # of the options call after expect_kubelet
        self.full = f"{limit} ListAndWatch streams are open already, the most there may be"
        self._refused = _RateLimitedLog(f"{self.full}: new streams refused")

    def expect_kubelet(self) -> None:
        self._kubelet_agent = None
        self._expect_kubelet = True

    def options_asked(self, user_agent: str) -> None:
        if self._expect_kubelet:
            self._kubelet_agent = user_agent

    def open(self, user_agent: str = "") -> _Stream | None:
        """The new stream (of a client with `user_agent`), or None when it is refused."""
        kubelet = self._expect_kubelet and self._kubelet_agent == user_agent
        if kubelet:
            self._expect_kubelet = False
            self._kubelet_agent = None
        if len(self._open) >= self._limit and not kubelet:
            self._refused.add()
            return None
        if kubelet:
            for older in self._open:
                older.kubelet = False
            if len(self._open) >= self._limit:
                oldest = next(iter(self._open))
                self._end(oldest, f"{self.full}; the kubelet's new stream takes its place")
                log.warning("%s: the oldest was ended for the kubelet's new stream", self.full)
        stream = _Stream(kubelet)
        self._open[stream] = None
        self._counter.opened()
        return stream

    def close(self, stream: _Stream) -> None:
        if stream in self._open:  # not ended by the plugin already
            del self._open[stream]
            self._counter.closed()

    def _end(self, stream: _Stream, why: str) -> None:
        self._open.pop(stream, None)
        self._counter.closed()
        stream.ended = why
        stream.wake.set()

    def wake_all(self) -> None:
        for stream in self._open:
            stream.wake.set()

    def end_all(self) -> None:
        for stream in list(self._open):
            self._end(stream, "the plugin is stopping")

    def __len__(self) -> int:
        return len(self._open)


class DevicePluginService:
    """The servicer's answers as `grpc.aio` handlers; runs on the event loop."""

    def __init__(self, servicer: DevicePluginServicer, max_streams: int | None = None) -> None:
        self.servicer = servicer
        self.streams = StreamBook(
            servicer.streams, MAX_STREAMS if max_streams is None else max_streams
        )

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
                    self.GetDevicePluginOptions,
                    request_deserializer=pb.Empty.FromString,
                    response_serializer=_wire_or_serialize,
                ),
                "ListAndWatch": grpc.unary_stream_rpc_method_handler(
                    self.ListAndWatch,
                    request_deserializer=pb.Empty.FromString,
                    response_serializer=_wire_or_serialize,
                ),
                "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
                    self.GetPreferredAllocation,
                    request_deserializer=bounded_parts(
                        pb.PreferredAllocationRequest.FromString, MAX_CONTAINER_REQUESTS
                    ),
                    response_serializer=_wire_or_serialize,
                ),
                "Allocate": grpc.unary_unary_rpc_method_handler(
                    self.Allocate,
                    request_deserializer=bounded_parts(
                        pb.AllocateRequest.FromString, MAX_CONTAINER_REQUESTS
                    ),
                    response_serializer=_wire_or_serialize,
                ),
                "PreStartContainer": grpc.unary_unary_rpc_method_handler(
                    self.PreStartContainer,
                    request_deserializer=pb.PreStartContainerRequest.FromString,
                    response_serializer=_wire_or_serialize,
                ),
            },
        )

    async def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DevicePluginOptions:
        self.streams.options_asked(_user_agent(context))
        return self.servicer.options()

    async def ListAndWatch(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        stream = self.streams.open(_user_agent(context))
        if stream is None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.streams.full)
            return
        # The kubelet's stream is logged; extra ones (tools, a storm) at debug level.
        level = logging.INFO if stream.kubelet else logging.DEBUG
        state = self.servicer.state
        try:
            sent = state.current().devices
            self.servicer.log.log(level, "ListAndWatch opened: sending %d devices", len(sent))
            yield self.servicer.list_wire(sent)
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.ended or self.servicer.stopping.is_set():
                    break
                devices = state.current().devices
                if devices == sent:
                    continue
                sent = devices
                self.servicer.log.log(level, "ListAndWatch update: sending %d devices", len(sent))
                yield self.servicer.list_wire(sent)
            if stream.ended and not self.servicer.stopping.is_set():
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, stream.ended)
        finally:
            self.streams.close(stream)
            log.log(level, "ListAndWatch closed")

    async def GetPreferredAllocation(
        self,
        request: pb.PreferredAllocationRequest | TooManyParts,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.PreferredAllocationResponse:
        try:
            return self.servicer.preferred_allocation(request)
        except Refused as refused:
            self.servicer.log.warning("GetPreferredAllocation refused: %s", refused.details)
            await context.abort(refused.code, refused.details)
            raise  # abort() raises; this keeps type checkers and readers sure of it

    async def Allocate(
        self,
        request: pb.AllocateRequest | TooManyParts,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> bytes:
        try:
            return self.servicer.allocate_wire(request)
        except Refused as refused:
            self.servicer.log.warning("Allocate refused: %s", refused.details)
            await context.abort(refused.code, refused.details)
            raise

    async def PreStartContainer(
        self,
        request: pb.PreStartContainerRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def _user_agent(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "user-agent":
            return str(value)
    return ""


def _wire_or_serialize(response: bytes | Message) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


T = TypeVar("T")


class ServingLoop:
    """The event loop the gRPC server runs on, in a thread of its own, and a thread
    that carries `DeviceState`'s changes into it (a `Subscription` wait is blocking).

    ``serve``/``stop`` are called from the lifecycle thread and return once done;
    one server at a time.
    """

    def __init__(self, servicer: DevicePluginServicer, max_streams: int | None = None) -> None:
        self.service = DevicePluginService(servicer, max_streams)
        self._servicer = servicer
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="grpc-loop", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._subscription = servicer.state.subscribe()
        self._feed_thread = threading.Thread(target=self._feed, name="grpc-feed", daemon=True)
        self._loop_thread.start()
        self._feed_thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _feed(self) -> None:
        subscription = self._subscription
        while not subscription.closed:
            if subscription.wait(STREAM_WAKE_SECONDS) is not None:
                try:
                    self._loop.call_soon_threadsafe(self.service.streams.wake_all)
                except RuntimeError:  # the loop is closed: stopping
                    return

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def expect_kubelet(self) -> None:
        """The next stream opened is the kubelet's (call before each Register)."""
        self.service.streams.expect_kubelet()

    def serve(self, address: str) -> None:
        """Serve on `address` (``unix://path``); raises OSError when it cannot bind."""
        self._server = self.run(self._serve(address))

    async def _serve(self, address: str) -> grpc.aio.Server:
        server = grpc.aio.server(
            handlers=(self.service.handler(),),
            options=(
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_ANSWER_BYTES),
                ("grpc.max_concurrent_streams", MAX_CALLS_PER_CONNECTION),
            ),
        )
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as error:  # newer grpcio raises, older ones return 0
            raise OSError(f"cannot bind {address}: {error}") from None
        if port == 0:
            raise OSError(f"cannot bind {address}")
        await server.start()
        return server

    def stop(self, grace: float) -> None:
        """End every stream (they return at once), then stop the server; in-flight
        unary calls get `grace` seconds."""
        server, self._server = self._server, None
        if server is not None:
            self.run(self._stop(server, grace))

    async def _stop(self, server: grpc.aio.Server, grace: float) -> None:
        self.service.streams.end_all()
        await server.stop(grace)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the feed and the loop and wait for both threads (at most `timeout` each)."""
        self._subscription.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout)
        self._feed_thread.join(timeout)
        if not self._loop_thread.is_alive():
            self._loop.close()
