"""A Kubernetes device plugin that grants protected host devices to non-privileged pods."""

from __future__ import annotations

import os
import sys

__all__ = ["__version__"]

_DIST_INFO_PREFIX = "power_device_plugin-"
_DIST_INFO_SUFFIX = ".dist-info"


def _version_from_dist_info_name() -> str | None:
    """The installed version from the ``power_device_plugin-<version>.dist-info``
    directory on ``sys.path`` (the first, as the import system finds packages)."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith(_DIST_INFO_PREFIX) and name.endswith(_DIST_INFO_SUFFIX):
                return name[len(_DIST_INFO_PREFIX) : -len(_DIST_INFO_SUFFIX)]
    return None


def _installed_version() -> str:
    # importlib.metadata weighs several MiB of RSS (email, zipfile, csv, ...): the
    # dist-info directory's name says the same for a wheel or an editable install.
    found = _version_from_dist_info_name()
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("power-device-plugin")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def __getattr__(name: str) -> str:
    # Looked up on first use only, then kept as a plain module attribute.
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    found = _installed_version()
    globals()["__version__"] = found
    return found
