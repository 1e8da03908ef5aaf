"""The hand-written exposition, read back by prometheus_client's parser and
compared with a prometheus_client registry fed the same events."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as ReferenceCounter
from prometheus_client import Gauge as ReferenceGauge
from prometheus_client import Histogram as ReferenceHistogram
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.conftest import config_of

from power_device_plugin.devices import DeviceRecord, build_snapshot, device_id_for
from power_device_plugin.metrics import (
    ALLOCATION_RESULTS,
    HEALTH_VALUES,
    REGISTRATION_RESULTS,
    SCAN_DURATION_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    PluginMetrics,
)

ROOT = Path(__file__).resolve().parents[2]

# (name, frozenset of label pairs, value); NaN compares by its spelling.
Sample = tuple[str, frozenset[tuple[str, str]], Any]


def samples_of(text: str) -> set[Sample]:
    """Every sample the parser reads, without prometheus_client's `_created` ones."""
    found: set[Sample] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            value: Any = "NaN" if math.isnan(sample.value) else sample.value
            found.add((sample.name, frozenset(sample.labels.items()), value))
    return found


def families_of(text: str) -> dict[str, tuple[str, str]]:
    """Family name -> (type, help), without prometheus_client's `_created` gauges."""
    return {
        family.name: (family.type, family.documentation)
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }


def value_of(text: str, name: str, **labels: str) -> float:
    matches = [v for n, ls, v in samples_of(text) if n == name and dict(ls) == labels]
    assert len(matches) == 1, f"{name}{labels}: {matches} in\n{text}"
    return float(matches[0])


def reference_metrics() -> tuple[CollectorRegistry, SimpleNamespace]:
    """PluginMetrics as it was declared with prometheus_client, label values pre-created."""
    registry = CollectorRegistry()
    metrics = PluginMetrics()  # for names and help texts only
    m = SimpleNamespace(
        devices=ReferenceGauge(
            metrics.devices.name, metrics.devices.help_text, ["health"], registry=registry
        ),
        units=ReferenceGauge(
            metrics.units.name, metrics.units.help_text, ["health"], registry=registry
        ),
        allocations=ReferenceCounter(
            metrics.allocations.name, metrics.allocations.help_text, ["result"], registry=registry
        ),
        registrations=ReferenceCounter(
            metrics.registrations.name,
            metrics.registrations.help_text,
            ["result"],
            registry=registry,
        ),
        config_errors=ReferenceCounter(
            metrics.config_errors.name, metrics.config_errors.help_text, registry=registry
        ),
        config_loaded=ReferenceGauge(
            metrics.config_loaded.name, metrics.config_loaded.help_text, registry=registry
        ),
        scan_duration=ReferenceHistogram(
            metrics.scan_duration.name,
            metrics.scan_duration.help_text,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        ),
        streams=ReferenceGauge(metrics.streams.name, metrics.streams.help_text, registry=registry),
        cdi_spec_failing=ReferenceGauge(
            metrics.cdi_spec_failing.name, metrics.cdi_spec_failing.help_text, registry=registry
        ),
        resource_units=ReferenceGauge(
            metrics.resource_units.name,
            metrics.resource_units.help_text,
            ["resource", "health"],
            registry=registry,
        ),
        resource_allocations=ReferenceCounter(
            metrics.resource_allocations.name,
            metrics.resource_allocations.help_text,
            ["resource", "result"],
            registry=registry,
        ),
        resource_registrations=ReferenceCounter(
            metrics.resource_registrations.name,
            metrics.resource_registrations.help_text,
            ["resource", "result"],
            registry=registry,
        ),
        resource_streams=ReferenceGauge(
            metrics.resource_streams.name,
            metrics.resource_streams.help_text,
            ["resource"],
            registry=registry,
        ),
        resource_cdi_spec_failing=ReferenceGauge(
            metrics.resource_cdi_spec_failing.name,
            metrics.resource_cdi_spec_failing.help_text,
            ["resource"],
            registry=registry,
        ),
    )
    for health in HEALTH_VALUES:
        m.devices.labels(health=health).set(0)
        m.units.labels(health=health).set(0)
    for result in ALLOCATION_RESULTS:
        m.allocations.labels(result=result)
    for result in REGISTRATION_RESULTS:
        m.registrations.labels(result=result)
    return registry, m


def feed(m: Any) -> None:
    """The same events, through the call styles the plugin uses."""
    m.registrations.labels(result="failed").inc()
    m.registrations.labels(result="ok").inc()
    for code in ("ok", "ok", "unknown", "unhealthy", "ok"):
        m.allocations.labels(result=code).inc()
    m.config_loaded.set(0)
    m.config_errors.inc()
    m.config_loaded.set(1)
    for seconds in (0.0005, 0.001, 0.0011, 0.05, 0.07, 1.0, 2.5, 2.6, 40.0):
        m.scan_duration.observe(seconds)
    m.streams.set(2)
    m.streams.set(1)
    m.devices.labels(health="Healthy").set(3)
    m.units.labels(health="Unhealthy").set(7)
    m.cdi_spec_failing.set(1)
    m.cdi_spec_failing.set(0)


def test_events_are_read_back_by_the_parser_with_their_types_labels_and_values() -> None:
    metrics = PluginMetrics()
    metrics.allocations.labels(result="ok").inc()
    metrics.allocations.labels(result="unknown").inc()
    metrics.allocations.labels(result="unknown").inc()
    metrics.registrations.labels(result="ok").inc()
    metrics.config_errors.inc()
    metrics.config_errors.inc()
    metrics.config_loaded.set(1)
    metrics.streams.set(1)
    for seconds in (0.001, 0.002, 0.3, 3.0):  # on a bound, inside two buckets, beyond all
        metrics.scan_duration.observe(seconds)
    records = [
        DeviceRecord(device_id_for(f"/dev/d{i}"), f"/dev/d{i}", problem=problem)
        for i, problem in enumerate(("", "", "gone"))
    ]
    snapshot = build_snapshot(records, config_of(grant_mode="per-device", upper_limit=6))
    metrics.record_snapshot(snapshot)

    text = metrics.exposition().decode("utf-8")

    assert {name: kind for name, (kind, _) in families_of(text).items()} == {
        "pdp_devices": "gauge",
        "pdp_advertised_units": "gauge",
        "pdp_allocations": "counter",
        "pdp_registrations": "counter",
        "pdp_config_errors": "counter",
        "pdp_config_loaded": "gauge",
        "pdp_scan_duration_seconds": "histogram",
        "pdp_list_and_watch_streams": "gauge",
        "pdp_cdi_spec_failing": "gauge",
        "pdp_resource_advertised_units": "gauge",
        "pdp_resource_allocations": "counter",
        "pdp_resource_registrations": "counter",
        "pdp_resource_list_and_watch_streams": "gauge",
        "pdp_resource_cdi_spec_failing": "gauge",
    }
    assert value_of(text, "pdp_allocations_total", result="ok") == 1
    assert value_of(text, "pdp_allocations_total", result="unknown") == 2
    assert value_of(text, "pdp_allocations_total", result="unhealthy") == 0
    assert value_of(text, "pdp_registrations_total", result="ok") == 1
    assert value_of(text, "pdp_registrations_total", result="failed") == 0
    assert value_of(text, "pdp_config_errors_total") == 2
    assert value_of(text, "pdp_config_loaded") == 1
    assert value_of(text, "pdp_list_and_watch_streams") == 1
    assert value_of(text, "pdp_devices", health="Healthy") == 2
    assert value_of(text, "pdp_devices", health="Unhealthy") == 1
    assert value_of(text, "pdp_advertised_units", health="Healthy") == 12
    assert value_of(text, "pdp_advertised_units", health="Unhealthy") == 6
    buckets = {
        dict(labels)["le"]: value
        for name, labels, value in samples_of(text)
        if name == "pdp_scan_duration_seconds_bucket"
    }
    assert buckets == {
        "0.001": 1,
        "0.005": 2,
        "0.01": 2,
        "0.025": 2,
        "0.05": 2,
        "0.1": 2,
        "0.25": 2,
        "0.5": 3,
        "1.0": 3,
        "2.5": 3,
        "+Inf": 4,
    }
    assert value_of(text, "pdp_scan_duration_seconds_count") == 4
    assert value_of(text, "pdp_scan_duration_seconds_sum") == pytest.approx(3.303)


def test_every_health_and_result_value_is_exposed_at_zero_before_any_event() -> None:
    text = PluginMetrics().exposition().decode("utf-8")
    for health in HEALTH_VALUES:
        assert value_of(text, "pdp_devices", health=health) == 0
        assert value_of(text, "pdp_advertised_units", health=health) == 0
    for result in ALLOCATION_RESULTS:
        assert value_of(text, "pdp_allocations_total", result=result) == 0
    for result in REGISTRATION_RESULTS:
        assert value_of(text, "pdp_registrations_total", result=result) == 0


def test_the_exposition_matches_prometheus_client_fed_the_same_events() -> None:
    ours = PluginMetrics()
    registry, reference = reference_metrics()
    feed(ours)
    feed(reference)

    ours_text = ours.exposition().decode("utf-8")
    reference_text = generate_latest(registry).decode("utf-8")

    assert samples_of(ours_text) == samples_of(reference_text)
    assert families_of(ours_text) == families_of(reference_text)
    # The raw header lines too: counters are announced as <name>_total.
    headers = [line for line in ours_text.splitlines() if line.startswith("#")]
    assert headers == [
        line
        for line in reference_text.splitlines()
        if line.startswith("#") and "_created " not in line
    ]


def test_the_comparison_with_prometheus_client_sees_one_differing_observation() -> None:
    ours = PluginMetrics()
    registry, reference = reference_metrics()
    feed(ours)
    feed(reference)
    reference.scan_duration.observe(0.02)

    difference = samples_of(ours.exposition().decode("utf-8")) ^ samples_of(
        generate_latest(registry).decode("utf-8")
    )

    assert {name for name, _, _ in difference} == {
        "pdp_scan_duration_seconds_bucket",
        "pdp_scan_duration_seconds_count",
        "pdp_scan_duration_seconds_sum",
    }


@pytest.mark.parametrize(
    "raw",
    ['say "hi"', "back\\slash", "two\nlines", '\\"\n\\n', "plain"],
)
def test_label_values_with_quotes_backslashes_and_newlines_round_trip(raw: str) -> None:
    metrics = PluginMetrics()
    metrics.allocations.labels(result=raw).inc(3)

    text = metrics.exposition().decode("utf-8")

    assert value_of(text, "pdp_allocations_total", result=raw) == 3


def test_help_text_with_backslash_and_newline_round_trips() -> None:
    gauge = Gauge("odd_help", "first line\nsecond \\ line")
    gauge.set(1)

    (family,) = text_string_to_metric_families("\n".join(gauge.render()) + "\n")

    assert family.documentation == "first line\nsecond \\ line"


@pytest.mark.parametrize(
    ("value", "spelled"),
    [(math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (3, "3.0"), (0.25, "0.25")],
)
def test_values_are_spelled_as_prometheus_reads_them(value: float, spelled: str) -> None:
    gauge = Gauge("g", "A gauge.")
    gauge.set(value)

    assert gauge.render()[-1] == f"g {spelled}"


def test_a_counter_refuses_a_negative_increment_and_keeps_its_count() -> None:
    metrics = PluginMetrics()
    metrics.config_errors.inc(2)

    with pytest.raises(ValueError, match="only goes up"):
        metrics.config_errors.inc(-1)

    assert value_of(metrics.exposition().decode(), "pdp_config_errors_total") == 2


def test_labels_with_a_wrong_name_is_refused_naming_it() -> None:
    metrics = PluginMetrics()

    with pytest.raises(ValueError, match="outcome"):
        metrics.allocations.labels(outcome="ok")
    with pytest.raises(ValueError, match="missing \\['result'\\]"):
        metrics.allocations.labels()


def test_a_labelled_metric_refuses_a_value_without_labels() -> None:
    counter = Counter("c", "A counter.", ("result",))

    with pytest.raises(ValueError, match="labels"):
        counter.inc()


def test_bounds_of_a_histogram_end_with_plus_inf_once() -> None:
    with_inf = Histogram("h", "A histogram.", (1.0, math.inf))
    without = Histogram("h", "A histogram.", SCAN_DURATION_BUCKETS)

    assert [line for line in with_inf.render() if "+Inf" in line] == ['h_bucket{le="+Inf"} 0.0']
    assert [line for line in without.render() if "+Inf" in line] == ['h_bucket{le="+Inf"} 0.0']


def test_two_plugin_metrics_keep_separate_counts() -> None:
    first, second = PluginMetrics(), PluginMetrics()
    first.config_errors.inc()

    assert value_of(first.exposition().decode(), "pdp_config_errors_total") == 1
    assert value_of(second.exposition().decode(), "pdp_config_errors_total") == 0


def test_increments_from_many_threads_while_rendering_are_all_counted() -> None:
    metrics = PluginMetrics()
    threads_count, per_thread = 8, 5000
    start = threading.Barrier(threads_count + 1)

    def count() -> None:
        start.wait()
        for _ in range(per_thread):
            metrics.allocations.labels(result="ok").inc()
            metrics.scan_duration.observe(0.002)

    threads = [threading.Thread(target=count) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in threads):
        samples_of(metrics.exposition().decode())  # renders stay parseable meanwhile
    for thread in threads:
        thread.join()

    text = metrics.exposition().decode()
    total = threads_count * per_thread
    assert value_of(text, "pdp_allocations_total", result="ok") == total
    assert value_of(text, "pdp_scan_duration_seconds_count") == total
    assert value_of(text, "pdp_scan_duration_seconds_bucket", le="0.005") == total


def test_importing_the_metrics_module_loads_no_http_email_or_prometheus_client() -> None:
    # pathlib (Python 3.11) imports urllib.parse, and the plugin's own modules use
    # pathlib: the metrics module must add nothing to what its one project import,
    # power_device_plugin.devices, already loads, and nothing named here at all.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    listed = "('prometheus_client','http','urllib','email','wsgiref')"
    code = (
        "import sys\n"
        f"def listed(): return sorted(m for m in sys.modules if m.startswith({listed}))\n"
        "import power_device_plugin.devices\n"
        "print(listed())\n"
        "import power_device_plugin.metrics\n"
        "print(listed())\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )

    before, after = result.stdout.splitlines()
    assert after == before
    assert after in ("[]", "['urllib', 'urllib.parse']")


def test_each_resource_counts_under_its_label_and_in_the_totals() -> None:
    metrics = PluginMetrics()
    disks, nx = metrics.for_resource("a.com/disks"), metrics.for_resource("a.com/nx")
    disks.allocations.labels(result="ok").inc()
    nx.allocations.labels(result="ok").inc()
    nx.allocations.labels(result="unknown").inc()
    disks.registrations.labels(result="ok").inc()
    disks.streams.set(1)
    nx.streams.set(2)
    nx.cdi_spec_failing.set(1)
    text = metrics.exposition().decode("utf-8")
    assert value_of(text, "pdp_allocations_total", result="ok") == 2
    assert (
        value_of(text, "pdp_resource_allocations_total", resource="a.com/nx", result="unknown") == 1
    )
    assert (
        value_of(text, "pdp_resource_allocations_total", resource="a.com/disks", result="ok") == 1
    )
    assert value_of(text, "pdp_list_and_watch_streams") == 3
    assert value_of(text, "pdp_resource_list_and_watch_streams", resource="a.com/nx") == 2
    assert value_of(text, "pdp_cdi_spec_failing") == 1
    metrics.forget_resource("a.com/nx")
    text = metrics.exposition().decode("utf-8")
    assert value_of(text, "pdp_list_and_watch_streams") == 1
    assert value_of(text, "pdp_cdi_spec_failing") == 0
    assert 'resource="a.com/nx"' not in text
