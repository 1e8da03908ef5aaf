"""The settings of one `docker run`, engine-neutral, for the node end-to-end suite.

`e2e_plugin_run` fills them from the rendered DaemonSet and `e2e_workload`
from an `Allocate` answer; the suite (`tests/e2e/`) hands them to the Docker
engine. Nothing here touches the engine or the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BindMount:
    """One host directory or file made visible inside the container."""

    host_path: str
    container_path: str
    read_only: bool

    def docker_spec(self) -> str:
        """`HOST:CONTAINER:ro|rw`, the form `docker run -v` and the SDK take."""
        return f"{self.host_path}:{self.container_path}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class ContainerRun:
    """The settings of one `docker run`, engine-neutral."""

    image: str
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[BindMount, ...] = ()
    devices: tuple[str, ...] = ()
    # Fully qualified CDI device names (`docker run --device vendor/class=name`); the
    # engine resolves them from its CDI spec directories (its `cdi` feature on).
    cdi_devices: tuple[str, ...] = ()
    user: str | None = None
    group_add: tuple[str, ...] = ()
    read_only: bool = False
    privileged: bool = False
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "none"
    memory_limit_bytes: int | None = None
    nano_cpus: int | None = None
    # Not a `docker run` setting: how long `docker stop` waits before SIGKILL,
    # the pod's terminationGracePeriodSeconds.
    stop_grace_seconds: int = 30

    def docker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `docker.from_env().containers.run(**kwargs)`."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "environment": dict(self.environment),
            "volumes": [bind.docker_spec() for bind in self.binds],
            "devices": list(self.devices),
            "group_add": list(self.group_add),
            "read_only": self.read_only,
            "privileged": self.privileged,
            "cap_drop": list(self.cap_drop),
            "cap_add": list(self.cap_add),
            "security_opt": list(self.security_opt),
            "labels": dict(self.labels),
            "network_mode": self.network_mode,
        }
        if self.entrypoint is not None:
            kwargs["entrypoint"] = list(self.entrypoint)
        if self.command is not None:
            kwargs["command"] = list(self.command)
        if self.user is not None:
            kwargs["user"] = self.user
        if self.memory_limit_bytes is not None:
            kwargs["mem_limit"] = self.memory_limit_bytes
        if self.nano_cpus is not None:
            kwargs["nano_cpus"] = self.nano_cpus
        if self.cdi_devices:
            # What the CLI sends for `--device <cdi name>`: a device request of driver "cdi".
            kwargs["device_requests"] = [
                {"Driver": "cdi", "DeviceIDs": list(self.cdi_devices), "Count": 0}
            ]
        return kwargs

    def host_path_of(self, container_path: str) -> str | None:
        """Where a path inside the container lives on the host, through its binds.

        The deepest bind wins, as in the container's mount table; None if no
        bind covers the path (it is then in the image's own file system).
        """
        best: BindMount | None = None
        for bind in self.binds:
            if _is_under(container_path, bind.container_path) and (
                best is None or len(bind.container_path) > len(best.container_path)
            ):
                best = bind
        if best is None:
            return None
        rest = container_path[len(best.container_path.rstrip("/")) :]
        return best.host_path.rstrip("/") + rest


def _is_under(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return directory == "/" or path == directory or path.startswith(directory + "/")
