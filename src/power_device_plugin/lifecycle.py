"""The kubelet lifecycle: serve, register, watch both sockets, start again on any loss.

Recovery is the main path, not a special case: one loop serves the plugin
socket, registers with the kubelet (retrying with backoff while the kubelet is
away), then watches. When our socket disappears, or `kubelet.sock` is removed
(the kubelet stopped) or recreated (the kubelet restarted), it tears everything
down and goes round again.

A kubelet outage is one failed registration however many attempts it takes
(`pdp_registrations_total{result="failed"}` counts outages, not attempts): the
first failed attempt is logged as a warning, later ones at debug level, and the
registration that ends the outage says how long it lasted.

Both sockets are watched through inotify on the plugin directory (a socket
created or removed wakes the loop at once) with a stat of both every
``SAFETY_POLL_SECONDS`` as the safety net; without inotify, every
``POLL_SECONDS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from power_device_plugin.api import API_VERSION, KUBELET_SOCKET_NAME, pb, rpc
from power_device_plugin.health import Heartbeat
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.notify import (
    STRUCTURE_EVENTS,
    ChangeNotifier,
    NotifyUnavailable,
)
from power_device_plugin.server import DevicePluginServicer, ResourceLog, ServingLoop
from power_device_plugin.watch import release_free_heap

log = logging.getLogger(__name__)

# Without inotify both sockets are stat()ed this often: cheap (two stat calls),
# and well inside the 1 s we allow ourselves to come back after a kubelet restart.
POLL_SECONDS = 0.25
# With inotify on the plugin directory, the stat safety net runs this often (and
# the heartbeat beats at least this often while the loop blocks).
SAFETY_POLL_SECONDS = 5.0
FIRST_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 5.0
REGISTER_TIMEOUT_SECONDS = 3.0
# Open ListAndWatch streams are ended first (they return at once, see
# server.ServingLoop.stop); the grace only lets in-flight unary calls finish, which
# answer from memory in well under a millisecond.
STOP_GRACE_SECONDS = 0.5

SocketSignature = tuple[int, int, int]  # (device, inode, ctime_ns)


@dataclass(frozen=True)
class Endpoint:
    """Where the plugin serves and whom it registers with."""

    plugin_dir: Path
    socket_name: str
    resource: str

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.socket_name

    @property
    def kubelet_socket(self) -> Path:
        return self.plugin_dir / KUBELET_SOCKET_NAME


def socket_signature(path: Path) -> SocketSignature | None:
    """What identifies one incarnation of a socket file; None when it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def backoff_delays(first: float, cap: float) -> list[float]:
    """Doubling delays from `first`, the last one being `cap` (used over and over)."""
    delays = [first]
    while delays[-1] * 2 < cap:
        delays.append(delays[-1] * 2)
    delays.append(cap)
    return delays


def register_request(endpoint: Endpoint) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint.socket_name,
        resource_name=endpoint.resource,
        options=pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        ),
    )


class PluginLifecycle:
    """Runs the serve → register → watch loop until `stopping` is set."""

    def __init__(
        self,
        endpoint: Endpoint,
        servicer: DevicePluginServicer,
        metrics: PluginMetrics,
        stopping: threading.Event,
    ) -> None:
        self.endpoint = endpoint
        self._servicer = servicer
        self._log = ResourceLog(log, endpoint.resource)
        self._metrics = metrics
        self._stopping = stopping
        self._registered = threading.Event()
        # Beaten on every turn of every wait below; /healthz fails when it stops.
        self.heartbeat = Heartbeat(f"kubelet lifecycle loop of {endpoint.resource}")
        self._serving: ServingLoop | None = None
        self._notifier: ChangeNotifier | None = None
        # When the current kubelet outage began (monotonic), None while registered or
        # before the first attempt: an outage is counted and warned about once.
        self._outage_since: float | None = None
        self._outage_attempts = 0
        # How the sockets are watched: "inotify" or "poll" ("" before run()).
        self.waiting_by = ""

    def ready(self) -> bool:
        """Registered, and the kubelet holds a ListAndWatch stream open."""
        return self._registered.is_set() and self._servicer.streams.open > 0

    def run(self) -> None:
        """The loop. Returns once `stopping` is set, with the socket removed."""
        delays = backoff_delays(FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
        failures = 0
        self._notifier = self._open_notifier()
        self._serving = ServingLoop(self._servicer)
        try:
            while not self._stopping.is_set():
                self.heartbeat.beat()
                try:
                    self._one_round()
                    failures = 0
                except Exception as error:  # any failure: the answer is to start again
                    delay = delays[min(failures, len(delays) - 1)]
                    failures += 1
                    self._log.error(
                        "cannot serve on %s: %s; starting again in %.1fs",
                        self.endpoint.socket_path,
                        error,
                        delay,
                    )
                    self._stopping.wait(delay)
        finally:
            if self._notifier is not None:
                self._notifier.close()
                self._notifier = None
            serving, self._serving = self._serving, None
            if serving is not None:
                serving.close()
            self._log.info("plugin stopped")

    def _open_notifier(self) -> ChangeNotifier | None:
        try:
            notifier = ChangeNotifier()
        except NotifyUnavailable as error:
            self._log.warning(
                "no kernel change notification (%s): checking the sockets every %.2fs",
                error,
                POLL_SECONDS,
            )
            self.waiting_by = "poll"
            return None
        notifier.wake_on(self._stopping)
        self.waiting_by = "inotify"
        return notifier

    def _wait_for_sockets(self, timeout: float) -> bool:
        """Wait until the plugin directory changes, or ``timeout`` runs out, or stop;
        True when stopping."""
        notifier = self._notifier
        if notifier is not None:
            failed = notifier.watch_dirs(
                "sockets", [str(self.endpoint.plugin_dir)], STRUCTURE_EVENTS
            )
            if not failed:
                try:
                    notifier.wait(min(timeout, SAFETY_POLL_SECONDS))
                except OSError as error:
                    self._log.warning(
                        "waiting on %s failed (%s): polling", self.endpoint.plugin_dir, error
                    )
                    notifier.close()
                    self._notifier = None
                    self.waiting_by = "poll"
                return self._stopping.is_set()
        return self._stopping.wait(min(timeout, POLL_SECONDS))

    def _one_round(self) -> None:
        serving = self._serving
        assert serving is not None, "run() sets it up"
        own = self._serve(serving)
        try:
            kubelet = self._register(own)
            if kubelet is None:
                return
            reason = self._watch(own, kubelet)
            if reason:
                self._log.warning("%s: registering again", reason)
        finally:
            self._registered.clear()
            serving.stop(STOP_GRACE_SECONDS)
            self._remove_socket(own)

    def _serve(self, serving: ServingLoop) -> SocketSignature | None:
        path = self.endpoint.socket_path
        self._remove_stale(path)
        try:
            serving.serve(f"unix://{path}")
        except OSError as error:
            raise OSError(f"{error} (does {self.endpoint.plugin_dir} exist?)") from None
        log.info("serving %s on %s", self.endpoint.resource, path)
        return socket_signature(path)

    def _remove_stale(self, path: Path) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise OSError(f"{path} is a directory; cannot serve the plugin socket there")
        self._log.info("removing stale %s left by an earlier run", path)
        path.unlink()

    def _remove_socket(self, own: SocketSignature | None) -> None:
        # Only our own incarnation: after a kubelet restart the path may
        # already be gone, and it is never ours to delete someone else's file.
        path = self.endpoint.socket_path
        if own is not None and socket_signature(path) == own:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _register(self, own: SocketSignature | None) -> SocketSignature | None:
        """Register, retrying with backoff; returns kubelet.sock's signature, or None to restart."""
        delays = backoff_delays(FIRST_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS)
        attempt = 0
        while not self._stopping.is_set():
            self.heartbeat.beat()
            kubelet = socket_signature(self.endpoint.kubelet_socket)
            error = self._try_register() if kubelet is not None else "no kubelet.sock yet"
            if error is None:
                self._registered.set()
                self._metrics.registrations.labels(result="ok").inc()
                self._registered_after_outage()
                return kubelet
            delay = delays[min(attempt, len(delays) - 1)]
            attempt += 1
            self._registration_failed(error, delay)
            # Wait out the delay, but retry at once when kubelet.sock appears
            # or is replaced, and start over if our own socket was removed.
            deadline = time.monotonic() + delay
            while not self._wait_for_sockets(max(0.0, deadline - time.monotonic())):
                self.heartbeat.beat()
                if socket_signature(self.endpoint.socket_path) != own:
                    self._log.warning(
                        "plugin socket %s removed while registering", self.endpoint.socket_path
                    )
                    return None
                if socket_signature(self.endpoint.kubelet_socket) != kubelet:
                    break
                if time.monotonic() >= deadline:
                    break
        return None

    def _registration_failed(self, error: str, delay: float) -> None:
        """Count and warn once per outage; later attempts are logged at debug level."""
        self._outage_attempts += 1
        level = logging.DEBUG
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._metrics.registrations.labels(result="failed").inc()
            level = logging.WARNING
        self._log.log(
            level,
            "kubelet not reachable at %s (%s); retrying in %.1fs (backing off to %.0fs)",
            self.endpoint.kubelet_socket,
            error,
            delay,
            MAX_BACKOFF_SECONDS,
        )

    def _registered_after_outage(self) -> None:
        if self._outage_since is None:
            log.info(
                "registered %s with the kubelet at %s",
                self.endpoint.resource,
                self.endpoint.kubelet_socket,
            )
        else:
            log.info(
                "registered %s with the kubelet at %s after %d failed attempts in %.1fs",
                self.endpoint.resource,
                self.endpoint.kubelet_socket,
                self._outage_attempts,
                time.monotonic() - self._outage_since,
            )
        self._outage_since = None
        self._outage_attempts = 0

    def _try_register(self) -> str | None:
        """One Register call; the error in words, or None on success."""
        if self._serving is not None:
            # The kubelet opens its ListAndWatch stream as Register returns (or before).
            self._serving.expect_kubelet()
        # A private subchannel pool: after a kubelet restart a shared pool could
        # hand back the dead connection to the old kubelet.sock.
        with grpc.insecure_channel(
            f"unix://{self.endpoint.kubelet_socket}",
            options=[("grpc.use_local_subchannel_pool", 1)],
        ) as channel:
            stub = rpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            try:
                stub.Register(register_request(self.endpoint), timeout=REGISTER_TIMEOUT_SECONDS)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                details = error.details() if hasattr(error, "details") else str(error)
                return f"{getattr(code, 'name', code)}: {details}"
        return None

    def _watch(self, own: SocketSignature | None, kubelet: SocketSignature) -> str | None:
        """Watch both sockets; the reason to start again, or None when stopping."""
        trimmed = False
        while not self._wait_for_sockets(SAFETY_POLL_SECONDS):
            self.heartbeat.beat()
            if not trimmed:
                # Registering, the kubelet's first calls and the first list are done by
                # now: hand the heap they freed back to the kernel, once per registration.
                release_free_heap()
                trimmed = True
            if socket_signature(self.endpoint.socket_path) != own:
                return f"plugin socket {self.endpoint.socket_path} was removed"
            now = socket_signature(self.endpoint.kubelet_socket)
            if now is None:
                return f"{self.endpoint.kubelet_socket} was removed (the kubelet stopped)"
            if now != kubelet:
                return f"{self.endpoint.kubelet_socket} was recreated (the kubelet restarted)"
        return None
