"""The plugin's Prometheus metrics, declared in one place.

Each `PluginMetrics` owns its registry, so two plugins in one process (tests)
never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from power_device_plugin.devices import HEALTHY, UNHEALTHY, DeviceSnapshot

HEALTH_VALUES = (HEALTHY, UNHEALTHY)
ALLOCATION_RESULTS = ("ok", "unknown", "unhealthy")
REGISTRATION_RESULTS = ("ok", "failed")


class PluginMetrics:
    """Everything `/metrics` reports; the parts that count call the methods below."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.devices = Gauge(
            "pdp_devices",
            "Physical devices the plugin knows, by health.",
            ["health"],
            registry=self.registry,
        )
        self.units = Gauge(
            "pdp_advertised_units",
            "Device IDs (units of the resource) last advertised to the kubelet, by health.",
            ["health"],
            registry=self.registry,
        )
        self.allocations = Counter(
            "pdp_allocations",
            "Allocate calls answered, by result (ok, unknown, unhealthy).",
            ["result"],
            registry=self.registry,
        )
        self.registrations = Counter(
            "pdp_registrations",
            "Register calls made to the kubelet, by result (ok, failed).",
            ["result"],
            registry=self.registry,
        )
        self.config_errors = Counter(
            "pdp_config_errors",
            "Config files refused: missing, unreadable or invalid (the last good config, "
            "if any, was kept).",
            registry=self.registry,
        )
        self.config_loaded = Gauge(
            "pdp_config_loaded",
            "1 once a valid config has been read (later errors keep it), 0 while none has: "
            "nothing is advertised until then.",
            registry=self.registry,
        )
        self.scan_duration = Histogram(
            "pdp_scan_duration_seconds",
            "Time taken by one device scan.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.streams = Gauge(
            "pdp_list_and_watch_streams",
            "ListAndWatch streams currently open.",
            registry=self.registry,
        )
        # Every label value exists from the start, so a count of 0 is visible
        # (and rate() works) before the first event of its kind.
        for health in HEALTH_VALUES:
            self.devices.labels(health=health).set(0)
            self.units.labels(health=health).set(0)
        for result in ALLOCATION_RESULTS:
            self.allocations.labels(result=result)
        for result in REGISTRATION_RESULTS:
            self.registrations.labels(result=result)

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
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
