"""Fake host trees for the device logic: a ``dev`` and a ``sys`` directory with
REAL device nodes (``os.mknod``), so discovery sees block and character special
files exactly as on a node. Creating device nodes needs root."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from power_device_plugin.config import PluginConfig, parse_config


class FakeHost:
    """A host's ``/dev`` and ``/sys`` under a temporary directory.

    Paths given to the helpers are host paths (``/dev/dm-0``), as in config.json.
    """

    def __init__(self, root: Path, dev_name: str = "dev") -> None:
        self.dev = root / "host" / dev_name
        self.sys = root / "host" / "sys"
        (self.sys / "block").mkdir(parents=True)
        self.dev.mkdir(parents=True, exist_ok=True)
        self._next_minor = 0

    def under_dev(self, host_path: str) -> Path:
        assert host_path.startswith("/dev/"), host_path
        return self.dev / host_path[len("/dev/") :]

    def _node(self, host_path: str, kind: int, major: int) -> Path:
        path = self.under_dev(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._next_minor += 1
        os.mknod(path, kind | 0o660, os.makedev(major, self._next_minor))
        return path

    def block_node(self, host_path: str) -> Path:
        return self._node(host_path, stat.S_IFBLK, 8)

    def char_node(self, host_path: str) -> Path:
        return self._node(host_path, stat.S_IFCHR, 10)

    def disk(self, name: str, partitions: tuple[str, ...] = (), node: bool = True) -> None:
        """A disk in sysfs (with partitions) and, unless ``node`` is False, its nodes."""
        entry = self.sys / "block" / name
        entry.mkdir()
        (entry / "dev").write_text("8:0\n")
        for part in partitions:
            (entry / part).mkdir()
            (entry / part / "partition").write_text("1\n")
            if node:
                self.block_node(f"/dev/{part}")
        if node:
            self.block_node(f"/dev/{name}")

    def dm(self, name: str, mapper_name: str) -> None:
        """A device-mapper device: sysfs entry with dm/name, node, /dev/mapper link."""
        entry = self.sys / "block" / name
        (entry / "dm").mkdir(parents=True)
        (entry / "dm" / "name").write_text(mapper_name + "\n")
        self.block_node(f"/dev/{name}")
        self.link(f"/dev/mapper/{mapper_name}", f"../{name}")

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
