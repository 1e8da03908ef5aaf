"""The architecture matrix: the one place that knows which platforms we ship."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    """One architecture, in the spelling each tool wants."""

    arch: str  # Go/OCI spelling, used in image tags: amd64, ppc64le, s390x
    debian_arch: str  # Debian's spelling, for mmdebstrap: amd64, ppc64el, s390x
    machine: str  # what `uname -m` reports inside a container of this platform

    @property
    def platform(self) -> str:
        """The OCI platform string buildx and the engine take (`linux/ppc64le`)."""
        return f"linux/{self.arch}"


PLATFORMS: tuple[Platform, ...] = (
    Platform(arch="amd64", debian_arch="amd64", machine="x86_64"),
    Platform(arch="ppc64le", debian_arch="ppc64el", machine="ppc64le"),
    Platform(arch="s390x", debian_arch="s390x", machine="s390x"),
)

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
