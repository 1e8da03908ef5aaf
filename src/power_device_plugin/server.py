"""The `v1beta1.DevicePlugin` gRPC servicer.

It only publishes snapshots and answers from the current one: no scans and no
config reads happen on a call path. New snapshots arrive through a
`DeviceState` subscription and are pushed into every open ListAndWatch stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import grpc
from google.protobuf.message import Message

from power_device_plugin import cdi
from power_device_plugin.api import pb, rpc
from power_device_plugin.devices import (
    AdvertisedDevice,
    AllocationError,
    ContainerGrant,
    DeviceSnapshot,
    DeviceState,
    GrantKey,
)
from power_device_plugin.metrics import PluginMetrics

log = logging.getLogger(__name__)

# How long a ListAndWatch stream waits for a new snapshot before it looks
# again at whether it was cancelled or the plugin is stopping. New snapshots,
# the end of the RPC (a callback closes the subscription) and stopping (which
# closes every subscription) all wake it at once: this is only a safety net.
STREAM_WAKE_SECONDS = 30.0

SERVICE_NAME = "v1beta1.DevicePlugin"

_ERROR_CODES = {
    "unknown": grpc.StatusCode.INVALID_ARGUMENT,
    "unhealthy": grpc.StatusCode.FAILED_PRECONDITION,
}


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


class DevicePluginServicer(rpc.DevicePluginServicer):
    """Answers the kubelet from `state`; ends its streams when `stopping` is set."""

    def __init__(
        self,
        state: DeviceState,
        metrics: PluginMetrics,
        stopping: threading.Event,
        streams: StreamCounter | None = None,
    ) -> None:
        self._state = state
        self._metrics = metrics
        self._stopping = stopping
        self.streams = streams if streams is not None else StreamCounter(metrics)
        self._grants = GrantWireCache()

    def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions:
        mode = self._state.current().cdi_mode
        log.info("GetDevicePluginOptions: cdi %s: %s", mode, cdi.CDI_MODE_NEEDS[mode])
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]:
        # Subscribe before reading the current snapshot, so a change between
        # the two is never lost (at worst the same list is seen twice and skipped).
        subscription = self._state.subscribe()
        # The RPC ending (kubelet gone, cancelled, server stopped) closes the
        # subscription, which wakes the wait below: a dead stream frees its worker at once.
        context.add_callback(subscription.close)
        self.streams.opened()
        try:
            sent = self._state.current().devices
            log.info("ListAndWatch opened: sending %d devices", len(sent))
            yield list_response(sent)
            while context.is_active() and not self._stopping.is_set():
                snapshot = subscription.wait(STREAM_WAKE_SECONDS)
                if snapshot is None or snapshot.devices == sent:
                    continue
                sent = snapshot.devices
                log.info("ListAndWatch update: sending %d devices", len(sent))
                yield list_response(sent)
        finally:
            subscription.close()
            self.streams.closed()
            log.info("ListAndWatch closed")

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        # One snapshot for the whole request, as for Allocate.
        snapshot = self._state.current()
        responses = []
        for index, container in enumerate(request.container_requests):
            size = container.allocation_size
            if size < 0:
                message = (
                    f"container request {index}: allocation_size is {size}, "
                    "it must be 0 or more; no preference given"
                )
                log.warning("GetPreferredAllocation refused: %s", message)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                raise AssertionError("context.abort() returned")  # it raises
            available = list(container.available_deviceIDs)
            must_include = list(container.must_include_deviceIDs)
            outside = sorted(set(must_include) - set(available))
            if outside:
                # The kubelet never asks this; answering only from `available` is the contract.
                log.warning(
                    "GetPreferredAllocation container request %d: must_include_deviceIDs "
                    "%s are not in available_deviceIDs; left out of the answer",
                    index,
                    outside,
                )
            responses.append(
                pb.ContainerPreferredAllocationResponse(
                    deviceIDs=snapshot.preferred(available, must_include, size)
                )
            )
        return pb.PreferredAllocationResponse(container_responses=responses)

    def Allocate(
        self, request: pb.AllocateRequest, context: grpc.ServicerContext
    ) -> pb.AllocateResponse:
        """The answer as a message (the server itself sends :meth:`allocate_wire`)."""
        return pb.AllocateResponse.FromString(self.allocate_wire(request, context))

    def allocate_wire(self, request: pb.AllocateRequest, context: grpc.ServicerContext) -> bytes:
        """Allocate's answer, serialised: assembled from the snapshot's cached grants."""
        # One snapshot for the whole request: every container is answered from
        # the same list, and any refusal refuses the whole request.
        snapshot = self._state.current()
        responses = []
        for index, container in enumerate(request.container_requests):
            try:
                key = snapshot.grant_key(container.devices_ids)
            except AllocationError as error:
                self._metrics.allocations.labels(result=error.code).inc()
                message = f"container request {index} (devices_ids): {error}; nothing was allocated"
                log.warning("Allocate refused: %s", message)
                context.abort(
                    _ERROR_CODES.get(error.code, grpc.StatusCode.INVALID_ARGUMENT), message
                )
                raise  # abort() raises; this keeps type checkers and readers sure of it
            responses.append(self._grants.container_wire(snapshot, key))
            if log.isEnabledFor(logging.DEBUG):
                grant = snapshot.grant_for(key)
                log.debug(
                    "Allocate container request %d: units %s granted %d device nodes, "
                    "%d CDI devices, PDP_DEVICES=%s",
                    index,
                    list(container.devices_ids),
                    len(grant.devices),
                    len(grant.cdi_devices),
                    grant.envs.get("PDP_DEVICES", ""),
                )
        self._metrics.allocations.labels(result="ok").inc()
        return allocate_response_wire(responses)

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def _wire_or_serialize(response: bytes | Message) -> bytes:
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_servicer(servicer: DevicePluginServicer, server: grpc.Server) -> None:
    """Attach the servicer to a gRPC server: the generated handlers, except that
    Allocate sends the pre-serialised answer as it is."""
    allocate = grpc.unary_unary_rpc_method_handler(
        servicer.allocate_wire,
        request_deserializer=pb.AllocateRequest.FromString,
        response_serializer=_wire_or_serialize,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Allocate": allocate}),)
    )
    rpc.add_DevicePluginServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
