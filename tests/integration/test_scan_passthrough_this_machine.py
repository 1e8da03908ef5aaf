"""`power-device-plugin scan` with THIS machine's mount table (`--host-proc /proc`): an
sg node whose disk is mounted is refused, naming the disk, and advertised once the
disk is unmounted. The disk is a real loop device carrying a mounted ext4; this
machine has no SCSI, so the sysfs that ties `/dev/sg0` to it is a tree shaped like the
kernel's (tests/unit/passthrough_tree.py) with the loop device's real number, and the
`/dev` holding the sg node is a fake one with real device nodes. Needs root.
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
from tests.unit.conftest import FakeHost
from tests.unit.passthrough_tree import KernelSysfs

SRC = Path(__file__).resolve().parents[2] / "src"


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test makes a loop device and mounts it: run it as root")


@pytest.fixture
def mounted_loop(tmp_path: Path) -> Iterator[tuple[str, tuple[int, int], Path]]:
    """(kernel name, device number, mount point) of a mounted 16 MiB ext4 loop device."""
    needs_root()
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        assert shutil.which(tool), f"{tool} is needed"
    backing = tmp_path / "disk.img"
    with backing.open("wb") as handle:
        handle.truncate(16 << 20)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True, capture_output=True)
        subprocess.run(["mount", loop, str(mount_point)], check=True, capture_output=True)
        rdev = os.stat(loop).st_rdev
        yield os.path.basename(loop), (os.major(rdev), os.minor(rdev)), mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)
        subprocess.run(["losetup", "--detach", loop], check=False, capture_output=True)


def run_scan(host: FakeHost, config: Path) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PDP_")}
    environment["PYTHONPATH"] = str(SRC)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "power_device_plugin",
            "scan",
            f"--config={config}",
            f"--dev-root={host.dev}",
            f"--sys-root={host.sys}",
            "--host-proc=/proc",
            "--output=json",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def sg_candidates(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report["candidates"] if c["host_path"] == "/dev/sg0"]


def test_scan_refuses_an_sg_node_while_its_disk_is_mounted_on_this_machine(
    tmp_path: Path, mounted_loop: tuple[str, tuple[int, int], Path]
) -> None:
    name, number, mount_point = mounted_loop
    host = FakeHost(tmp_path / "fake")
    kernel = KernelSysfs(host)
    kernel.sg(kernel.scsi_disk("0:0:0:0", name, number), "sg0", 0)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"include-devices": ["/dev/sg0"]}))

    (sg0,) = sg_candidates(run_scan(host, config))
    assert (sg0["verdict"], sg0["rule"], sg0["reason"]) == (
        "refused",
        "in use",
        f"in use: SCSI generic sg0 reaches /dev/{name} (mounted at {mount_point})",
    )

    subprocess.run(["umount", str(mount_point)], check=True, capture_output=True)
    report = run_scan(host, config)
    (sg0,) = sg_candidates(report)
    assert (sg0["verdict"], sg0["kind"], sg0["rdev"]) == ("advertised", "char", "21:0")
    assert [d["health"] for d in report["devices"]] == ["Healthy"]
