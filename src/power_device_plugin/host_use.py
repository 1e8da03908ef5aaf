"""What the host itself uses (mounted file systems, active swap) and the built-in deny list.

Placeholder with the final API: reads the block devices named by the host's mount
table and swaps, without following sysfs chains.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DeviceNumber = tuple[int, int]

DENIED_HOST_PATHS = (
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/kmsg",
    "/dev/mapper/control",
    "/dev/cpu/*/msr",
    "/dev/nvram",
    "/dev/tty*",
)


@dataclass(frozen=True)
class HostUse:
    in_use: Mapping[DeviceNumber, str] = field(default_factory=dict)
    error: str = ""

    def reason_for(self, rdev: DeviceNumber | None) -> str | None:
        if self.error:
            return self.error
        if rdev is None:
            return None
        return self.in_use.get(rdev)


def _rdev_of(path: str) -> DeviceNumber | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def read_host_use(proc_root: Path, sys_root: Path) -> HostUse:
    in_use: dict[DeviceNumber, str] = {}
    mountinfo = proc_root / "1" / "mountinfo"
    if not mountinfo.exists():
        mountinfo = proc_root / "self" / "mountinfo"
    try:
        lines = mountinfo.read_text().splitlines()
        swaps = (proc_root / "swaps").read_text().splitlines()[1:]
    except OSError as exc:
        return HostUse(error=f"cannot read the host's mount table: {exc}")
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        major, _, minor = parts[2].partition(":")
        if major.isdigit() and minor.isdigit() and int(major) != 0:
            in_use.setdefault((int(major), int(minor)), f"mounted at {parts[4]}")
    for line in swaps:
        name = line.split()[0] if line.split() else ""
        rdev = _rdev_of(name)
        if rdev is not None:
            in_use.setdefault(rdev, f"active swap ({name})")
    return HostUse(in_use=in_use)


def denied_reason(host_path: str) -> str | None:
    for pattern in DENIED_HOST_PATHS:
        if fnmatch.fnmatchcase(host_path, pattern):
            return f"built-in deny list: {pattern}"
    return None
