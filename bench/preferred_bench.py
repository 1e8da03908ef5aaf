"""GetPreferredAllocation figures: size 5000 over 10 000 available units.

Builds per-device snapshots of 10 000 units (1000 devices x 10 units, and
10 000 devices x 1 unit) and an all-mode snapshot of 10 000 units, then times
``DeviceSnapshot.preferred`` (goal: 5 ms or less).

    scripts/in-venv python bench/preferred_bench.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from power_device_plugin.config import GRANT_ALL, GRANT_PER_DEVICE, PluginConfig  # noqa: E402
from power_device_plugin.devices import (  # noqa: E402
    MAX_UNITS,
    DeviceRecord,
    build_snapshot,
    device_id_for,
)

GOAL_MS = 5.0
SIZE = 5000


def records(count: int) -> list[DeviceRecord]:
    return [DeviceRecord(device_id_for(f"/dev/d{i}"), f"/dev/d{i}") for i in range(count)]


def measure(label: str, devices: int, config: PluginConfig, rounds: int) -> dict[str, object]:
    snapshot = build_snapshot(records(devices), config)
    available = [d.id for d in snapshot.devices]
    random.Random(1).shuffle(available)
    must_include = available[:10]
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        picked = snapshot.preferred(available, must_include, SIZE)
        samples.append((time.perf_counter() - started) * 1000)
    assert len(picked) == SIZE
    return {
        "case": label,
        "available": len(available),
        "size": SIZE,
        "p50_ms": round(statistics.median(samples), 3),
        "max_ms": round(max(samples), 3),
        "goal_ms": GOAL_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    cases = [
        ("per-device 1000x10", 1000, PluginConfig(grant_mode=GRANT_PER_DEVICE, upper_limit=10)),
        ("per-device 10000x1", MAX_UNITS, PluginConfig(grant_mode=GRANT_PER_DEVICE)),
        # all mode's default: one unit per healthy device.
        ("all 10000 units", MAX_UNITS, PluginConfig(grant_mode=GRANT_ALL)),
    ]
    for label, devices, config in cases:
        print(json.dumps(measure(label, devices, config, args.rounds)))


if __name__ == "__main__":
    main()
