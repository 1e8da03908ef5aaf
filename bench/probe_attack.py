"""Probe latency of the health endpoint while slowloris clients come and go (issue 18).

    python bench/probe_attack.py                       # N = 8, 16, 100, 1000
    python bench/probe_attack.py --attackers 100 --probes 100
    python bench/probe_attack.py --attackers 3000 --processes 3   # 3 attacking processes
    python bench/probe_attack.py --burst 8000          # each client holds ~8 KiB of head
    python bench/probe_attack.py --src /tmp/old/src    # another tree's endpoint
    python bench/probe_attack.py --json                # one JSON line only

For each N: the endpoint (`HealthServer` with the real `PluginMetrics`) runs alone in
a fresh interpreter on 127.0.0.1; N clients in another process each send one byte
of a request head a second that never ends and connect again as soon as they are
closed (tests/unit/http_attack.py); after a settling second, probes (connect, whole
head, read to the close, as the kubelet does) go out every 0.1 s. Reported: probe
status counts and latency p50/p99/max, and for the endpoint's process the peak of
its threads, open descriptors and RSS beside the figures before the attack, and
its CPU over the window. All three processes share the machine's cores, so
latency here includes waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.unit.http_attack import (  # noqa: E402
    attacking,
    probe,
    process_stats,
    serving_process,
)

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Result:
    attackers: int
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    # Before the attack, and the peak during it.
    threads: tuple[int, int]
    fds: tuple[int, int]
    rss_mib: tuple[float, float]
    server_cpu_pct: float


def run(attackers: int, probes: int, src: Path, processes: int = 1, burst: int = 0) -> Result:
    with serving_process(src) as served, ExitStack() as attacks:
        probe(served.port)
        before = process_stats(served.pid)
        for i in range(processes):
            share = attackers // processes + (1 if i < attackers % processes else 0)
            attacks.enter_context(attacking(served.port, share, burst=burst))
        time.sleep(1.0)
        cpu_start, wall_start = _cpu_seconds(served.pid), time.monotonic()
        answers, samples = [], []
        for _ in range(probes):
            answers.append(probe(served.port))
            samples.append(process_stats(served.pid))
            time.sleep(0.1)
        cpu = (_cpu_seconds(served.pid) - cpu_start) / (time.monotonic() - wall_start)
    seconds = [a.seconds for a in answers]
    return Result(
        attackers=attackers,
        statuses=dict(Counter(str(a.status) for a in answers)),
        p50_ms=round(_quantile(seconds, 0.5) * 1000, 2),
        p99_ms=round(_quantile(seconds, 0.99) * 1000, 2),
        max_ms=round(max(seconds) * 1000, 2),
        threads=(before.threads, max(s.threads for s in samples)),
        fds=(before.fds, max(s.fds for s in samples)),
        rss_mib=(
            round(before.rss_kib / 1024, 2),
            round(max(s.rss_kib for s in samples) / 1024, 2),
        ),
        server_cpu_pct=round(cpu * 100, 1),
    )


def _span(pair: tuple[float, float]) -> str:
    return f"{pair[0]:g}->{pair[1]:g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attackers", type=int, nargs="+", default=[8, 16, 100, 1000])
    parser.add_argument("--probes", type=int, default=40, help="probes per N (0.1 s apart)")
    parser.add_argument(
        "--processes", type=int, default=1, help="attacking processes sharing each N"
    )
    parser.add_argument(
        "--burst", type=int, default=0, help="bytes of the head each client sends at once first"
    )
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the tree to serve")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()
    results = [run(n, args.probes, args.src, args.processes, args.burst) for n in args.attackers]
    line = json.dumps([asdict(r) for r in results])
    if args.json:
        print(line)
        return 0
    print(
        f"{'N':>5}  {'probe statuses':<16} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
        f"  {'threads':<8} {'fds':<9} {'RSS MiB':<13} {'CPU %':>5}"
    )
    for r in results:
        statuses = " ".join(f"{v}x{k}" for k, v in sorted(r.statuses.items()))
        print(
            f"{r.attackers:>5}  {statuses:<16} {r.p50_ms:>7} {r.p99_ms:>7} {r.max_ms:>7}"
            f"  {_span(r.threads):<8} {_span(r.fds):<9} {_span(r.rss_mib):<13}"
            f" {r.server_cpu_pct:>5}"
        )
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
