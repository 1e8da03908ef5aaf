"""The plugin's Prometheus metrics, declared in one place, and their text exposition.

Written here rather than taken from prometheus_client: in the plugin's image
(Debian, CPython 3.11, python3-prometheus-client 0.16) importing prometheus_client
cost 1.2 MiB RSS on top of everything else the plugin imports, and pulled in
urllib.request, wsgiref, gzip, email... (15-30 ms of start-up), for eight metrics
under a 40 MiB RSS budget. The tests parse this module's output with
prometheus_client's parser and compare it with a prometheus_client registry fed
the same events.

What it covers of the text exposition format, version 0.0.4: counters, gauges
and histograms with fixed label names; ``# HELP`` (backslash and newline
escaped) and ``# TYPE`` lines; counters exposed as ``<name>_total``, histograms
as cumulative ``<name>_bucket{le="..."}`` then ``<name>_count`` and
``<name>_sum``; label values escaped (backslash, double quote, newline); values
written as Python floats (``3.0``, ``1e-05``) or ``NaN``, ``+Inf``, ``-Inf``.
Not covered: timestamps, summaries, exemplars, OpenMetrics. Unlike
prometheus_client there are no ``<name>_created`` samples: nothing reads them.

Each `PluginMetrics` owns its metrics, so two plugins in one process (tests)
never share counts. Each metric has one lock, shared by its labelled values:
gRPC worker threads count while `/metrics` renders.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from power_device_plugin.devices import HEALTHY, UNHEALTHY, DeviceSnapshot

HEALTH_VALUES = (HEALTHY, UNHEALTHY)
ALLOCATION_RESULTS = ("ok", "unknown", "unhealthy", "too_large")
REGISTRATION_RESULTS = ("ok", "failed")
SCAN_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# One line of a metric: suffix to its name, labels beyond its own, value.
_Sample = tuple[str, tuple[tuple[str, str], ...], float]


def format_value(value: float) -> str:
    """A sample value (or an ``le`` bound) as Prometheus reads it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class _Value(Protocol):
    def samples(self) -> list[_Sample]:
        """This value's lines; called with its metric's lock held."""


class _CounterValue:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._count = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"a counter only goes up: inc({amount!r}) refused, count unchanged")
        with self._lock:
            self._count += amount

    def samples(self) -> list[_Sample]:
        return [("_total", (), self._count)]


class _GaugeValue:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def samples(self) -> list[_Sample]:
        return [("", (), self._value)]


class _HistogramValue:
    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        self._lock = lock
        self._bounds = bounds  # ascending, ending with +Inf
        self._counts = [0] * len(bounds)  # per bucket, not cumulative
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        with self._lock:
            self._sum += amount
            for index, bound in enumerate(self._bounds):
                if amount <= bound:
                    self._counts[index] += 1
                    break

    def samples(self) -> list[_Sample]:
        lines: list[_Sample] = []
        cumulative = 0
        for bound, count in zip(self._bounds, self._counts):
            cumulative += count
            lines.append(("_bucket", (("le", format_value(bound)),), float(cumulative)))
        lines.append(("_count", (), float(cumulative)))
        lines.append(("_sum", (), self._sum))
        return lines


_V = TypeVar("_V", bound=_Value)


class _Family(Generic[_V]):
    """One metric: its name, help, type, and a value per combination of label values."""

    kind = ""
    header_suffix = ""  # counters are announced as <name>_total

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: tuple[str, ...],
        new_value: Callable[[threading.Lock], _V],
    ) -> None:
        self.name = name
        self.help_text = help_text
        self.label_names = label_names
        self._new_value = new_value
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], _V] = {}
        if not label_names:
            self._values[()] = new_value(self._lock)

    def labels(self, **values: str) -> _V:
        """The value for these label values, created at 0 the first time."""
        wrong = sorted(set(values) - set(self.label_names))
        missing = [name for name in self.label_names if name not in values]
        if wrong or missing:
            raise ValueError(
                f"{self.name} has label names {list(self.label_names)}: "
                f"got unknown {wrong}, missing {missing}; no value created"
            )
        key = tuple(str(values[name]) for name in self.label_names)
        with self._lock:
            value = self._values.get(key)
            if value is None:
                value = self._values[key] = self._new_value(self._lock)
        return value

    def forget(self, **values: str) -> None:
        """Drop every value whose labels include these (a resource that went away)."""
        positions = [(self.label_names.index(k), str(v)) for k, v in values.items()]
        with self._lock:
            for key in [k for k in self._values if all(k[i] == v for i, v in positions)]:
                del self._values[key]

    def _unlabelled(self) -> _V:
        if self.label_names:
            raise ValueError(
                f"{self.name} has label names {list(self.label_names)}: "
                "call .labels(...) first; nothing recorded"
            )
        return self._values[()]

    def render(self) -> list[str]:
        header = self.name + self.header_suffix
        lines = [f"# HELP {header} {escape_help(self.help_text)}", f"# TYPE {header} {self.kind}"]
        with self._lock:
            for key, value in self._values.items():
                own = tuple(zip(self.label_names, key))
                for suffix, extra, number in value.samples():
                    labels = _format_labels(own + extra)
                    lines.append(f"{self.name}{suffix}{labels} {format_value(number)}")
        return lines


class Counter(_Family[_CounterValue]):
    kind = "counter"
    header_suffix = "_total"

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, label_names, _CounterValue)

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)


class Gauge(_Family[_GaugeValue]):
    kind = "gauge"

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...] = ()) -> None:
        super().__init__(name, help_text, label_names, _GaugeValue)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)


class Histogram(_Family[_HistogramValue]):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        if not bounds or bounds[-1] != math.inf:
            bounds += (math.inf,)
        super().__init__(name, help_text, (), lambda lock: _HistogramValue(lock, bounds))

    def observe(self, amount: float) -> None:
        self._unlabelled().observe(amount)


class _BothCounts(_CounterValue):
    """Counts in the process-wide total and in one resource's value at once."""

    def __init__(self, total: _CounterValue, own: _CounterValue) -> None:
        self._total = total
        self._own = own

    def inc(self, amount: float = 1.0) -> None:
        self._total.inc(amount)
        self._own.inc(amount)


class _ResourceCounter(Counter):
    """``total`` as one resource's server counts in it: also counted under its label."""

    def __init__(self, total: Counter, by_resource: Counter, resource: str) -> None:
        super().__init__(total.name, total.help_text, total.label_names)
        self._total = total
        self._by_resource = by_resource
        self._resource = resource

    def labels(self, **values: str) -> _CounterValue:
        return _BothCounts(
            self._total.labels(**values),
            self._by_resource.labels(resource=self._resource, **values),
        )


class _ResourceGauge(Gauge):
    """A gauge one resource sets: its own labelled value, and the total of every
    resource's (``combine``: sum, or max for a 0/1 flag) in the process-wide one."""

    def __init__(
        self,
        total: Gauge,
        by_resource: Gauge,
        resource: str,
        values: dict[str, float],
        combine: Callable[[Iterable[float]], float],
    ) -> None:
        super().__init__(total.name, total.help_text)
        self._total = total
        self._by_resource = by_resource
        self._resource = resource
        self._shares = values
        self._combine = combine

    def set(self, value: float) -> None:
        self._by_resource.labels(resource=self._resource).set(value)
        self._shares[self._resource] = float(value)
        self._total.set(self._combine(list(self._shares.values()) or [0.0]))


class PluginMetrics:
    """Everything `/metrics` reports; the parts that count call the methods below.

    The unlabelled families are the process's totals; the ``pdp_resource_*`` ones
    say the same per resource. :meth:`for_resource` gives a resource's servers a
    PluginMetrics that counts in both."""

    def __init__(self) -> None:
        self.devices = Gauge(
            "pdp_devices",
            "Physical devices the plugin knows, by health.",
            ("health",),
        )
        self.units = Gauge(
            "pdp_advertised_units",
            "Device IDs (units of the resource) last advertised to the kubelet, by health.",
            ("health",),
        )
        self.allocations = Counter(
            "pdp_allocations",
            "Allocate calls answered, by result (ok, unknown, unhealthy, too_large).",
            ("result",),
        )
        self.registrations = Counter(
            "pdp_registrations",
            "Registrations with the kubelet, by result (ok; failed: once per outage).",
            ("result",),
        )
        self.config_errors = Counter(
            "pdp_config_errors",
            "Config files refused: missing, unreadable or invalid (the last good config, "
            "if any, was kept).",
        )
        self.config_loaded = Gauge(
            "pdp_config_loaded",
            "1 once a valid config has been read (later errors keep it), 0 while none has: "
            "nothing is advertised until then.",
        )
        self.scan_duration = Histogram(
            "pdp_scan_duration_seconds",
            "Time taken by one device scan.",
            SCAN_DURATION_BUCKETS,
        )
        self.streams = Gauge(
            "pdp_list_and_watch_streams",
            "ListAndWatch streams currently open.",
        )
        self.cdi_spec_failing = Gauge(
            "pdp_cdi_spec_failing",
            "1 while the plugin's CDI spec cannot be written or removed as the grants need "
            "(retried every second; /readyz says why), else 0.",
        )
        self.resource_units = Gauge(
            "pdp_resource_advertised_units",
            "Device IDs last advertised to the kubelet, by resource and health.",
            ("resource", "health"),
        )
        self.resource_allocations = Counter(
            "pdp_resource_allocations",
            "Allocate calls answered, by resource and result.",
            ("resource", "result"),
        )
        self.resource_registrations = Counter(
            "pdp_resource_registrations",
            "Registrations with the kubelet, by resource and result.",
            ("resource", "result"),
        )
        self.resource_streams = Gauge(
            "pdp_resource_list_and_watch_streams",
            "ListAndWatch streams currently open, by resource.",
            ("resource",),
        )
        self.resource_cdi_spec_failing = Gauge(
            "pdp_resource_cdi_spec_failing",
            "1 while the resource's CDI spec cannot be kept as its grants need, else 0.",
            ("resource",),
        )
        self._stream_counts: dict[str, float] = {}
        self._cdi_failing: dict[str, float] = {}
        self._families: tuple[_Family[Any], ...] = (
            self.devices,
            self.units,
            self.allocations,
            self.registrations,
            self.config_errors,
            self.config_loaded,
            self.scan_duration,
            self.streams,
            self.cdi_spec_failing,
            self.resource_units,
            self.resource_allocations,
            self.resource_registrations,
            self.resource_streams,
            self.resource_cdi_spec_failing,
        )
        # Every label value exists from the start, so a count of 0 is visible
        # (and rate() works) before the first event of its kind.
        for health in HEALTH_VALUES:
            self.devices.labels(health=health)
            self.units.labels(health=health)
        for result in ALLOCATION_RESULTS:
            self.allocations.labels(result=result)
        for result in REGISTRATION_RESULTS:
            self.registrations.labels(result=result)

    def for_resource(self, resource: str) -> PluginMetrics:
        """The metrics one resource's server, lifecycle and CDI keeper count in: the
        same families, with allocations, registrations, streams and the CDI flag also
        counted under ``resource``."""
        import copy

        view = copy.copy(self)
        view.allocations = _ResourceCounter(self.allocations, self.resource_allocations, resource)
        view.registrations = _ResourceCounter(
            self.registrations, self.resource_registrations, resource
        )
        view.streams = _ResourceGauge(
            self.streams, self.resource_streams, resource, self._stream_counts, sum
        )
        view.cdi_spec_failing = _ResourceGauge(
            self.cdi_spec_failing, self.resource_cdi_spec_failing, resource, self._cdi_failing, max
        )
        for result in ALLOCATION_RESULTS:
            self.resource_allocations.labels(resource=resource, result=result)
        for result in REGISTRATION_RESULTS:
            self.resource_registrations.labels(resource=resource, result=result)
        view.streams.set(0)
        view.cdi_spec_failing.set(0)
        return view

    def forget_resource(self, resource: str) -> None:
        """A resource left the config: its values go, and the totals lose its share."""
        for family in (
            self.resource_units,
            self.resource_allocations,
            self.resource_registrations,
            self.resource_streams,
            self.resource_cdi_spec_failing,
        ):
            family.forget(resource=resource)
        for values, total, combine in (
            (self._stream_counts, self.streams, sum),
            (self._cdi_failing, self.cdi_spec_failing, max),
        ):
            values.pop(resource, None)
            total.set(combine(list(values.values()) or [0.0]))

    def record_resource_snapshot(self, resource: str, snapshot: DeviceSnapshot) -> None:
        units = dict.fromkeys(HEALTH_VALUES, 0)
        for device in snapshot.devices:
            units[device.health] = units.get(device.health, 0) + 1
        for health, count in units.items():
            self.resource_units.labels(resource=resource, health=health).set(count)

    def record_snapshot(self, snapshot: DeviceSnapshot) -> None:
        """Set the per-health gauges from the snapshot now being advertised."""
        for health, count in snapshot.health_counts().items():
            self.devices.labels(health=health).set(count)
        units = dict.fromkeys(HEALTH_VALUES, 0)
        for device in snapshot.devices:
            units[device.health] = units.get(device.health, 0) + 1
        for health, count in units.items():
            self.units.labels(health=health).set(count)

    def exposition(self) -> bytes:
        """The text format (0.0.4) Prometheus scrapes."""
        lines = [line for family in self._families for line in family.render()]
        return ("\n".join(lines) + "\n").encode("utf-8")
