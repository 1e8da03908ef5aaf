"""A kubelet stand-in for the device plugin API, over real unix sockets.

It serves `v1beta1.Registration` on `<dir>/kubelet.sock`. After a plugin
registers it dials the plugin's socket the way the kubelet does: it calls
GetDevicePluginOptions, opens one ListAndWatch stream and records every list
received. Tests (and the node end-to-end suite) can call Allocate and
GetPreferredAllocation, and `restart()` it like a kubelet restart: every socket
in the directory is deleted and a new `kubelet.sock` is served.

    with KubeletStub(plugin_dir) as kubelet:
        registration = kubelet.wait_for_registration(timeout=5)
        devices = kubelet.wait_for_list(lambda d: len(d) == 3, timeout=5)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from power_device_plugin.api import API_VERSION, KUBELET_SOCKET_NAME, pb, rpc

Devices = dict[str, str]  # ID -> health, as one ListAndWatch message had them


@dataclass(frozen=True)
class Registration:
    """One Register call as the stand-in received it."""

    version: str
    endpoint: str
    resource_name: str
    pre_start_required: bool
    get_preferred_allocation_available: bool
    received_at: float  # time.monotonic()


@dataclass
class PluginConnection:
    """What the stand-in learnt from the plugin after one registration."""

    registration: Registration
    channel: grpc.Channel
    stub: rpc.DevicePluginStub
    options: pb.DevicePluginOptions | None = None
    lists: list[tuple[float, Devices]] = field(default_factory=list)  # (monotonic, devices)
    stream_error: grpc.RpcError | None = None
    stream: object | None = None


class _RegistrationServicer(rpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStub) -> None:
        self._kubelet = kubelet

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        return self._kubelet._on_register(request, context)


class KubeletStub:
    """The stand-in. Thread-safe; every wait_* takes a timeout and raises on expiry."""

    def __init__(self, plugin_dir: Path, *, connect_back: bool = True) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.connect_back = connect_back
        self.registrations: list[Registration] = []
        self.connections: list[PluginConnection] = []
        self.restarts = 0
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    # -- server life ---------------------------------------------------------

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / KUBELET_SOCKET_NAME

    def start(self) -> KubeletStub:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        rpc.add_RegistrationServicer_to_server(_RegistrationServicer(self), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stop serving and drop every plugin connection (kubelet going away)."""
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        with self._cond:
            connections = list(self.connections)
        for connection in connections:
            connection.channel.close()
        self.socket_path.unlink(missing_ok=True)

    def restart(self) -> float:
        """Do what a restarting kubelet does; returns the monotonic time it finished."""
        self.stop()
        for entry in self.plugin_dir.iterdir():
            if entry.is_socket():
                entry.unlink()
        self.start()
        with self._cond:
            self.restarts += 1
        return time.monotonic()

    def __enter__(self) -> KubeletStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the plugin does to us ------------------------------------------

    def _on_register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        registration = Registration(
            version=request.version,
            endpoint=request.endpoint,
            resource_name=request.resource_name,
            pre_start_required=request.options.pre_start_required,
            get_preferred_allocation_available=request.options.get_preferred_allocation_available,
            received_at=time.monotonic(),
        )
        if request.version != API_VERSION:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unsupported API version {request.version!r}, want {API_VERSION!r}",
            )
        with self._cond:
            self.registrations.append(registration)
            connection = None
            if self.connect_back:
                # Recorded now, so the newest connection always belongs to the
                # newest registration; dialled after Register has answered, as
                # the kubelet does.
                connection = self._connection_for(registration)
                self.connections.append(connection)
            self._cond.notify_all()
        if connection is not None:
            threading.Thread(
                target=self._stream, args=(connection,), name="kubelet-stub-dial", daemon=True
            ).start()
        return pb.Empty()

    def _connection_for(self, registration: Registration) -> PluginConnection:
        # A private subchannel pool: a channel to the same path must never
        # inherit a broken connection (and its reconnect backoff) from before
        # a restart.
        channel = grpc.insecure_channel(
            f"unix://{self.plugin_dir / registration.endpoint}",
            options=[("grpc.use_local_subchannel_pool", 1)],
        )
        return PluginConnection(
            registration=registration,
            channel=channel,
            stub=rpc.DevicePluginStub(channel),  # type: ignore[no-untyped-call]
        )

    def _stream(self, connection: PluginConnection) -> None:
        try:
            connection.options = connection.stub.GetDevicePluginOptions(
                pb.Empty(), timeout=5, wait_for_ready=True
            )
            stream = connection.stub.ListAndWatch(pb.Empty(), wait_for_ready=True)
            connection.stream = stream
            for response in stream:
                devices = {d.ID: d.health for d in response.devices}
                with self._cond:
                    connection.lists.append((time.monotonic(), devices))
                    self._cond.notify_all()
        except grpc.RpcError as error:
            with self._cond:
                connection.stream_error = error
                self._cond.notify_all()

    # -- waiting -------------------------------------------------------------

    def _wait(self, ready: Callable[[], object], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = ready()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"kubelet stand-in: {what} not seen within {timeout}s")
                self._cond.wait(left)

    def wait_for_registration(self, count: int = 1, timeout: float = 5.0) -> Registration:
        """Wait until `count` registrations in total were received; return the last."""
        self._wait(lambda: len(self.registrations) >= count, timeout, f"registration #{count}")
        with self._cond:
            return self.registrations[count - 1]

    def latest_connection(self, timeout: float = 5.0) -> PluginConnection:
        self._wait(lambda: self.connections, timeout, "a connection to the plugin")
        with self._cond:
            return self.connections[-1]

    def wait_for_list(self, matches: Callable[[Devices], bool], timeout: float = 5.0) -> Devices:
        """Wait for a list on the newest connection that satisfies `matches`; return it."""

        def found() -> tuple[Devices] | None:
            # Wrapped in a tuple: an empty device list is a valid answer.
            if not self.connections:
                return None
            for _, devices in reversed(self.connections[-1].lists):
                if matches(devices):
                    return (devices,)
            return None

        result = self._wait(found, timeout, "a matching ListAndWatch list")
        assert isinstance(result, tuple)
        devices: Devices = result[0]
        return devices

    def lists(self) -> list[Devices]:
        """Every list received on the newest connection, oldest first."""
        with self._cond:
            if not self.connections:
                return []
            return [devices for _, devices in self.connections[-1].lists]

    # -- calls a kubelet makes ----------------------------------------------

    def allocate(self, *containers: Sequence[str], timeout: float = 5.0) -> pb.AllocateResponse:
        """Allocate on the newest connection, one container request per argument."""
        request = pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=list(ids)) for ids in containers
            ]
        )
        response: pb.AllocateResponse = self.latest_connection().stub.Allocate(
            request, timeout=timeout
        )
        return response

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int, timeout: float = 5.0
    ) -> list[str]:
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        response = self.latest_connection().stub.GetPreferredAllocation(request, timeout=timeout)
        return list(response.container_responses[0].deviceIDs)

    # -- several resources: one plugin each ----------------------------------

    def connection_of(self, resource: str, timeout: float = 5.0) -> PluginConnection:
        """The newest connection of the plugin registered for ``resource``."""

        def found() -> tuple[PluginConnection] | None:
            for connection in reversed(self.connections):
                if connection.registration.resource_name == resource:
                    return (connection,)
            return None

        result = self._wait(found, timeout, f"a connection for {resource}")
        assert isinstance(result, tuple)
        connection: PluginConnection = result[0]
        return connection

    def wait_for_list_of(
        self, resource: str, matches: Callable[[Devices], bool], timeout: float = 5.0
    ) -> Devices:
        """Wait for a list of ``resource``'s newest connection that satisfies ``matches``."""
        connection = self.connection_of(resource, timeout)

        def found() -> tuple[Devices] | None:
            for _, devices in reversed(connection.lists):
                if matches(devices):
                    return (devices,)
            return None

        result = self._wait(found, timeout, f"a matching list of {resource}")
        assert isinstance(result, tuple)
        devices: Devices = result[0]
        return devices

    def allocate_of(
        self, resource: str, *containers: Sequence[str], timeout: float = 5.0
    ) -> pb.AllocateResponse:
        """Allocate on ``resource``'s plugin, as the kubelet does for each resource a
        container asks for."""
        request = pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=list(ids)) for ids in containers
            ]
        )
        response: pb.AllocateResponse = self.connection_of(resource).stub.Allocate(
            request, timeout=timeout
        )
        return response
