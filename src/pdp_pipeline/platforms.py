"""The architecture matrix: the one place that knows which platforms we ship.

A new platform is one line in PLATFORMS. Everything else follows from it: the build's
`--arch` choices, runtimes, wheels, tags, the index, testinfra, the node suite, QEMU
on the build host, the release. The files that must spell architectures out (the
DaemonSet's node affinity, the docs' lists and tables) are written from this list by
`invoke platform-files` (`pdp_pipeline.platform_files`), and a test fails when an
architecture is named anywhere else (`tests/pipeline/test_platform_names.py`).
"""

from __future__ import annotations

import json
import platform as host_platform
from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    """One architecture, in the spelling each tool wants."""

    arch: str  # Go/OCI spelling, used in image tags: amd64, ppc64le, s390x
    debian_arch: str  # Debian's spelling, for mmdebstrap: amd64, ppc64el, s390x
    machine: str  # what `uname -m` reports inside a container of this platform
    title: str  # the hardware, as the docs name it: "IBM Power"
    # PyPI has binary grpcio wheels for this machine: the ubi9 runtime's wheels image
    # comes from PyPI (`invoke wheels --arch ARCH`); otherwise they are compiled, once,
    # on a native builder (`--compile`).
    pypi_wheels: bool

    @property
    def platform(self) -> str:
        """The OCI platform string buildx and the engine take (`linux/ppc64le`)."""
        return f"linux/{self.arch}"


# One line per platform, in the order builds, the index and the docs list them.
# fmt: off
PLATFORMS: tuple[Platform, ...] = (
    #        arch       debian_arch  machine    title        pypi_wheels
    Platform("amd64",   "amd64",     "x86_64",  "x86",       True),
    Platform("arm64",   "arm64",     "aarch64", "Arm",       True),
    Platform("ppc64le", "ppc64el",   "ppc64le", "IBM Power", False),
    Platform("s390x",   "s390x",     "s390x",   "IBM Z",     False),
)
# fmt: on

_BY_ARCH = {p.arch: p for p in PLATFORMS}


class UnknownArchError(ValueError):
    """An architecture name that is not one we build."""


# `--arch native`: this host's own platform (`native()`), so a workflow leg that should
# run without QEMU on whatever runner it gets says so instead of naming an architecture.
NATIVE = "native"


def select(spec: str) -> tuple[Platform, ...]:
    """Platforms named by `--arch`: `all`, `native`, one name, or a comma-separated list.

    Order follows PLATFORMS, duplicates are dropped, and an unknown name is
    refused with the list of names we do know.
    """
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UnknownArchError(
            "--arch is empty: use all, native, or some of " + ", ".join(_BY_ARCH)
        )
    if "all" in names:
        return PLATFORMS
    names = [native().arch if n == NATIVE else n for n in names]
    unknown = [n for n in names if n not in _BY_ARCH]
    if unknown:
        raise UnknownArchError(
            f"--arch {spec!r}: unknown architecture {', '.join(unknown)}; "
            f"choose all, native, or some of {', '.join(_BY_ARCH)}"
        )
    return tuple(p for p in PLATFORMS if p.arch in names)


def by_arch(arch: str) -> Platform:
    """The platform for one architecture name (also accepts `linux/ARCH`)."""
    name = arch.removeprefix("linux/")
    if name not in _BY_ARCH:
        raise UnknownArchError(f"unknown architecture {arch!r}; known: {', '.join(_BY_ARCH)}")
    return _BY_ARCH[name]


def native() -> Platform:
    """The platform of this host (what runs without QEMU), or the first one we ship."""
    here = host_platform.machine()
    return next((p for p in PLATFORMS if p.machine == here), PLATFORMS[0])


# The wheels workflow's time budgets, in minutes. A platform PyPI has grpcio wheels for
# downloads them; the others compile grpcio (hours under QEMU: docs/release.md), within
# GitHub's 360-minute job ceiling, each attempt stopping early enough to export and save
# its compiled objects (`invoke wheels --attempt-timeout`), so a re-run resumes.
PYPI_WHEELS_MINUTES = 20
COMPILE_MINUTES = 355
COMPILE_EXPORT_MINUTES = 25


def workflow_matrix(spec: str = "all") -> list[dict[str, object]]:
    """The wheels workflow's matrix (`strategy.matrix.include`) for `--arch SPEC`.

    One leg per platform: `arch`; `compile` (no PyPI wheels: `invoke wheels --compile`);
    `timeout` (the job's minutes); `attempt_timeout` (seconds one compile attempt may
    run, 0 for none).
    """
    legs: list[dict[str, object]] = []
    for p in select(spec):
        compiles = not p.pypi_wheels
        minutes = COMPILE_MINUTES if compiles else PYPI_WHEELS_MINUTES
        legs.append(
            {
                "arch": p.arch,
                "compile": compiles,
                "timeout": minutes,
                "attempt_timeout": (minutes - COMPILE_EXPORT_MINUTES) * 60 if compiles else 0,
            }
        )
    return legs


def workflow_matrix_json(spec: str = "all") -> str:
    """`workflow_matrix` as one line of JSON, for `$GITHUB_OUTPUT` and `fromJSON`."""
    return json.dumps({"include": workflow_matrix(spec)}, separators=(",", ":"))
