"""Fake host trees for the device logic: a ``dev`` and a ``sys`` directory with
REAL device nodes (``os.mknod``), so discovery sees block and character special
files exactly as on a node, and a ``proc`` directory with the host's mount table
and swaps. Creating device nodes needs root."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from power_device_plugin.config import PluginConfig, parse_config

DeviceNumber = tuple[int, int]

SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


class FakeHost:
    """A host's ``/dev``, ``/sys`` and ``/proc`` under a temporary directory.

    Paths given to the helpers are host paths (``/dev/dm-0``), as in config.json.
    Every block device gets its own device number, written to its sysfs ``dev``
    file as the kernel does.
    """

    def __init__(self, root: Path, dev_name: str = "dev") -> None:
        self.dev = root / "host" / dev_name
        self.sys = root / "host" / "sys"
        self.proc = root / "host" / "proc"
        (self.sys / "block").mkdir(parents=True)
        self.dev.mkdir(parents=True, exist_ok=True)
        (self.proc / "1").mkdir(parents=True)
        self._mounts: list[str] = []
        self._swaps: list[str] = []
        self._write_proc()
        self._next_minor = 0

    def under_dev(self, host_path: str) -> Path:
        assert host_path.startswith("/dev/"), host_path
        return self.dev / host_path[len("/dev/") :]

    def _number(self, major: int) -> DeviceNumber:
        self._next_minor += 1
        return (major, self._next_minor)

    def _node(self, host_path: str, kind: int, number: DeviceNumber) -> Path:
        path = self.under_dev(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(path, kind | 0o660, os.makedev(*number))
        return path

    def block_node(self, host_path: str, number: DeviceNumber | None = None) -> Path:
        return self._node(host_path, stat.S_IFBLK, number or self._number(8))

    def char_node(self, host_path: str, number: DeviceNumber | None = None) -> Path:
        # 240-254 are the char majors for local use: never on the built-in deny list.
        return self._node(host_path, stat.S_IFCHR, number or self._number(240))

    def number_of(self, host_path: str) -> DeviceNumber:
        rdev = os.stat(self.under_dev(host_path)).st_rdev
        return (os.major(rdev), os.minor(rdev))

    def _sysfs_entry(self, entry: Path, number: DeviceNumber) -> None:
        entry.mkdir(parents=True, exist_ok=True)
        (entry / "dev").write_text(f"{number[0]}:{number[1]}\n")

    def disk(self, name: str, partitions: tuple[str, ...] = (), node: bool = True) -> None:
        """A disk in sysfs (with partitions) and, unless ``node`` is False, its nodes."""
        entry = self.sys / "block" / name
        number = self._number(8)
        self._sysfs_entry(entry, number)
        for part in partitions:
            part_number = self._number(8)
            self._sysfs_entry(entry / part, part_number)
            (entry / part / "partition").write_text("1\n")
            if node:
                self.block_node(f"/dev/{part}", part_number)
        if node:
            self.block_node(f"/dev/{name}", number)

    def dm(self, name: str, mapper_name: str, uuid: str = "", slaves: tuple[str, ...] = ()) -> None:
        """A device-mapper device: sysfs entry with dm/name (and dm/uuid, slaves/),
        node, /dev/mapper link."""
        entry = self.sys / "block" / name
        number = self._number(253)
        self._sysfs_entry(entry, number)
        (entry / "dm").mkdir()
        (entry / "dm" / "name").write_text(mapper_name + "\n")
        if uuid:
            (entry / "dm" / "uuid").write_text(uuid + "\n")
        (entry / "slaves").mkdir()
        for slave in slaves:
            (entry / "slaves" / slave).symlink_to(f"../../{slave}")
        self.block_node(f"/dev/{name}", number)
        self.link(f"/dev/mapper/{mapper_name}", f"../{name}")

    def sysfs(self, relative: str, text: str) -> None:
        """Write one sysfs attribute under ``<sys>/block`` (``sda/device/state``)."""
        path = self.sys / "block" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")

    def mount(self, host_path: str, mount_point: str) -> None:
        """The host mounting the block device at ``host_path`` (a mountinfo line)."""
        major, minor = self.number_of(host_path)
        line_id = 30 + len(self._mounts)
        self._mounts.append(
            f"{line_id} 1 {major}:{minor} / {mount_point} rw,relatime - ext4 {host_path} rw"
        )
        self._write_proc()

    def unmount_all(self) -> None:
        self._mounts.clear()
        self._write_proc()

    def _write_proc(self) -> None:
        lines = ["22 1 0:21 / /proc rw,relatime - proc proc rw", *self._mounts]
        (self.proc / "1" / "mountinfo").write_text("\n".join(lines) + "\n")
        (self.proc / "swaps").write_text(SWAPS_HEADER + "".join(self._swaps))

    def link(self, host_path: str, target: str) -> Path:
        path = self.under_dev(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        return path

    def regular_file(self, host_path: str) -> Path:
        path = self.under_dev(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not a device\n")
        return path

    def directory(self, host_path: str) -> Path:
        path = self.under_dev(host_path)
        path.mkdir(parents=True)
        return path

    def remove(self, host_path: str) -> None:
        self.under_dev(host_path).unlink()

    def remove_disk(self, name: str) -> None:
        """The kernel removing a disk: its sysfs entry and its node go."""
        entry = self.sys / "block" / name
        for child in sorted(entry.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        entry.rmdir()
        self.remove(f"/dev/{name}")


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("creating block/character device nodes with os.mknod needs root")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    needs_root()
    yield FakeHost(tmp_path)


def config_of(**keys: Any) -> PluginConfig:
    """A PluginConfig from config.json keys (kebab-case, given with underscores)."""
    doc = {k.replace("_", "-"): v for k, v in keys.items()}
    config, _ = parse_config(json.dumps(doc), "test-config.json")
    return config
