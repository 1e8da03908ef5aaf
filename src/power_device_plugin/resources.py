"""Several resources from one discovery pass: split a scan per resource, one owner per
device, and one DeviceState per resource that the watcher feeds in one go.

- :func:`scan_resources` is the watcher's scan: for a :class:`FileConfig` it reads the
  host's use of its disks once (the caller passes it) and judges each resource's
  selection in file order; a device that an earlier resource already advertises is
  refused for the later ones (``rule`` ``resources``, the reason naming the first):
  two names for one disk would break every sharing limit.
- :func:`capacity_of` is the watcher's capacity check: each resource within its own
  cap, and every resource's units together within ``MAX_TOTAL_UNITS``.
- :class:`ResourceStates` is the one state the watcher updates: it keeps one
  DeviceState per resource (made by a factory, with its own naming and CDI spec) and
  tells its owner which resources came and went, so their servers start and stop.

No grpc here: the per-resource servers are the caller's (``cli.ResourcePlugins``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .cdi import grant_env_for
from .config import GRANT_ALL, MAX_TOTAL_UNITS, FileConfig, PluginConfig, ResourceConfig
from .devices import (
    DeviceSnapshot,
    DeviceState,
    GrantNaming,
    capacity_problem,
    set_units,
    units_per_device,
)
from .discovery import ADVERTISED, REFUSED, ScanResult, scan
from .host_use import HostUse

log = logging.getLogger(__name__)

RULE_FIRST_RESOURCE = "resources"
SOCKET_PREFIX = "pdp-"
SOCKET_SUFFIX = ".sock"
# A unix socket path must fit in 108 bytes; the kubelet's directory takes 32 of them.
MAX_SOCKET_NAME = 64


@dataclass(frozen=True)
class ResourcesScan(ScanResult):
    """Every resource's candidates (``candidates``, in file order) and each one's own."""

    parts: tuple[tuple[str, ScanResult], ...] = ()

    def part(self, name: str) -> ScanResult:
        for part_name, part in self.parts:
            if part_name == name:
                return part
        return ScanResult(())


def naming_for(resource: ResourceConfig) -> GrantNaming:
    """How a resource's grants name things: IBM's one resource keeps ``PDP_DEVICES``."""
    if resource.single:
        return GrantNaming(resource.name)
    return GrantNaming(resource.name, env_name=grant_env_for(resource.name))


def socket_name_for(resource: str) -> str:
    """The socket of a listed resource in the plugin directory, the same on every start:
    ``example.com/scratch`` -> ``pdp-example.com_scratch.sock`` (a digest when too long)."""
    name = SOCKET_PREFIX + resource.replace("/", "_") + SOCKET_SUFFIX
    if len(name) <= MAX_SOCKET_NAME:
        return name
    digest = hashlib.sha256(resource.encode()).hexdigest()[:16]
    return f"{SOCKET_PREFIX}{digest}{SOCKET_SUFFIX}"


def scan_resources(
    config: PluginConfig,
    dev_root: Path,
    sys_root: Path,
    host_use: HostUse,
    explain_unmatched: bool = True,
) -> ScanResult:
    """One discovery pass for every resource of ``config`` (a plain scan for a plain
    PluginConfig). A device goes to the first resource in file order that advertises it."""
    if not isinstance(config, FileConfig):
        return scan(config, dev_root, sys_root, host_use, explain_unmatched)
    owner: dict[tuple[str, tuple[int, int]], str] = {}
    parts: list[tuple[str, ScanResult]] = []
    for resource in config.resources:
        result = scan(resource.config, dev_root, sys_root, host_use, explain_unmatched)
        kept = []
        for candidate in result.candidates:
            if candidate.verdict == ADVERTISED and candidate.rdev is not None:
                key = (candidate.kind, candidate.rdev)
                first = owner.setdefault(key, resource.name)
                if first != resource.name:
                    candidate = replace(
                        candidate,
                        verdict=REFUSED,
                        rule=RULE_FIRST_RESOURCE,
                        reason=f"granted by {first}, listed before it in resources "
                        "(a device belongs to one resource)",
                    )
            kept.append(candidate)
        parts.append((resource.name, ScanResult(tuple(kept))))
    every = tuple(c for _, part in parts for c in part.candidates)
    return ResourcesScan(every, tuple(parts))


def units_of(config: PluginConfig, device_count: int) -> int:
    """How many units a resource advertises for ``device_count`` selected devices."""
    if config.grant_mode == GRANT_ALL:
        return set_units(config, device_count)
    return units_per_device(config) * device_count


def capacity_of(config: PluginConfig, result: ScanResult) -> str | None:
    """Why ``config`` would advertise too many units for ``result``, or None."""
    if not isinstance(config, FileConfig) or not isinstance(result, ResourcesScan):
        return capacity_problem(config, len(result.advertised()))
    total = 0
    for index, resource in enumerate(config.resources):
        count = len(result.part(resource.name).advertised())
        problem = capacity_problem(resource.config, count)
        if problem is not None:
            return f"resources[{index}] ({resource.name}): {problem}"
        total += units_of(resource.config, count)
    if total > MAX_TOTAL_UNITS:
        return (
            f"upper-limit: {total} units across {len(config.resources)} resources, "
            f"over the cap of {MAX_TOTAL_UNITS} for the whole file"
        )
    return None


StateFactory = Callable[[ResourceConfig], DeviceState]
ResourceHook = Callable[[str, DeviceState], None]


def _ignore(name: str, state: DeviceState) -> None:
    return None


class ResourceStates(DeviceState):
    """The state the watcher updates: one DeviceState per configured resource.

    ``update(result, file_config)`` drops the states of resources no longer in the file
    (``on_removed`` first stops their servers), makes states for new ones, updates
    every state from its part of the scan, then calls ``on_added`` for the new ones:
    their first ListAndWatch is complete. A resource whose form changes (IBM's one
    resource to a listed one of the same name) is removed and added again.
    ``initial`` resources have states (and no devices) before the first config.
    """

    def __init__(
        self,
        make_state: StateFactory,
        on_added: ResourceHook = _ignore,
        on_removed: ResourceHook = _ignore,
        initial: tuple[ResourceConfig, ...] = (),
    ) -> None:
        super().__init__()
        self._make_state = make_state
        self._on_added = on_added
        self._on_removed = on_removed
        self._all = threading.Lock()
        self._states: dict[str, DeviceState] = {}
        self._forms: dict[str, bool] = {}
        self._refused: dict[str, tuple[str, ...]] = {}
        for resource in initial:
            self._states[resource.name] = make_state(resource)
            self._forms[resource.name] = resource.single

    def states(self) -> Mapping[str, DeviceState]:
        """Each resource's state, in file order."""
        with self._all:
            return dict(self._states)

    def update(self, result: ScanResult, config: PluginConfig) -> bool:
        if not isinstance(config, FileConfig):
            config = FileConfig.of((ResourceConfig(self._only_name(), config, single=True),))
        parts = result if isinstance(result, ResourcesScan) else ResourcesScan((), ())
        with self._all:
            wanted = {r.name: r.single for r in config.resources}
            gone = [n for n, form in self._forms.items() if wanted.get(n) != form]
            removed = [(n, self._states.pop(n)) for n in gone]
            for name in gone:
                del self._forms[name]
                self._refused.pop(name, None)
        for name, state in removed:
            log.info("resource %s removed from the config: stopping its server", name)
            self._on_removed(name, state)
        added: list[tuple[str, DeviceState]] = []
        changed = bool(removed)
        for resource in config.resources:
            with self._all:
                known = self._states.get(resource.name)
            if known is None:
                state = self._make_state(resource)
                added.append((resource.name, state))
            else:
                state = known
            part = parts.part(resource.name) if parts.parts else result
            changed |= state.update(part, resource.config)
            self._log_refusals(resource.name, part)
            with self._all:
                self._states[resource.name] = state
                self._forms[resource.name] = resource.single
        with self._all:
            # File order, as the config lists them.
            self._states = {r.name: self._states[r.name] for r in config.resources}
        for name, state in added:
            log.info("resource %s added: serving it", name)
            self._on_added(name, state)
        return changed or bool(added)

    def _only_name(self) -> str:
        with self._all:
            names = list(self._states)
        return names[0] if names else GrantNaming().resource

    def _log_refusals(self, name: str, part: ScanResult) -> None:
        refused = tuple(
            f"{c.host_path} ({c.reason})" for c in part.candidates if c.rule == RULE_FIRST_RESOURCE
        )
        if refused != self._refused.get(name, ()):
            self._refused[name] = refused
            if refused:
                log.warning("resource %s refuses %s", name, "; ".join(refused))

    def current(self) -> DeviceSnapshot:
        """Every resource's units together (for the watcher's log line and metrics)."""
        states = list(self.states().values())
        if len(states) == 1:
            return states[0].current()
        snapshots = [s.current() for s in states]
        return DeviceSnapshot(
            devices=tuple(d for s in snapshots for d in s.devices),
            records=tuple(r for s in snapshots for r in s.records),
        )

    def next_expiry(self) -> float | None:
        expiries = [s.next_expiry() for s in self.states().values()]
        return min((e for e in expiries if e is not None), default=None)

    def close_subscriptions(self) -> None:
        for state in self.states().values():
            state.close_subscriptions()
