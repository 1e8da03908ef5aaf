"""Time a cold and a warm `build --arch all --base debian`, printing every step.

Cold: a fresh registry repository (`<prefix>-<time>`), so no runtime image can
be reused and all are built; with --fresh-rootfs the Debian root file systems
are made again too (a temporary runtime cache), so nothing at all is reused.
Warm: the same repository again after touching a file in src/, which is the
everyday edit-and-rebuild loop; the goal is <= 90 s for every architecture,
pushed and indexed, with no runtime image rebuilt.

Usage: scripts/in-venv python bench/build_bench.py [--arch all] [--fresh-rootfs]
       [--skip-cold --repository NAME] [--verify]

Records go to a temporary directory: .cache/build/last-build.json is left alone.
The bench repositories stay in the registry (a registry keeps what it was given).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pdp_pipeline.images import build, runtime, summary  # noqa: E402
from pdp_pipeline.images import record as build_record  # noqa: E402
from pdp_pipeline.platforms import select  # noqa: E402

TOUCHED = ROOT / "src" / "power_device_plugin" / "__init__.py"
WARM_GOAL_SECONDS = 90.0


class StepClock:
    """A log that stamps each line with the seconds since the run began."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.monotonic()

    def __call__(self, line: str) -> None:
        print(f"[{self.name} {time.monotonic() - self.started:7.1f} s] {line}", flush=True)


def timed_build(
    name: str, options: build.BuildOptions, record_file: Path
) -> tuple[float, build_record.BuildRecord]:
    clock = StepClock(name)
    record = build.run_build(options, log=clock, record_file=record_file)
    seconds = time.monotonic() - clock.started
    print(summary.table(record), flush=True)
    return seconds, record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="all")
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--prefix", default="pdp-bench", help="cold repository name prefix")
    parser.add_argument("--repository", help="with --skip-cold: the repository to rebuild warm")
    parser.add_argument("--skip-cold", action="store_true", help="only the warm build")
    parser.add_argument(
        "--fresh-rootfs", action="store_true", help="cold: make the Debian root file systems again"
    )
    parser.add_argument("--verify", action="store_true", help="time the image suite as well")
    args = parser.parse_args()

    archs = select(args.arch)
    repository = args.repository or f"{args.prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    figures: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="pdp-bench-") as scratch:
        record_file = Path(scratch) / "record.json"
        options = build.BuildOptions(
            archs=archs,
            registry=args.registry,
            repository=repository,
            base="debian",
            verify=False,
        )
        if not args.skip_cold:
            if args.fresh_rootfs:
                # The runtime producer caches root file systems by key; a cold run must not.
                runtime.CACHE = Path(scratch) / "runtime-cache"
            seconds, record = timed_build("cold", options, record_file)
            built = sum(not r.runtime.reused for r in record.archs)
            figures.append(("cold", seconds, f"{built} of {len(record.archs)} runtimes built"))

        TOUCHED.touch()
        print(f"bench: touched {TOUCHED.relative_to(ROOT)}", flush=True)
        seconds, record = timed_build("warm", options, record_file)
        rebuilt = sum(not r.runtime.reused for r in record.archs)
        verdict = "meets" if seconds <= WARM_GOAL_SECONDS and not rebuilt else "MISSES"
        figures.append(
            (
                "warm",
                seconds,
                f"{rebuilt} runtimes rebuilt; {verdict} the goal (<= {WARM_GOAL_SECONDS:.0f} s)",
            )
        )

        if args.verify:
            started = time.monotonic()
            from pdp_pipeline.images import verify

            outcome = verify.verify_and_record(record_file, [p.arch for p in archs])
            passed = sum(bool(r.verified) for r in outcome.archs)
            figures.append(
                ("verify", time.monotonic() - started, f"{passed} of {len(archs)} passed")
            )

    print(f"\nbench: {len(archs)} architectures, repository {repository}")
    for name, seconds, note in figures:
        print(f"bench: {name:6} {seconds:7.1f} s  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
