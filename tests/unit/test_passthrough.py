"""Passthrough character nodes (``/dev/sg*``, ``/dev/bsg/*``, ``/dev/ng*n*``,
``/dev/nvme*``) named exactly in include-devices are traced through sysfs to the disk
they reach: refused when the host uses that disk, refused by the deny list when they
reach a controller or not exactly one disk, otherwise advertised with the disk's
health. Fake trees are shaped like the kernel's sysfs, with real device nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.unit.conftest import FakeHost, config_of
from tests.unit.passthrough_tree import SG_MAJOR, KernelSysfs

from power_device_plugin import discovery
from power_device_plugin.discovery import REFUSED, Candidate, ScanResult, scan
from power_device_plugin.host_use import HostUse, read_host_use, trace_passthrough

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def kernel(host: FakeHost) -> KernelSysfs:
    return KernelSysfs(host)


def scan_of(host: FakeHost, *include: str, explain_unmatched: bool = True) -> ScanResult:
    config = config_of(include_devices=list(include))
    host_use = read_host_use(host.proc, host.sys)
    return scan(config, host.dev, host.sys, host_use, explain_unmatched=explain_unmatched)


def the(result: ScanResult, host_path: str) -> Candidate:
    (only,) = [c for c in result.candidates if c.host_path == host_path]
    return only


def verdict(result: ScanResult, host_path: str) -> tuple[str, str, str]:
    found = the(result, host_path)
    return found.verdict, found.rule, found.reason


# --- SCSI generic -------------------------------------------------------------------------------


def test_an_sg_node_whose_disk_is_mounted_is_refused_naming_the_disk(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(device, "sg0", 0)
    host.mount("/dev/sda", "/var/lib/data")
    assert verdict(scan_of(host, "/dev/sg0"), "/dev/sg0") == (
        REFUSED,
        "in use",
        "in use: SCSI generic sg0 reaches /dev/sda (mounted at /var/lib/data)",
    )


def test_an_sg_node_whose_disk_has_a_mounted_partition_is_refused(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0), partitions=("sda1", "sda2"))
    kernel.sg(device, "sg0", 0)
    host.mount("/dev/sda2", "/")
    assert verdict(scan_of(host, "/dev/sg0"), "/dev/sg0") == (
        REFUSED,
        "in use",
        "in use: SCSI generic sg0 reaches /dev/sda (disk of sda2 (mounted at /))",
    )


def test_an_sg_node_of_a_free_disk_is_advertised_with_the_disks_identity(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    mounted = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(mounted, "sg0", 0)
    free = kernel.scsi_disk("0:0:1:0", "sdb", (8, 16))
    kernel.sg(free, "sg1", 1)
    host.mount("/dev/sda", "/")
    result = scan_of(host, "/dev/sg0", "/dev/sg1")
    assert [c.host_path for c in result.advertised()] == ["/dev/sg1"]
    sg1 = the(result, "/dev/sg1")
    assert (sg1.kind, sg1.rdev, sg1.reason) == ("char", (SG_MAJOR, 1), "char device node")
    assert (sg1.identity, sg1.problem) == ("wwid:naa.60000010", "")


def test_an_sg_node_is_unhealthy_when_its_disk_is_offline(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0), state="offline")
    kernel.sg(device, "sg0", 0)
    (candidate,) = scan_of(host, "/dev/sg0").advertised()
    assert candidate.problem == "device/state is offline"


def test_a_node_with_an_sg_number_is_traced_whatever_its_name(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(device, "sg0", 0, node="/dev/tape-or-disk")
    host.mount("/dev/sda", "/boot")
    assert verdict(scan_of(host, "/dev/tape-or-disk"), "/dev/tape-or-disk") == (
        REFUSED,
        "in use",
        "in use: SCSI generic sg0 reaches /dev/sda (mounted at /boot)",
    )


def test_an_sg_node_of_a_scsi_device_without_a_disk_is_on_the_deny_list(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    tape = kernel.scsi_device("0:0:2:0")
    kernel.sg(tape, "sg2", 2)
    assert verdict(scan_of(host, "/dev/sg2"), "/dev/sg2") == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: SCSI generic sg2 reaches 0:0:2:0, which has no disk: "
        "not one disk to check",
    )


@pytest.mark.parametrize("path", ["/dev/sg7", "/dev/bsg/0:0:0:0", "/dev/ng0n1", "/dev/nvme3"])
def test_a_passthrough_node_sysfs_does_not_know_is_on_the_deny_list(
    host: FakeHost, path: str
) -> None:
    host.char_node(path)
    verdict_, rule, reason = verdict(scan_of(host, path), path)
    assert (verdict_, rule) == (REFUSED, "built-in deny list")
    assert reason.startswith(f"built-in deny list: passthrough node {path}: sysfs does not trace")
    assert reason.endswith("cannot tell which disk it reaches")


def test_a_node_of_the_sg_major_that_sysfs_does_not_know_is_on_the_deny_list(
    host: FakeHost,
) -> None:
    host.char_node("/dev/raw-scsi", (SG_MAJOR, 9))
    assert verdict(scan_of(host, "/dev/raw-scsi"), "/dev/raw-scsi") == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: passthrough node character device 21:9: sysfs does not trace "
        "21:9 to a scsi_generic, bsg, nvme-generic or nvme device: "
        "cannot tell which disk it reaches",
    )


def test_an_ordinary_character_device_named_exactly_is_still_advertised(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(device, "sg0", 0)
    host.char_node("/dev/accel/7")
    result = scan_of(host, "/dev/accel/7")
    assert [c.host_path for c in result.advertised()] == ["/dev/accel/7"]
    assert the(result, "/dev/accel/7").identity == ""


def test_an_sg_node_matched_by_a_glob_stays_refused_as_a_character_device(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(device, "sg0", 0)
    assert the(scan_of(host, "/dev/sg*"), "/dev/sg0").rule == "character devices by exact name"


def test_an_sg_node_is_refused_when_the_hosts_use_cannot_be_read(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(device, "sg0", 0)
    (host.proc / "1" / "mountinfo").unlink()
    result = scan_of(host, "/dev/sg0")
    found = the(result, "/dev/sg0")
    assert (found.verdict, found.rule) == (REFUSED, "in use")
    assert found.reason.startswith(
        "cannot tell whether the host uses its disk: host mount table unreadable: "
    )


# --- bsg ---------------------------------------------------------------------------------------


def test_a_bsg_node_whose_disk_is_mounted_is_refused_naming_the_disk(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("1:0:0:3", "sdc", (8, 32))
    kernel.bsg(device, "1:0:0:3", 0)
    host.mount("/dev/sdc", "/var/lib/kubelet")
    assert verdict(scan_of(host, "/dev/bsg/1:0:0:3"), "/dev/bsg/1:0:0:3") == (
        REFUSED,
        "in use",
        "in use: bsg 1:0:0:3 reaches /dev/sdc (mounted at /var/lib/kubelet)",
    )


def test_a_bsg_node_of_a_free_disk_is_advertised(host: FakeHost, kernel: KernelSysfs) -> None:
    device = kernel.scsi_disk("1:0:0:3", "sdc", (8, 32))
    kernel.bsg(device, "1:0:0:3", 0)
    (candidate,) = scan_of(host, "/dev/bsg/1:0:0:3").advertised()
    assert candidate.identity == "wwid:naa.60001003"


def test_a_bsg_node_of_a_scsi_host_is_on_the_deny_list(host: FakeHost, kernel: KernelSysfs) -> None:
    kernel.bsg(kernel.scsi_host(1), "fc_host1", 1)
    assert verdict(scan_of(host, "/dev/bsg/fc_host1"), "/dev/bsg/fc_host1") == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: bsg fc_host1 reaches host1, which has no disk: not one disk to check",
    )


# --- NVMe ----------------------------------------------------------------------------------------


def test_an_nvme_generic_node_whose_namespace_is_mounted_is_refused_naming_it(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    controller = kernel.nvme_controller(0)
    kernel.nvme_namespace(controller, 0, 1, 0, 0, partitions=("nvme0n1p1",))
    kernel.nvme_namespace(controller, 0, 2, 8, 1)
    host.mount("/dev/nvme0n1p1", "/sysroot")
    result = scan_of(host, "/dev/ng0n1", "/dev/ng0n2")
    assert verdict(result, "/dev/ng0n1") == (
        REFUSED,
        "in use",
        "in use: NVMe generic ng0n1 reaches /dev/nvme0n1 (disk of nvme0n1p1 (mounted at /sysroot))",
    )
    assert [c.host_path for c in result.advertised()] == ["/dev/ng0n2"]


def test_a_multipath_head_generic_node_is_traced_to_the_head_disk(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    kernel.nvme_controller(0)
    kernel.nvme_controller(1, pci="0000:00:06.0")
    subsystem = kernel.nvme_subsystem(0)
    kernel.nvme_namespace(subsystem, 0, 1, 0, 0)
    host.mount("/dev/nvme0n1", "/var")
    assert verdict(scan_of(host, "/dev/ng0n1"), "/dev/ng0n1") == (
        REFUSED,
        "in use",
        "in use: NVMe generic ng0n1 reaches /dev/nvme0n1 (mounted at /var)",
    )


def test_an_nvme_generic_node_without_its_namespace_disk_is_on_the_deny_list(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    controller = kernel.nvme_controller(0)
    kernel.nvme_namespace(controller, 0, 1, 0, 0)
    (controller / "nvme0n1" / "dev").unlink()
    for name in ("nvme0n1",):
        (host.sys / "block" / name).unlink()
    assert verdict(scan_of(host, "/dev/ng0n1"), "/dev/ng0n1") == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: NVMe generic ng0n1 reaches nvme0n1, "
        "which has no device number in sysfs",
    )


def test_an_nvme_controller_node_is_on_the_deny_list_naming_its_namespaces(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    controller = kernel.nvme_controller(0)
    for y in range(1, 7):
        kernel.nvme_namespace(controller, 0, y, 8 * y, y)
    assert verdict(scan_of(host, "/dev/nvme0"), "/dev/nvme0") == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: NVMe controller nvme0 reaches the controller and every "
        "namespace behind it (nvme0n1, nvme0n2, nvme0n3, nvme0n4 and 2 more)",
    )


def test_an_nvme_controller_node_without_namespaces_is_on_the_deny_list(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    kernel.nvme_controller(4)
    assert verdict(scan_of(host, "/dev/nvme4"), "/dev/nvme4")[1:] == (
        "built-in deny list",
        "built-in deny list: NVMe controller nvme4 reaches the controller and every "
        "namespace behind it (none now)",
    )


def test_the_nvme_fabrics_control_node_is_on_the_deny_list(host: FakeHost) -> None:
    host.char_node("/dev/nvme-fabrics", (10, 61))
    assert verdict(scan_of(host, "/dev/nvme-fabrics"), "/dev/nvme-fabrics") == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: /dev/nvme-fabrics "
        "(NVMe over Fabrics control (connects the host to remote storage))",
    )


# --- the watcher's lean scan, and what is read ------------------------------------------------


def test_the_lean_scan_judges_passthrough_nodes_alike(host: FakeHost, kernel: KernelSysfs) -> None:
    used = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(used, "sg0", 0)
    free = kernel.scsi_disk("0:0:1:0", "sdb", (8, 16))
    kernel.sg(free, "sg1", 1)
    kernel.nvme_controller(0)
    host.mount("/dev/sda", "/")
    include = ("/dev/sg0", "/dev/sg1", "/dev/nvme0", "/dev/sd*")
    full = scan_of(host, *include)
    lean = scan_of(host, *include, explain_unmatched=False)
    assert lean.advertised() == full.advertised()
    assert [c.host_path for c in lean.advertised()] == ["/dev/sg1", "/dev/sdb"]
    for path in ("/dev/sg0", "/dev/nvme0"):
        assert verdict(lean, path) == verdict(full, path)


def test_only_character_nodes_named_exactly_are_traced(
    host: FakeHost, kernel: KernelSysfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced: list[tuple[int, int]] = []

    def counting(sys_root: Path, rdev: tuple[int, int], paths: object) -> object:
        traced.append(rdev)
        return trace_passthrough(sys_root, rdev, paths)  # type: ignore[arg-type]

    monkeypatch.setattr(discovery, "trace_passthrough", counting)
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0), partitions=("sda1",))
    kernel.sg(device, "sg0", 0)
    kernel.sg(kernel.scsi_device("0:0:1:0"), "sg1", 1)
    scan_of(host, "/dev/sd*", "/dev/sg*", "/dev/sg0")
    assert traced == [(SG_MAJOR, 0)]
    traced.clear()
    scan(config_of(), host.dev, host.sys, HostUse(in_use={}))
    assert traced == []


def test_trace_passthrough_leaves_other_character_devices_alone(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    kernel.nvme_controller(0)
    assert trace_passthrough(host.sys, (240, 5), ["/dev/accel/7"]) is None
    controller = trace_passthrough(host.sys, (241, 0), ["/dev/anything"])
    assert controller is not None and controller.node == "NVMe controller nvme0"


# --- the scan command ----------------------------------------------------------------------------


def test_the_scan_command_refuses_an_sg_node_whose_disk_is_mounted_naming_the_disk(
    host: FakeHost, kernel: KernelSysfs, tmp_path: Path
) -> None:
    device = kernel.scsi_disk("2:0:0:0", "sdd", (8, 48))
    kernel.sg(device, "sg3", 3)
    host.mount("/dev/sdd", "/var/lib/containers")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"include-devices": ["/dev/sg3"]}))
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
            f"--host-proc={host.proc}",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [row for row in done.stdout.splitlines() if "/dev/sg3" in row]
    assert line.split()[:4] == ["refused", "/dev/sg3", "in", "use"]
    assert line.endswith(
        "in use: SCSI generic sg3 reaches /dev/sdd (mounted at /var/lib/containers)"
    )
    assert "0 device IDs would be advertised" in done.stdout


def test_a_node_named_like_a_passthrough_node_is_what_sysfs_says_it_is(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    """A misc device someone named /dev/sg4 is not taken for an sg node; one whose class
    sysfs does not say, under such a name, is refused."""
    misc = host.sys / "devices/virtual/misc/accel"
    misc.mkdir(parents=True)
    (misc / "dev").write_text("10:99\n")
    (host.sys / "class/misc").mkdir(parents=True)
    (misc / "subsystem").symlink_to("../../../../class/misc")
    (host.sys / "dev/char").mkdir(parents=True, exist_ok=True)
    (host.sys / "dev/char/10:99").symlink_to("../../devices/virtual/misc/accel")
    host.char_node("/dev/sg4", (10, 99))
    assert [c.host_path for c in scan_of(host, "/dev/sg4").advertised()] == ["/dev/sg4"]

    (misc / "subsystem").unlink()
    assert verdict(scan_of(host, "/dev/sg4"), "/dev/sg4")[:2] == (REFUSED, "built-in deny list")


def test_an_sg_node_found_through_the_class_listing_without_a_subsystem_link(
    host: FakeHost, kernel: KernelSysfs
) -> None:
    device = kernel.scsi_disk("0:0:0:0", "sda", (8, 0))
    kernel.sg(device, "sg0", 0)
    (device / "scsi_generic/sg0/subsystem").unlink()
    host.mount("/dev/sda", "/")
    assert verdict(scan_of(host, "/dev/sg0"), "/dev/sg0")[1:] == (
        "in use",
        "in use: SCSI generic sg0 reaches /dev/sda (mounted at /)",
    )
