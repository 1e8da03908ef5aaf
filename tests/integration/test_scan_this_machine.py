"""`power-device-plugin scan` on THIS machine, as an operator would run it on a node:
default `--dev-root /dev`, `--sys-root /sys` and `--host-proc /proc`, a config that
asks for everything (`/dev/*`). The disk carrying `/` and its partitions, the
built-in deny list, and a loop device carrying a mounted file system must all be
refused, each naming its rule. Needs root (losetup, mkfs.ext4, mount).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def plugin_command() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).parent / "power-device-plugin"
    return [str(script)] if script.exists() else [sys.executable, "-m", "power_device_plugin"]


def run_scan(config: Path) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    environment["PYTHONPATH"] = str(SRC)
    done = subprocess.run(
        [*plugin_command(), "scan", f"--config={config}", "--output=json"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def candidates_of(report: dict[str, Any], host_path: str) -> list[dict[str, Any]]:
    return [c for c in report["candidates"] if c["host_path"] == host_path]


def root_disk() -> tuple[str, str]:
    """(disk name in /sys/block, device number) of the block device mounted at `/`,
    from /proc/1/mountinfo: the whole disk when `/` is on a partition."""
    for line in Path("/proc/1/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            number = fields[2]
            break
    else:
        raise AssertionError("no / in /proc/1/mountinfo")
    for disk in sorted(os.listdir("/sys/block")):
        entry = Path("/sys/block", disk)
        numbers = [(entry / "dev").read_text().strip()]
        numbers += [
            (child / "dev").read_text().strip()
            for child in entry.iterdir()
            if (child / "partition").is_file()
        ]
        if number in numbers:
            return disk, number
    raise AssertionError(f"no block device {number} in /sys/block")


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test makes loop devices and mounts: run it as root")


@pytest.fixture
def everything_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    # /dev/* asks for everything. /dev/mem is named too because this machine's /dev
    # has no mem node: the deny list refuses the name whether or not it exists.
    config.write_text(json.dumps({"include-devices": ["/dev/*", "/dev/mem"]}))
    return config


def test_scan_refuses_the_root_disk_its_partitions_and_the_deny_list(
    everything_config: Path,
) -> None:
    needs_root()
    disk, _ = root_disk()
    report = run_scan(everything_config)
    partitions = [p.name for p in Path("/sys/block", disk).iterdir() if (p / "partition").is_file()]
    for name in (disk, *partitions):
        (found,) = candidates_of(report, f"/dev/{name}")
        assert (found["verdict"], found["rule"]) == ("refused", "in use"), found
        assert found["reason"].startswith("in use: "), found
    (root,) = candidates_of(report, f"/dev/{disk}")
    if not partitions:
        assert root["reason"] == "in use: mounted at /", root
    (mem,) = candidates_of(report, "/dev/mem")
    assert (mem["verdict"], mem["rule"]) == ("refused", "built-in deny list"), mem
    if Path("/dev/kmsg").exists():
        (kmsg,) = candidates_of(report, "/dev/kmsg")
        assert (kmsg["verdict"], kmsg["rule"]) == ("refused", "built-in deny list"), kmsg
    advertised = {c["host_path"] for c in report["candidates"] if c["verdict"] == "advertised"}
    assert f"/dev/{disk}" not in advertised
    assert not any(
        c["kind"] == "char" for c in report["candidates"] if c["verdict"] == "advertised"
    )


@pytest.fixture
def loop_file_system(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loop device over a 16 MiB file carrying ext4, mounted in tmp_path."""
    needs_root()
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        assert shutil.which(tool), f"{tool} is needed"
    backing = tmp_path / "disk.img"
    with backing.open("wb") as handle:
        handle.truncate(16 << 20)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(backing)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True, capture_output=True)
        subprocess.run(["mount", loop, str(mount_point)], check=True, capture_output=True)
        yield loop, mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
        subprocess.run(["losetup", "--detach", loop], check=False, capture_output=True)


def test_scan_refuses_a_loop_device_while_mounted_and_advertises_it_once_unmounted(
    everything_config: Path, loop_file_system: tuple[str, Path]
) -> None:
    loop, mount_point = loop_file_system
    (found,) = candidates_of(run_scan(everything_config), loop)
    assert (found["verdict"], found["rule"]) == ("refused", "in use"), found
    assert found["reason"] == f"in use: mounted at {mount_point}", found

    subprocess.run(["umount", str(mount_point)], check=True, capture_output=True)
    (found,) = candidates_of(run_scan(everything_config), loop)
    assert (found["verdict"], found["rule"]) == ("advertised", "include /dev/*"), found
