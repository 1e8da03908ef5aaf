"""Device snapshots: stable IDs, health, grant modes, replicas, and allocation.

A :class:`DeviceSnapshot` is immutable and answers ``Allocate`` and
``GetPreferredAllocation`` from memory. :class:`DeviceState` holds the current
snapshot, remembers devices that vanished (they stay listed ``Unhealthy`` while
the config still selects them) and pushes changes to subscribers.

IDs. A device's ID is derived from its host path (``/dev/dm-0`` ->
``dm-0-<8 hex of sha256>``), so it survives rescans, restarts and a
disappear/return. What the kubelet sees are *units*:

- ``grant-mode: per-device``: each unit is one device. ``upper-limit`` is the
  number of units per device (how many containers may share one device at
  once; default 1). Unit IDs are ``<device-id>-r<k>``.
- ``grant-mode: all`` (IBM semantics, the default): each unit grants every
  healthy selected device. ``upper-limit`` is the number of units (how many
  containers may hold the device set at once); the default is one unit per
  selected device, which is the capacity IBM's plugin advertised. Unit IDs are
  ``set-<k>``.

Sharing limits hold because the kubelet can never hand out more units than are
advertised, and it takes a unit back when the pod ends; nothing here counts
``Allocate`` calls.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .config import GRANT_ALL, PluginConfig
from .discovery import Candidate, ScanResult, selected_by_config

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

ALL_MODE_UNIT_PREFIX = "set-"
REPLICA_SEPARATOR = "-r"


@dataclass(frozen=True)
class DeviceSpecGrant:
    container_path: str
    host_path: str
    permissions: str


class MountGrant(NamedTuple):
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class ContainerGrant:
    devices: tuple[DeviceSpecGrant, ...]
    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[MountGrant, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AdvertisedDevice:
    """What ListAndWatch sends: one unit of the resource."""

    id: str
    health: str


class AllocationError(Exception):
    """A request named an ID that cannot be granted; nothing was granted."""

    def __init__(self, device_id: str, code: str, message: str) -> None:
        super().__init__(message)
        self.device_id = device_id
        self.code = code  # "unknown" | "unhealthy"


@dataclass(frozen=True)
class DeviceRecord:
    """One physical device the plugin knows about."""

    device_id: str
    host_path: str
    health: str
    kind: str = ""
    aliases: tuple[str, ...] = ()
    source: str = ""
    rule: str = ""


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9.]+")


def device_id_for(host_path: str) -> str:
    """Stable ID of a device: readable from its host path, unique by a hash of it."""
    readable = _UNSAFE_ID_CHARS.sub("-", host_path.removeprefix("/dev/")).strip("-")
    digest = hashlib.sha256(host_path.encode("utf-8")).hexdigest()[:8]
    return f"{readable or 'dev'}-{digest}"


def _grant(records: Sequence[DeviceRecord], permissions: str) -> ContainerGrant:
    """Host paths on both sides: the container sees each device where the host has it."""
    return ContainerGrant(
        devices=tuple(DeviceSpecGrant(r.host_path, r.host_path, permissions) for r in records)
    )


# Where a unit's grant comes from: the index of its device in the records, or the
# whole healthy set (all mode).
_WHOLE_SET = -1


@dataclass(frozen=True)
class DeviceSnapshot:
    """An immutable view of the advertised units and how to grant them."""

    devices: tuple[AdvertisedDevice, ...] = ()
    records: tuple[DeviceRecord, ...] = ()
    grant_mode: str = GRANT_ALL
    permissions: str = "rw"
    _unit_source: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    _unit_health: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # all mode answers every request with the same grant: built once per snapshot.
    _whole_set_grant: ContainerGrant = field(
        default_factory=lambda: ContainerGrant(devices=()), repr=False, compare=False
    )

    def health_counts(self) -> dict[str, int]:
        """Physical devices by health (for metrics)."""
        counts = {HEALTHY: 0, UNHEALTHY: 0}
        for record in self.records:
            counts[record.health] += 1
        return counts

    def _check(self, ids: Sequence[str]) -> None:
        for device_id in ids:
            health = self._unit_health.get(device_id)
            if health is None:
                raise AllocationError(
                    device_id,
                    "unknown",
                    f"device ID {device_id!r} is not advertised by this plugin",
                )
            if health != HEALTHY:
                raise AllocationError(
                    device_id,
                    "unhealthy",
                    f"device ID {device_id!r} is Unhealthy (its device node is gone)",
                )

    def allocate(self, ids: Sequence[str]) -> ContainerGrant:
        """The grant for one container's IDs; raises AllocationError, never grants half.

        The answer depends only on the set of IDs and the snapshot, so the kubelet's
        re-allocation after a restart gets the same answer.
        """
        self._check(ids)
        sources = {self._unit_source[i] for i in ids}
        if _WHOLE_SET in sources:
            return self._whole_set_grant
        return _grant([self.records[index] for index in sorted(sources)], self.permissions)

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """Pick ``size`` IDs: ``must_include`` first, then spread over distinct devices.

        Among devices, the one with the fewest units already picked wins, then the
        one with the most free units (the least used), then snapshot order.
        """
        chosen: list[str] = []
        for device_id in must_include:
            if device_id not in chosen:
                chosen.append(device_id)
        free_by_device: dict[int, list[str]] = {}
        seen = set(chosen)
        for device_id in available:
            if device_id in seen or self._unit_health.get(device_id) != HEALTHY:
                continue
            seen.add(device_id)
            free_by_device.setdefault(self._unit_source[device_id], []).append(device_id)
        picked_per_device: dict[int, int] = {}
        for device_id in chosen:
            source = self._unit_source.get(device_id)
            if source is not None:
                picked_per_device[source] = picked_per_device.get(source, 0) + 1
        while len(chosen) < size and free_by_device:
            best = min(
                free_by_device,
                key=lambda d: (picked_per_device.get(d, 0), -len(free_by_device[d]), d),
            )
            chosen.append(free_by_device[best].pop(0))
            picked_per_device[best] = picked_per_device.get(best, 0) + 1
            if not free_by_device[best]:
                del free_by_device[best]
        return chosen


def units_per_device(config: PluginConfig) -> int:
    """per-device mode: how many containers may share one device."""
    return config.upper_limit or 1


def set_units(config: PluginConfig, device_count: int) -> int:
    """all mode: how many containers may hold the device set at once."""
    if device_count == 0:
        return 0
    return config.upper_limit or device_count


def build_snapshot(records: Sequence[DeviceRecord], config: PluginConfig) -> DeviceSnapshot:
    """Units for the records under the config's grant mode and upper-limit (pure)."""
    devices: list[AdvertisedDevice] = []
    unit_source: dict[str, int] = {}
    if config.grant_mode == GRANT_ALL:
        any_healthy = any(r.health == HEALTHY for r in records)
        health = HEALTHY if any_healthy else UNHEALTHY
        for k in range(set_units(config, len(records))):
            unit_id = f"{ALL_MODE_UNIT_PREFIX}{k}"
            devices.append(AdvertisedDevice(unit_id, health))
            unit_source[unit_id] = _WHOLE_SET
    else:
        for index, record in enumerate(records):
            for k in range(units_per_device(config)):
                unit_id = f"{record.device_id}{REPLICA_SEPARATOR}{k}"
                devices.append(AdvertisedDevice(unit_id, record.health))
                unit_source[unit_id] = index
    return DeviceSnapshot(
        devices=tuple(devices),
        records=tuple(records),
        grant_mode=config.grant_mode,
        permissions=config.permissions,
        _unit_source=unit_source,
        _unit_health={d.id: d.health for d in devices},
        _whole_set_grant=_grant([r for r in records if r.health == HEALTHY], config.permissions),
    )


def _record(candidate: Candidate, health: str) -> DeviceRecord:
    return DeviceRecord(
        device_id=device_id_for(candidate.host_path),
        host_path=candidate.host_path,
        health=health,
        kind=candidate.kind,
        aliases=candidate.aliases,
        source=candidate.source,
        rule=candidate.rule,
    )


def merge_records(
    previous: Mapping[str, DeviceRecord], result: ScanResult, config: PluginConfig
) -> list[DeviceRecord]:
    """Advertised candidates are Healthy; known devices that vanished stay Unhealthy
    while the config still selects them. Sorted by host path (stable order)."""
    merged = {c.host_path: _record(c, HEALTHY) for c in result.advertised()}
    for host_path, old in previous.items():
        if host_path in merged:
            continue
        if selected_by_config(config, old.host_path, old.aliases, old.source):
            merged[host_path] = DeviceRecord(
                old.device_id, old.host_path, UNHEALTHY, old.kind, old.aliases, old.source, old.rule
            )
    return [merged[k] for k in sorted(merged)]


class Subscription:
    """One ListAndWatch stream's view of the state's changes."""

    def __init__(self, state: DeviceState, seen_version: int) -> None:
        self._state = state
        self._seen_version = seen_version
        self.closed = False

    def wait(self, timeout: float | None) -> DeviceSnapshot | None:
        """The newest snapshot if the list changed since the last call (several
        changes coalesce into one), else None after ``timeout`` or once closed."""
        return self._state._wait(self, timeout)

    def close(self) -> None:
        self._state._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DeviceState:
    """Thread-safe holder of the current snapshot; publishes changes to subscribers."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._snapshot = DeviceSnapshot()
        self._known: dict[str, DeviceRecord] = {}
        self._version = 0
        self._subscriptions: set[Subscription] = set()

    def current(self) -> DeviceSnapshot:
        with self._changed:
            return self._snapshot

    def update(self, result: ScanResult, config: PluginConfig) -> bool:
        """Apply a scan under a config; True (and subscribers woken) if the advertised list changed.

        The snapshot is replaced even when the list is the same, so a permission
        change applies to the next Allocate.
        """
        with self._changed:
            records = merge_records(self._known, result, config)
            snapshot = build_snapshot(records, config)
            changed = snapshot.devices != self._snapshot.devices
            self._snapshot = snapshot
            self._known = {r.host_path: r for r in records}
            if changed:
                self._version += 1
                self._changed.notify_all()
            return changed

    def subscribe(self) -> Subscription:
        """A subscription that reports changes after this call (send ``current()`` first)."""
        with self._changed:
            subscription = Subscription(self, self._version)
            self._subscriptions.add(subscription)
            return subscription

    def subscriber_count(self) -> int:
        with self._changed:
            return len(self._subscriptions)

    def close_subscriptions(self) -> None:
        """Wake and close every subscription (shutdown)."""
        with self._changed:
            for subscription in self._subscriptions:
                subscription.closed = True
            self._subscriptions.clear()
            self._changed.notify_all()

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._changed:
            subscription.closed = True
            self._subscriptions.discard(subscription)
            self._changed.notify_all()

    def _wait(self, subscription: Subscription, timeout: float | None) -> DeviceSnapshot | None:
        with self._changed:
            self._changed.wait_for(
                lambda: subscription.closed or self._version != subscription._seen_version,
                timeout,
            )
            if subscription.closed or self._version == subscription._seen_version:
                return None
            subscription._seen_version = self._version
            return self._snapshot
