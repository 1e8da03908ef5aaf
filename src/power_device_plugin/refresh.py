"""Health facts re-read for just the devices a batch of kernel uevents names.

Interface (what the device watcher uses)::

    plan = plan_refresh(wake.uevents, wake.uevents_lost, sys_root)
    if plan.rescan: ...full scan...                  # says why
    else: result = refreshed(last_result, plan.entries)   # None: full scan after all

A ``change`` (or ``online``, ``offline``, ``bind``, ``unbind``) of a block device
names its sysfs entry. The facts that make a device Unhealthy live on that entry
(``size``, ``dm/suspended``), on its disk's (``device/state``, for a partition), or
on the paths below a multipath map (their ``device/state``), so an event also
re-reads the entries that depend on the one named: the disk's partitions and,
through ``holders/``, the maps above it (a path going away reaches its map). A SCSI
device event names the block devices under it (``<devpath>/block/*``).

The named entries are found by the event's ``DEVPATH`` under the sysfs root, else
``<sys-root>/dev/block/MAJOR:MINOR``, else ``<sys-root>/block/DEVNAME``; each is
confirmed by its ``dev`` file. Only advertised block candidates of the last scan
are looked at again, with ``discovery.sysfs_problem`` and ``sysfs_identity``, the
functions the scan uses.

An event that adds, removes or moves a device is not re-read here: it is in
``Plan.structural``, and the watcher's round compares the trees' signatures (the
names in ``<sys-root>/block``, the ``/dev`` directories), which such an event
changes, and scans fully if they differ; a device on the node it advertises that is
removed makes it scan at once. A change whose device has no entry in the plugin's
sysfs view is in ``Plan.unresolved``: the watcher scans fully only if it advertises
that device number. A full scan is needed (``Plan.rescan`` says why) when the kernel
dropped events; and ``refreshed`` gives None when a device's identity changed (a new
ID) or its entry went away meanwhile.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from .discovery import (
    ADVERTISED,
    KIND_BLOCK,
    ScanResult,
    parse_device_number,
    sysfs_identity,
    sysfs_problem,
)
from .resources import ResourcesScan
from .small_files import list_dir, read_text
from .uevents import DeviceNumber, Uevent

# Subsystems whose events can change a block device's health.
SUBSYSTEMS = frozenset({"block", "scsi"})
# How far up holders/ is followed (a partition under LVM under crypt under multipath
# is 4), and how many entries one batch may name before a full scan is cheaper.
MAX_HOLDER_DEPTH = 8
MAX_ENTRIES = 20000


def is_device_event(event: Uevent) -> bool:
    """The uevents that concern block devices (what wakes the watcher)."""
    if event.subsystem == "block":
        return True
    return event.subsystem == "scsi" and event.devtype == "scsi_device"


@dataclass(frozen=True)
class Plan:
    """Why a full scan is needed ("" when not), else the entries to re-read by device number."""

    rescan: str = ""
    entries: Mapping[DeviceNumber, str] = field(default_factory=dict)
    # The add, remove and move events, left to the signature check (see above).
    structural: tuple[Uevent, ...] = ()
    # Changes of devices with no sysfs entry under the root (gone, or never there).
    unresolved: tuple[Uevent, ...] = ()


def _text(path: str) -> str | None:
    text = read_text(path)
    return None if text is None else text.strip()


def _number(entry: str) -> DeviceNumber | None:
    return parse_device_number(_text(entry + "/dev"))


def _devpath_ok(devpath: str) -> bool:
    return devpath.startswith("/devices/") and posixpath.normpath(devpath) == devpath


def _named_entry(sys_root: str, event: Uevent) -> tuple[str, DeviceNumber] | None:
    """The sysfs entry of the block device an event names, confirmed by its number."""
    tried: list[str] = []
    if _devpath_ok(event.devpath):
        tried.append(sys_root + event.devpath)
    if event.rdev is not None:
        tried.append(f"{sys_root}/dev/block/{event.rdev[0]}:{event.rdev[1]}")
    # sysfs writes '/' in kernel names as '!' (cciss/c0d0 is cciss!c0d0).
    name = (event.devname or posixpath.basename(event.devpath)).replace("/", "!")
    if name and name not in (".", ".."):
        tried.append(f"{sys_root}/block/{name}")
    for entry in tried:
        number = _number(entry)
        if number is not None and (event.rdev is None or number == event.rdev):
            return entry, number
    return None


def _with_dependents(
    sys_root: str,
    entry: str,
    entries: dict[DeviceNumber, str],
    visited: set[str],
    number: DeviceNumber | None = None,
) -> None:
    """Add ``entry`` (whose number may be known), its partitions and the maps above it
    (through holders/); ``visited`` spares a batch reading an entry twice."""
    todo: list[tuple[str, int, DeviceNumber | None]] = [(entry, 0, number)]
    while todo and len(entries) < MAX_ENTRIES:
        current, depth, known = todo.pop()
        if current in visited:
            continue
        visited.add(current)
        found = known if known is not None else _number(current)
        if found is None or found in entries:
            continue
        entries[found] = current
        name = posixpath.basename(current)
        for child in list_dir(current):
            if child.startswith(name) and os.path.isfile(f"{current}/{child}/partition"):
                todo.append((f"{current}/{child}", depth, None))
        if depth < MAX_HOLDER_DEPTH:
            for holder in list_dir(current + "/holders"):
                todo.append((f"{sys_root}/block/{holder}", depth + 1, None))


def plan_refresh(events: Iterable[Uevent], lost: bool, sys_root: str) -> Plan:
    """What a batch of device uevents asks for: a full scan, or the entries to re-read."""
    if lost:
        return Plan(rescan="the kernel dropped uevents (socket buffer full)")
    root = posixpath.normpath(sys_root)
    entries: dict[DeviceNumber, str] = {}
    visited: set[str] = set()
    structural: list[Uevent] = []
    unresolved: list[Uevent] = []
    for event in events:
        if not is_device_event(event):
            continue
        if event.structural:
            structural.append(event)
            continue
        if event.subsystem == "scsi":
            if not _devpath_ok(event.devpath):
                continue
            for name in list_dir(f"{root}{event.devpath}/block"):
                _with_dependents(root, f"{root}{event.devpath}/block/{name}", entries, visited)
            continue
        named = _named_entry(root, event)
        if named is None:
            unresolved.append(event)
            continue
        _with_dependents(root, named[0], entries, visited, named[1])
        if len(entries) >= MAX_ENTRIES:
            return Plan(rescan=f"uevents name more than {MAX_ENTRIES} devices")
    return Plan(entries=entries, structural=tuple(structural), unresolved=tuple(unresolved))


def refreshed(result: ScanResult, entries: Mapping[DeviceNumber, str]) -> ScanResult | None:
    """``result`` with the problems of the advertised block devices in ``entries`` read
    again; the same object when none changed; None when a full scan is needed.

    A scan of several resources is refreshed part by part and stays split: each
    resource keeps exactly the devices the scan gave it."""
    if not entries:
        return result
    if isinstance(result, ResourcesScan):
        parts: list[tuple[str, ScanResult]] = []
        for name, part in result.parts:
            fresh = _refreshed_one(part, entries)
            if fresh is None:
                return None
            parts.append((name, fresh))
        if all(fresh is part for (_, fresh), (_, part) in zip(parts, result.parts)):
            return result
        every = tuple(c for _, part in parts for c in part.candidates)
        return ResourcesScan(every, tuple(parts))
    return _refreshed_one(result, entries)


def _refreshed_one(result: ScanResult, entries: Mapping[DeviceNumber, str]) -> ScanResult | None:
    candidates = list(result.candidates)
    changed = False
    for index, candidate in enumerate(candidates):
        if candidate.verdict != ADVERTISED or candidate.kind != KIND_BLOCK:
            continue
        entry = entries.get(candidate.rdev) if candidate.rdev is not None else None
        if entry is None:
            continue
        if _number(entry) != candidate.rdev:
            return None
        is_partition = os.path.isfile(entry + "/partition")
        disk_entry = posixpath.dirname(entry) if is_partition else entry
        dm_uuid = _text(entry + "/dm/uuid") or ""
        if sysfs_identity(entry, dm_uuid) != candidate.identity:
            return None
        problem = sysfs_problem(entry, disk_entry, dm_uuid)
        if problem != candidate.problem:
            candidates[index] = replace(candidate, problem=problem)
            changed = True
    return ScanResult(tuple(candidates)) if changed else result
