"""Fake sysfs shaped like the kernel's for passthrough nodes: SCSI devices with their
disk, ``scsi_generic`` and ``bsg`` class devices, NVMe controllers with namespaces and
``nvme-generic`` nodes. Every class device lives under ``<sys>/devices`` as the
kernel puts it and is reached through ``<sys>/class/<class>/<name>`` and
``<sys>/dev/{char,block}/M:m`` symlinks, with a ``subsystem`` link and a ``dev``
file; disks are also linked from ``<sys>/block``. The matching ``/dev`` nodes are
real device nodes (``os.mknod``) made through :class:`FakeHost`."""

from __future__ import annotations

import os
from pathlib import Path

from tests.unit.conftest import FakeHost

DeviceNumber = tuple[int, int]

SG_MAJOR = 21  # fixed by the kernel
BSG_MAJOR = 246  # dynamic on a real kernel; any free char major here
NVME_MAJOR = 241
NVME_GENERIC_MAJOR = 242
NVME_BLOCK_MAJOR = 259
PCI = "devices/pci0000:00/0000:00:05.0"


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


class KernelSysfs:
    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.sys = host.sys

    def _device(self, directory: Path, cls: str, kind: str, number: DeviceNumber) -> Path:
        """A class device with its dev file and its class, subsystem and number links."""
        directory.mkdir(parents=True)
        (directory / "dev").write_text(f"{number[0]}:{number[1]}\n")
        _link(directory / "subsystem", self.sys / "class" / cls)
        (self.sys / "class" / cls).mkdir(parents=True, exist_ok=True)
        _link(self.sys / "class" / cls / directory.name, directory)
        _link(self.sys / "dev" / kind / f"{number[0]}:{number[1]}", directory)
        return directory

    def _disk(
        self, parent: Path, name: str, number: DeviceNumber, partitions: tuple[str, ...] = ()
    ) -> Path:
        disk = self._device(parent / name, "block", "block", number)
        (disk / "size").write_text("2097152\n")
        for slot in ("holders", "slaves"):
            (disk / slot).mkdir()
        _link(self.sys / "block" / name, disk)
        self.host.block_node(f"/dev/{name}", number)
        for index, part in enumerate(partitions, start=1):
            part_number = (number[0], number[1] + index)
            part_dir = self._device(disk / part, "block", "block", part_number)
            (part_dir / "partition").write_text(f"{index}\n")
            self.host.block_node(f"/dev/{part}", part_number)
        return disk

    def scsi_device(self, hctl: str, host_no: int = 0, state: str = "running") -> Path:
        """``<pci>/hostH/targetH:C:T/H:C:T:L`` with its ``state`` and ``wwid``."""
        target = hctl.rsplit(":", 1)[0]
        directory = self.sys / PCI / f"host{host_no}" / f"target{target}" / hctl
        directory.mkdir(parents=True)
        (directory / "state").write_text(state + "\n")
        (directory / "wwid").write_text(f"naa.6000{hctl.replace(':', '')}\n")
        return directory

    def scsi_disk(
        self,
        hctl: str,
        disk: str,
        number: DeviceNumber,
        partitions: tuple[str, ...] = (),
        state: str = "running",
    ) -> Path:
        """A SCSI disk: the SCSI device and ``block/<disk>`` under it (``device`` links back)."""
        device = self.scsi_device(hctl, state=state)
        disk_dir = self._disk(device / "block", disk, number, partitions)
        _link(disk_dir / "device", device)
        return device

    def sg(self, device: Path, name: str, minor: int, node: str = "") -> None:
        """``scsi_generic/sgN`` under a SCSI device (or host) and the node ``/dev/sgN``."""
        number = (SG_MAJOR, minor)
        directory = self._device(device / "scsi_generic" / name, "scsi_generic", "char", number)
        _link(directory / "device", device)
        self.host.char_node(node or f"/dev/{name}", number)

    def bsg(self, parent: Path, name: str, minor: int) -> None:
        """``bsg/<name>`` under a SCSI device or a SCSI host, and ``/dev/bsg/<name>``."""
        number = (BSG_MAJOR, minor)
        directory = self._device(parent / "bsg" / name, "bsg", "char", number)
        _link(directory / "device", parent)
        self.host.char_node(f"/dev/bsg/{name}", number)

    def scsi_host(self, host_no: int) -> Path:
        directory = self.sys / PCI / f"host{host_no}"
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def nvme_controller(self, instance: int, pci: str = "0000:00:04.0") -> Path:
        """``<pci>/nvme/nvmeX`` (class nvme) and its node ``/dev/nvmeX``."""
        number = (NVME_MAJOR, instance)
        directory = self._device(
            self.sys / "devices/pci0000:00" / pci / "nvme" / f"nvme{instance}",
            "nvme",
            "char",
            number,
        )
        self.host.char_node(f"/dev/nvme{instance}", number)
        return directory

    def nvme_subsystem(self, instance: int) -> Path:
        directory = self.sys / "devices/virtual/nvme-subsystem" / f"nvme-subsys{instance}"
        directory.mkdir(parents=True)
        return directory

    def nvme_namespace(
        self,
        parent: Path,
        x: int,
        y: int,
        disk_minor: int,
        generic_minor: int,
        partitions: tuple[str, ...] = (),
    ) -> None:
        """Namespace ``nvmeXnY`` (block) and its generic node ``ngXnY`` (char), both
        directly under ``parent``: the controller, or the subsystem for a multipath head."""
        self._disk(parent, f"nvme{x}n{y}", (NVME_BLOCK_MAJOR, disk_minor), partitions)
        number = (NVME_GENERIC_MAJOR, generic_minor)
        generic = self._device(parent / f"ng{x}n{y}", "nvme-generic", "char", number)
        _link(generic / "device", parent)
        self.host.char_node(f"/dev/ng{x}n{y}", number)
