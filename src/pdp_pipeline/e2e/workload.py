"""An `Allocate` answer → the settings of the workload's `docker run`.

The way the kubelet hands a grant to the runtime: device specs become
`--device HOST:CONTAINER:PERMS`, envs `-e`, mounts binds, annotations labels.
The node suite (`tests/e2e/`) converts the plugin's answer to the plain data
here; nothing here touches the engine or the host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Callable

from pdp_pipeline.e2e.container import BindMount, ContainerRun


@dataclass(frozen=True)
class GrantedDevice:
    """One DeviceSpec of an Allocate answer."""

    container_path: str
    host_path: str
    permissions: str


@dataclass(frozen=True)
class ContainerGrantView:
    """One ContainerAllocateResponse, as plain data."""

    devices: tuple[GrantedDevice, ...]
    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[BindMount, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: tuple[str, ...] = ()


# How the runtime is handed the grant: its DeviceSpecs, or its CDI names (a runtime
# with CDI applies the spec's device nodes, owner and mode instead of the host's).
VIA_DEVICE_SPECS = "device-specs"
VIA_CDI = "cdi"


_PERMISSIONS = re.compile(r"^[rwm]{1,3}$")


def device_option(device: GrantedDevice) -> str:
    """`HOST:CONTAINER:PERMS` for `docker run --device`, as the runtime applies a DeviceSpec."""
    permissions = device.permissions or "rwm"  # the runtime's default for an empty field
    if not _PERMISSIONS.match(permissions) or len(set(permissions)) != len(permissions):
        raise ValueError(
            f"DeviceSpec {device.host_path}: permissions {device.permissions!r} "
            "is not a cgroup device permission string (r, w, m)"
        )
    return f"{device.host_path}:{device.container_path}:{permissions}"


def device_groups(host_paths: Iterable[str], group_of: Callable[[str], int]) -> tuple[str, ...]:
    """The groups a non-root workload needs to open the granted nodes.

    The runtime copies each node's owner, group and mode into the container,
    so a process that is neither the owner nor root needs the node's group
    (in Kubernetes: `supplementalGroups`). Group 0 is left out: adding root's
    group to a workload would hand it far more than the devices.
    """
    groups = sorted({group_of(path) for path in host_paths} - {0})
    return tuple(str(g) for g in groups)


def workload_run(
    grant: ContainerGrantView,
    image: str,
    *,
    user: str,
    group_add: Sequence[str],
    entrypoint: Sequence[str],
    command: Sequence[str],
    labels: Mapping[str, str] | None = None,
    via: str = VIA_DEVICE_SPECS,
) -> ContainerRun:
    """A least-privilege workload container with the grant applied as a runtime does.

    Devices become `--device` (the DeviceSpecs' host paths, or, `via` CDI, the CDI
    names alone), envs `-e`, mounts binds, annotations labels (the Docker engine's
    nearest thing to CRI annotations).
    """
    if via not in (VIA_DEVICE_SPECS, VIA_CDI):
        raise ValueError(f"via {via!r} is not {VIA_DEVICE_SPECS!r} or {VIA_CDI!r}")
    if via == VIA_CDI and not grant.cdi_devices:
        raise ValueError("the grant names no CDI device (is the config's cdi key 'off'?)")
    all_labels = dict(grant.annotations)
    all_labels.update(labels or {})
    return ContainerRun(
        image=image,
        entrypoint=tuple(entrypoint),
        command=tuple(command),
        environment=dict(grant.envs),
        binds=grant.mounts,
        devices=() if via == VIA_CDI else tuple(device_option(device) for device in grant.devices),
        cdi_devices=grant.cdi_devices if via == VIA_CDI else (),
        user=user,
        group_add=tuple(group_add),
        read_only=True,
        privileged=False,
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        labels=all_labels,
    )
