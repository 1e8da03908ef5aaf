"""The architecture matrix: the one place that knows which platforms we ship.

A new platform is one line in PLATFORMS. Everything else follows from it: the build's
`--arch` choices, runtimes, wheels, tags, the index, testinfra, the node suite, QEMU
on the build host, the release. The files that must spell architectures out (the
DaemonSet's node affinity, the docs' lists and tables) are written from this list by
`invoke platform-files` (`pdp_pipeline.platform_files`), and a test fails when an
architecture is named anywhere else (`tests/pipeline/test_platform_names.py`).
"""

from __future__ import annotations

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


def select(spec: str) -> tuple[Platform, ...]:
    """Platforms named by `--arch`: `all`, one name, or a comma-separated list.

    Order follows PLATFORMS, duplicates are dropped, and an unknown name is
    refused with the list of names we do know.
    """
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UnknownArchError("--arch is empty: use all, or some of " + ", ".join(_BY_ARCH))
    if "all" in names:
        return PLATFORMS
    unknown = [n for n in names if n not in _BY_ARCH]
    if unknown:
        raise UnknownArchError(
            f"--arch {spec!r}: unknown architecture {', '.join(unknown)}; "
            f"choose all, or some of {', '.join(_BY_ARCH)}"
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
