"""Device snapshots: stable IDs, health, grant modes, replicas, and allocation.

A :class:`DeviceSnapshot` is immutable and answers ``Allocate`` and
``GetPreferredAllocation`` from memory. :class:`DeviceState` holds the current
snapshot, remembers devices that vanished and pushes changes to subscribers.

IDs. A device's ID is ``<readable>-<8 hex of sha256>``. The readable part comes
from the host path (``/dev/dm-0`` -> ``dm-0``, at most
``MAX_READABLE_ID_CHARS`` characters). The hash comes from the device's sysfs
identity (``dm-uuid:<uuid>``, ``wwid:<wwid>``) when it has one, else from the
host path. So:

- a minor number reused for another LUN (the same ``/dev/dm-3``, another
  ``dm/uuid``) is a new ID: a pod granted the old LUN never gets the new one
  under the old ID;
- an ID never survives a rename: the readable part follows the host path, so a
  device reached under a new name is a new ID even with the same identity (the
  identity only tells apart devices behind the same name);
- without an identity, the ID is today's (hash of the host path), so it
  survives rescans, restarts and a disappear/return.

Health. A device is ``Unhealthy`` when discovery found a problem with it
(``device/state is offline``, ``size is 0``, ...) or when it vanished; the reason
is kept on its record (:attr:`DeviceRecord.problem`) and named by ``Allocate``
errors.

Vanished devices. A device missing from a scan stays listed ``Unhealthy`` (while
the config still selects it) for ``VANISHED_RECORD_TTL_SECONDS`` (300 s), so a
device that blinks out during a path failover keeps its ID and its pods see it
return; after that it is dropped, so a node whose devices come and go does not
accumulate records forever. Expiry is applied by the next ``update`` at or after
the deadline (:meth:`DeviceState.next_expiry` says when that is).

Units: what the kubelet sees.

- ``grant-mode: per-device``: each unit is one device. ``upper-limit`` is the
  number of units per device (how many containers may share one device at
  once; default 1). Unit IDs are ``<device-id>-r<k>``.
- ``grant-mode: all`` (IBM semantics, the default): each unit grants every
  healthy selected device. ``upper-limit`` is the number of units (how many
  containers may hold the device set at once); the default is one unit per
  selected device. Unit IDs are ``set-<k>``. Health follows the kubelet's
  convention, capacity kept and allocatable lowered: an unhealthy device turns
  units ``Unhealthy`` instead of dropping them. With the default, as many units
  are ``Healthy`` as devices are (``set-0`` first), the rest ``Unhealthy``; with
  ``upper-limit``, every unit is ``Healthy`` while one device is. With no healthy
  device every unit is ``Unhealthy`` and refused (fail closed: there is nothing
  to grant).

Bounds. No snapshot has more than ``MAX_UNITS`` units, whatever it is given:
per-device mode lowers the units per device to fit (and advertises nothing if
even one unit per device does not fit), all mode lowers the number of units;
:attr:`DeviceSnapshot.capped` says why. :func:`capacity_problem` lets the config
watcher refuse such a config up front and keep the last good one.

Sharing limits hold because the kubelet can never hand out more units than are
advertised, and it takes a unit back when the pod ends; nothing here counts
``Allocate`` calls.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from . import cdi
from .config import GRANT_ALL, PluginConfig
from .discovery import Candidate, ScanResult, selected_by_config

log = logging.getLogger(__name__)

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

ALL_MODE_UNIT_PREFIX = "set-"
REPLICA_SEPARATOR = "-r"

# The problem of a device that is no longer found by scans.
VANISHED = "vanished"
# How long a vanished device stays listed (Unhealthy) before it is dropped.
VANISHED_RECORD_TTL_SECONDS = 300.0

# The readable part of an ID is cut here, so every ID has a bounded length
# (the hash keeps cut IDs apart). /dev/disk/by-id names (~60 characters) fit.
MAX_READABLE_ID_CHARS = 64

# At most this many units in one snapshot. Every unit is one Device entry in
# every ListAndWatch message, which the kubelet must take in one gRPC message
# (4 MiB by default). The longest unit ID is 64 readable + "-" + 8 hex + "-r" +
# 4 digits = 79 characters; its entry is 1+1+79 (ID) + 1+1+9 ("Unhealthy") = 92
# bytes inside 1+1 bytes of field tag and length = 94 bytes. 10 000 x 94 bytes
# = 940 000 bytes, under 1 MiB (a typical entry, "dm-12-1a2b3c4d-r0" Healthy,
# is ~30 bytes: ~300 KB). tests/unit/test_devices.py serialises the worst case.
MAX_UNITS = 10_000


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
    # Fully qualified CDI names (vendor/class=name) the runtime resolves from the spec.
    cdi_devices: tuple[str, ...] = ()


DEFAULT_RESOURCE = "power-dev-plugin/dev"
# The CDI device that holds every healthy device: what an all-mode unit names.
CDI_ALL_DEVICES = "all"


@dataclass(frozen=True)
class GrantNaming:
    """How grants name what they hand out: derived from the resource once."""

    resource: str = DEFAULT_RESOURCE
    # The env var that lists a grant's devices: PDP_DEVICES for IBM's one resource,
    # one per resource in a ``resources`` list (cdi.grant_env_for).
    env_name: str = cdi.GRANT_ENV

    @property
    def cdi_kind(self) -> str:
        return cdi.cdi_kind_for(self.resource)

    @property
    def annotation_key(self) -> str:
        return cdi.grant_annotation_key(self.resource)


@dataclass(frozen=True)
class AdvertisedDevice:
    """What ListAndWatch sends: one unit of the resource."""

    id: str
    health: str
    # NUMA nodes for the kubelet's topology manager; () when unknown or spread.
    numa_nodes: tuple[int, ...] = ()


# Client input quoted in an error or a log line is cut to this many characters: an
# ID is at most 79 (see MAX_UNITS), anything longer is not one of ours.
MAX_QUOTED_CHARS = 80


def quoted(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` as repr() quotes it, cut to a prefix of ``limit`` characters when longer
    (saying how long it was): client input never reaches a message whole."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class AllocationError(Exception):
    """A request named an ID that cannot be granted; nothing was granted.

    ``device_id`` is the first bad ID (whole: for comparison, never for messages);
    ``bad`` is how many of the request's IDs were bad."""

    def __init__(self, device_id: str, code: str, message: str, bad: int = 1) -> None:
        super().__init__(message)
        self.device_id = device_id
        self.code = code  # "unknown" | "unhealthy"
        self.bad = bad


@dataclass(frozen=True)
class DeviceRecord:
    """One physical device the plugin knows about."""

    device_id: str
    host_path: str
    kind: str = ""
    aliases: tuple[str, ...] = ()
    source: str = ""
    rule: str = ""
    rdev: tuple[int, int] | None = None
    identity: str = ""
    # Why the device is Unhealthy: discovery's problem, or VANISHED; "" when healthy.
    problem: str = ""
    # Clock reading of the first update that missed the device; None while present.
    vanished_at: float | None = None
    numa_nodes: tuple[int, ...] = ()

    @property
    def health(self) -> str:
        return UNHEALTHY if self.problem else HEALTHY


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9.]+")


def device_id_for(host_path: str, identity: str = "") -> str:
    """Stable ID of a device: readable from its host path, unique by a hash of its
    identity (or of the host path when it has none). See the module docstring."""
    readable = _UNSAFE_ID_CHARS.sub("-", host_path.removeprefix("/dev/")).strip("-")
    readable = readable[:MAX_READABLE_ID_CHARS].rstrip("-")
    digest = hashlib.sha256((identity or host_path).encode("utf-8")).hexdigest()[:8]
    return f"{readable or 'dev'}-{digest}"


@dataclass(frozen=True)
class _GrantStyle:
    """What a snapshot's grants carry besides the device list (from config and naming)."""

    permissions: str = "rw"
    cdi_mode: str = cdi.CDI_OFF
    cdi_kind: str = ""
    annotation_key: str = ""
    env_name: str = cdi.GRANT_ENV


def _grant(
    records: Sequence[DeviceRecord], style: _GrantStyle, cdi_names: Sequence[str] = ()
) -> ContainerGrant:
    """Host paths on both sides: the container sees each device where the host has it
    (the name the config selected). The same list is in the env and an annotation,
    so the workload can tell what it got."""
    paths = [r.host_path for r in records]
    specs = () if style.cdi_mode == cdi.CDI_ONLY else paths
    qualified = (
        tuple(cdi.qualified_name(style.cdi_kind, n) for n in cdi_names)
        if style.cdi_mode != cdi.CDI_OFF
        else ()
    )
    value = cdi.grant_value(paths)
    return ContainerGrant(
        devices=tuple(DeviceSpecGrant(p, p, style.permissions) for p in specs),
        envs={style.env_name: value} if paths else {},
        annotations={style.annotation_key: value} if paths and style.annotation_key else {},
        cdi_devices=qualified,
    )


def _cdi_names(records: Sequence[DeviceRecord]) -> list[str]:
    """Per-device CDI names: a device is in the spec only with a device number."""
    return [r.device_id for r in records if r.rdev is not None]


# The sorted sources of a request's units: equal keys, equal grants.
GrantKey = tuple[int, ...]

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
    # Why fewer units are advertised than the config asks for ("" when not capped).
    capped: str = ""
    _unit_source: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    # Unit ID -> why it is Unhealthy ("" when it is Healthy).
    _unit_problem: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # Healthy unit ID -> its source (what preferred() may pick from).
    _healthy_unit_source: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)
    # all mode answers every request with the same grant: built once per snapshot.
    _whole_set_grant: ContainerGrant = field(
        default_factory=lambda: ContainerGrant(devices=()), repr=False, compare=False
    )
    _style: _GrantStyle = field(default_factory=_GrantStyle, repr=False, compare=False)
    # per-device mode: units each device has (0 in all mode).
    _units_per_device: int = field(default=0, repr=False, compare=False)
    # The owner granted nodes get inside the container (CDI).
    device_owner: cdi.DeviceOwner = field(default_factory=cdi.DeviceOwner)
    cdi_kind: str = ""

    def health_counts(self) -> dict[str, int]:
        """Physical devices by health (for metrics)."""
        counts = {HEALTHY: 0, UNHEALTHY: 0}
        for record in self.records:
            counts[record.health] += 1
        return counts

    def _check(self, ids: Sequence[str]) -> None:
        """Raise for the first bad ID, quoting at most a prefix of it and counting the
        bad ones among ``ids``."""
        problems = self._unit_problem
        bad = [(i, problems.get(i)) for i in ids if problems.get(i) != ""]
        if not bad:
            return
        device_id, problem = bad[0]
        more = f" ({len(bad)} of {len(ids)} IDs cannot be granted)" if len(bad) > 1 else ""
        if problem is None:
            raise AllocationError(
                device_id,
                "unknown",
                f"device ID {quoted(device_id)} is not advertised by this plugin{more}",
                len(bad),
            )
        raise AllocationError(
            device_id,
            "unhealthy",
            f"device ID {quoted(device_id)} is Unhealthy: {problem}{more}",
            len(bad),
        )

    def allocate(self, ids: Sequence[str]) -> ContainerGrant:
        """The grant for one container's IDs; raises AllocationError, never grants half.

        The answer depends only on the set of IDs and the snapshot, so the kubelet's
        re-allocation after a restart gets the same answer.
        """
        return self.grant_for(self.grant_key(ids))

    def grant_key(self, ids: Sequence[str]) -> GrantKey:
        """What a request's grant depends on within this snapshot; raises AllocationError.

        Two requests with the same key get the same grant, so a caller may keep the
        wire form of a grant per key for as long as it holds this snapshot.
        """
        self._check(ids)
        sources = {self._unit_source[i] for i in ids}
        if _WHOLE_SET in sources:
            return (_WHOLE_SET,)
        return tuple(sorted(sources))

    def grant_for(self, key: GrantKey) -> ContainerGrant:
        """The grant for a key from :meth:`grant_key` of this snapshot."""
        if key == (_WHOLE_SET,):
            return self._whole_set_grant
        records = [self.records[index] for index in key]
        return _grant(records, self._style, _cdi_names(records))

    @property
    def cdi_mode(self) -> str:
        return self._style.cdi_mode

    @property
    def uses_cdi(self) -> bool:
        """Whether grants name CDI devices (so the spec must be on disk first)."""
        return self._style.cdi_mode != cdi.CDI_OFF

    def cdi_spec_devices(self) -> tuple[cdi.CdiDevice, ...]:
        """The CDI devices grants of this snapshot name: one per healthy device with a
        number, plus, in all mode, ``all`` with every one of them."""
        if not self.uses_cdi:
            return ()
        devices = [
            cdi.CdiDevice(r.device_id, (self._cdi_node(r),))
            for r in self.records
            if not r.problem and r.rdev is not None
        ]
        if self.grant_mode == GRANT_ALL and devices:
            nodes = tuple(d.nodes[0] for d in devices)
            devices.append(cdi.CdiDevice(CDI_ALL_DEVICES, nodes))
        return tuple(devices)

    def _cdi_node(self, record: DeviceRecord) -> cdi.CdiNode:
        assert record.rdev is not None
        major, minor = record.rdev
        return cdi.CdiNode(
            container_path=record.host_path,
            host_path=record.host_path,
            kind=record.kind or "block",
            major=major,
            minor=minor,
            permissions=self.permissions,
        )

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """The IDs to grant, as GetPreferredAllocation answers them.

        Only IDs from ``available``, no duplicates: first every ``must_include`` ID
        that is in ``available`` (all of them, even beyond ``size``: the kubelet
        requires them), then healthy advertised units up to ``size`` in all, fewer
        only when ``available`` has no more. They are spread over distinct devices:
        the device with the fewest units already picked (``must_include`` counts)
        wins, then the one with the most free units (the least used), then
        snapshot order. O(n log n) for n available IDs.
        """
        remaining = dict.fromkeys(available)  # deduplicated, in the kubelet's order
        chosen: list[str] = []
        for device_id in must_include:
            if device_id in remaining:
                del remaining[device_id]
                chosen.append(device_id)
        source_of = self._healthy_unit_source
        if self.grant_mode != GRANT_ALL and self._units_per_device == 1:
            return self._preferred_one_unit_each(remaining, chosen, size)
        free_by_device: dict[int, list[str]] = {}
        for device_id in remaining:
            source = source_of.get(device_id)
            if source is not None:
                free = free_by_device.get(source)
                if free is None:
                    free_by_device[source] = [device_id]
                else:
                    free.append(device_id)
        picked_per_device: dict[int, int] = {}
        for device_id in chosen:
            source = self._unit_source.get(device_id)
            if source is not None:
                picked_per_device[source] = picked_per_device.get(source, 0) + 1
        needed = size - len(chosen)
        if needed <= 0 or not free_by_device:
            return chosen
        # Each unit is one int ordered as the rule above: picks so far, then free
        # units (fewer sort later), then snapshot order (+1: all mode's source is -1).
        # Taking a device's next unit adds one pick and one free unit less, i.e. a
        # fixed step, so a device's units form an increasing run; the greedy picks
        # are then the smallest keys of all runs (a k-way merge), found by one sort.
        sources = len(self.records) + 2
        free_span = len(remaining) + 1
        step = sources * (free_span + 1)
        keys: list[int] = []
        for source, free in free_by_device.items():
            picked = picked_per_device.get(source, 0)
            first = (picked * free_span + free_span - len(free)) * sources + source + 1
            keys.extend(range(first, first + len(free) * step, step))
        keys.sort()
        for key in keys[:needed]:
            source = key % sources - 1
            free = free_by_device[source]
            # The middle digit is free_span - (free units left); the units taken before
            # this one are len(free) - (free units left).
            left = free_span - (key // sources) % free_span
            chosen.append(free[len(free) - left])
        return chosen

    def _preferred_one_unit_each(
        self, remaining: Mapping[str, None], chosen: list[str], size: int
    ) -> list[str]:
        """The same rule when every device has one unit (per-device mode's default): a
        device already picked through ``must_include`` has no unit left, so every free
        unit ties on picks and free units and snapshot order alone decides."""
        needed = size - len(chosen)
        if needed <= 0:
            return chosen
        source_of = self._healthy_unit_source.get
        pairs = [
            (source, i)
            for i, source in zip(remaining, map(source_of, remaining))
            if source is not None
        ]
        pairs.sort(key=_source_order)
        chosen.extend(i for _, i in pairs[:needed])
        return chosen


def _source_order(pair: tuple[int, str]) -> int:
    return pair[0]


def units_per_device(config: PluginConfig) -> int:
    """per-device mode: how many containers may share one device."""
    return config.upper_limit or 1


def set_units(config: PluginConfig, device_count: int) -> int:
    """all mode: how many containers may hold the device set at once, counting every
    selected device, healthy or not (none when nothing is selected)."""
    if device_count == 0:
        return 0
    return config.upper_limit or device_count


def healthy_set_units(config: PluginConfig, units: int, healthy_count: int) -> int:
    """all mode: how many of the ``units`` are Healthy: none without a healthy device;
    with the default upper-limit one per healthy device; else all of them."""
    if healthy_count == 0:
        return 0
    return units if config.upper_limit else min(units, healthy_count)


# At most this many devices named in an all-mode unit's problem.
_MAX_PROBLEMS_SHOWN = 3


def _set_problem(records: Sequence[DeviceRecord], healthy_count: int) -> str:
    """Why an all-mode unit is Unhealthy: how many devices are, naming the first few."""
    unhealthy = [r for r in records if r.problem]
    shown = "; ".join(f"{r.host_path}: {r.problem}" for r in unhealthy[:_MAX_PROBLEMS_SHOWN])
    if len(unhealthy) > _MAX_PROBLEMS_SHOWN:
        shown += f"; and {len(unhealthy) - _MAX_PROBLEMS_SHOWN} more"
    if healthy_count == 0:
        return f"no selected device is healthy ({shown})"
    return (
        f"{healthy_count} of {len(records)} selected devices healthy: "
        f"one Healthy unit per healthy device ({shown})"
    )


# Capacity messages multiply with the multiplication sign, as people write it.
_TIMES = "\N{MULTIPLICATION SIGN}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def capacity_problem(config: PluginConfig, device_count: int) -> str | None:
    """Why the config would advertise more than MAX_UNITS units for ``device_count``
    selected devices (naming the field to change), or None when it fits."""
    if config.grant_mode == GRANT_ALL:
        units = set_units(config, device_count)
        if units <= MAX_UNITS:
            return None
        if config.upper_limit:
            return f"upper-limit: {units} units, over the cap of {MAX_UNITS}"
        return (
            f"upper-limit: unset (1 unit per device) {_TIMES} "
            f"{_plural(device_count, 'device')} = {units} units, over the cap of {MAX_UNITS}"
        )
    per_device = units_per_device(config)
    units = per_device * device_count
    if units <= MAX_UNITS:
        return None
    limit = (
        f"{_plural(per_device, 'unit')} per device"
        if config.upper_limit
        else "unset (1 unit per device)"
    )
    return (
        f"upper-limit: {limit} {_TIMES} {_plural(device_count, 'device')} = {units} units, "
        f"over the cap of {MAX_UNITS}"
    )


def build_snapshot(
    records: Sequence[DeviceRecord],
    config: PluginConfig,
    naming: GrantNaming = GrantNaming(),
) -> DeviceSnapshot:
    """Units for the records under the config's grant mode and upper-limit (pure).

    Never more than MAX_UNITS units; when the config asks for more, the snapshot
    has fewer and ``capped`` says why.
    """
    devices: list[AdvertisedDevice] = []
    unit_source: dict[str, int] = {}
    unit_problem: dict[str, str] = {}
    per_device = 0
    healthy = [r for r in records if not r.problem]
    style = _GrantStyle(
        permissions=config.permissions,
        cdi_mode=config.cdi,
        cdi_kind=naming.cdi_kind if config.cdi != cdi.CDI_OFF else "",
        annotation_key=naming.annotation_key,
        env_name=naming.env_name,
    )
    capped = ""
    if config.grant_mode == GRANT_ALL:
        set_numa = whole_set_numa_nodes(healthy)
        units = set_units(config, len(records))
        problem = capacity_problem(config, len(records))
        if problem is not None:
            units = MAX_UNITS
            capped = f"{problem}; advertising {MAX_UNITS} units"
        healthy_units = healthy_set_units(config, units, len(healthy))
        set_problem = _set_problem(records, len(healthy)) if healthy_units < units else ""
        for k in range(units):
            unit_id = f"{ALL_MODE_UNIT_PREFIX}{k}"
            why = "" if k < healthy_units else set_problem
            devices.append(AdvertisedDevice(unit_id, UNHEALTHY if why else HEALTHY, set_numa))
            unit_source[unit_id] = _WHOLE_SET
            unit_problem[unit_id] = why
    else:
        per_device = units_per_device(config)
        problem = capacity_problem(config, len(records))
        if problem is not None:
            per_device = MAX_UNITS // len(records)
            if per_device:
                capped = f"{problem}; advertising {_plural(per_device, 'unit')} per device"
            else:
                capped = f"{problem}; advertising no units"
        for index, record in enumerate(records):
            for k in range(per_device):
                unit_id = f"{record.device_id}{REPLICA_SEPARATOR}{k}"
                devices.append(AdvertisedDevice(unit_id, record.health, record.numa_nodes))
                unit_source[unit_id] = index
                unit_problem[unit_id] = record.problem
    return DeviceSnapshot(
        devices=tuple(devices),
        records=tuple(records),
        grant_mode=config.grant_mode,
        permissions=config.permissions,
        capped=capped,
        _unit_source=unit_source,
        _unit_problem=unit_problem,
        _healthy_unit_source={
            u: unit_source[u] for u, problem in unit_problem.items() if not problem
        },
        _whole_set_grant=_grant(
            healthy, style, [CDI_ALL_DEVICES] if any(r.rdev for r in healthy) else []
        ),
        _style=style,
        _units_per_device=per_device,
        device_owner=config.device_owner,
        cdi_kind=style.cdi_kind,
    )


def whole_set_numa_nodes(records: Sequence[DeviceRecord]) -> tuple[int, ...]:
    """The NUMA node of an all-mode unit: one only when every device it grants sits on
    that one node. A set spread over nodes (or with a device of unknown node) gets none,
    so a topology manager with the single-numa-node policy does not refuse the pod for
    a set no single node holds."""
    nodes = {r.numa_nodes for r in records}
    if len(nodes) == 1:
        (only,) = nodes
        if len(only) == 1:
            return only
    return ()


def _record(candidate: Candidate) -> DeviceRecord:
    return DeviceRecord(
        device_id=device_id_for(candidate.host_path, candidate.identity),
        host_path=candidate.host_path,
        kind=candidate.kind,
        aliases=candidate.aliases,
        source=candidate.source,
        rule=candidate.rule,
        rdev=candidate.rdev,
        identity=candidate.identity,
        problem=candidate.problem,
        numa_nodes=candidate.numa_nodes,
    )


def merge_records(
    previous: Mapping[str, DeviceRecord], result: ScanResult, config: PluginConfig, now: float
) -> list[DeviceRecord]:
    """The records after a scan at clock reading ``now`` (pure).

    Advertised candidates are recorded with their problem (if any). A known device
    missing from the scan stays, Unhealthy with problem VANISHED, while the config
    still selects it and for less than VANISHED_RECORD_TTL_SECONDS since the first
    scan that missed it. Two present devices with one ID (one identity behind two
    names) are both kept out of use: the first is recorded Unhealthy, saying so.
    Sorted by host path, then ID (stable order).
    """
    merged: dict[str, DeviceRecord] = {}
    for candidate in result.advertised():
        record = _record(candidate)
        first = merged.get(record.device_id)
        if first is None:
            merged[record.device_id] = record
        else:
            merged[record.device_id] = replace(
                first, problem=f"same ID as {record.host_path} (same identity {record.identity!r})"
            )
    for device_id, old in previous.items():
        if device_id in merged:
            continue
        if not selected_by_config(config, old.host_path, old.aliases, old.source):
            continue
        vanished_at = now if old.vanished_at is None else old.vanished_at
        if now - vanished_at >= VANISHED_RECORD_TTL_SECONDS:
            continue
        merged[device_id] = replace(old, problem=VANISHED, vanished_at=vanished_at)
    return sorted(merged.values(), key=lambda r: (r.host_path, r.device_id))


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


SnapshotBuilder = Callable[[Sequence[DeviceRecord], PluginConfig, GrantNaming], DeviceSnapshot]
# Called with a snapshot that names CDI devices before it is published (writes the spec).
SpecWriter = Callable[[DeviceSnapshot], None]


class DeviceState:
    """Thread-safe holder of the current snapshot; publishes changes to subscribers.

    A new DeviceState advertises no units until its first ``update``. ``clock`` is
    a monotonic clock (seconds) for the expiry of vanished devices; ``build`` makes
    a snapshot from records (tests slow it down to watch the locking).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        build: SnapshotBuilder = build_snapshot,
        naming: GrantNaming = GrantNaming(),
        before_publish: SpecWriter | None = None,
    ) -> None:
        self._clock = clock
        self._build = build
        self._naming = naming
        self._before_publish = before_publish
        # Why the last snapshot's grants could not name CDI devices ("" when they could).
        self.cdi_problem = ""
        # Held by readers (current, Allocate, subscribers) only for a reference swap.
        self._changed = threading.Condition(threading.Lock())
        # Serialises updates; held while merging and building, which may be slow.
        self._updating = threading.Lock()
        self._snapshot = DeviceSnapshot()
        self._known: dict[str, DeviceRecord] = {}  # by device ID; only under _updating
        self._version = 0
        self._subscriptions: set[Subscription] = set()

    @property
    def resource(self) -> str:
        return self._naming.resource

    def current(self) -> DeviceSnapshot:
        with self._changed:
            return self._snapshot

    def update(self, result: ScanResult, config: PluginConfig) -> bool:
        """Apply a scan under a config; True (and subscribers woken) if the advertised list changed.

        The snapshot is replaced even when the list is the same, so a permission
        change applies to the next Allocate. Merging and building happen outside
        the readers' lock: Allocate and ListAndWatch keep answering from the old
        snapshot meanwhile.
        """
        with self._updating:
            records = merge_records(self._known, result, config, self._clock())
            snapshot = self._build(records, config, self._naming)
            snapshot = self._spec_written(snapshot, records, config)
            # Only update() replaces the snapshot, and updates are serialised.
            changed = snapshot.devices != self._snapshot.devices
            with self._changed:
                self._snapshot = snapshot
                if changed:
                    self._version += 1
                    self._changed.notify_all()
            self._known = {r.device_id: r for r in records}
            return changed

    def _spec_written(
        self, snapshot: DeviceSnapshot, records: Sequence[DeviceRecord], config: PluginConfig
    ) -> DeviceSnapshot:
        """Write the CDI spec of a snapshot before anyone can be granted its names.

        When it cannot be written, grants must not name CDI devices the runtime
        cannot resolve: with ``cdi: both`` they carry DeviceSpecs only; with
        ``cdi: only`` nothing is advertised (fail closed)."""
        if self._before_publish is None:
            return snapshot
        try:
            self._before_publish(snapshot)
        except Exception as error:  # an OSError, or anything the writer trips on
            problem = f"CDI spec not written: {error}"
            if problem != self.cdi_problem:
                log.error("%s", problem)
            self.cdi_problem = problem
            if config.cdi == cdi.CDI_ONLY:
                return replace(
                    self._build([], config, self._naming),
                    capped=f"{problem}; cdi is 'only', so no units are advertised",
                )
            return replace(
                self._build(records, replace(config, cdi=cdi.CDI_OFF), self._naming),
                capped=f"{problem}; grants carry DeviceSpecs only",
            )
        if self.cdi_problem:
            log.info("CDI spec written again: grants name CDI devices")
        self.cdi_problem = ""
        return snapshot

    def next_expiry(self) -> float | None:
        """Clock reading at which the first vanished device is due to be dropped
        (by an update at or after it), or None when none has vanished."""
        with self._updating:
            deadlines = [
                r.vanished_at + VANISHED_RECORD_TTL_SECONDS
                for r in self._known.values()
                if r.vanished_at is not None
            ]
        return min(deadlines, default=None)

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
