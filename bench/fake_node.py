"""A fake node for the plugin bench: real block nodes (os.mknod, root) and a sysfs-shaped tree.

Two shapes:

- `plain`: N `dm-*` maps, each a block node `<dev>/dm-K` and `<sys>/block/dm-K`
  (`dev`, `size`, `dm/name`, `dm/uuid`, empty `slaves/` and `holders/`).
- `san`: the same N maps as multipath devices over `paths` `sd*` disks each
  (`dm/uuid` "mpath-…", `slaves/sdX` links, `sdX/holders/dm-K` links,
  `sdX/device/state` "running"), so every scan sees N + N*paths block devices.

The majors are chosen free on the machine (not listed in /proc/devices), so a
fake node never names a real disk. `proc` is a fake host /proc for plugins that
read the host's mountinfo and swaps (`--host-proc`): `/` is on a device number
none of the fake devices use.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

# 240-254 are the "local/experimental" block majors; take two the kernel has not handed out.
PREFERRED_MAJORS = (240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250)
SECTORS = 2097152  # 1 GiB in 512-byte sectors: a healthy, non-empty device


def used_block_majors(proc_devices: Path = Path("/proc/devices")) -> set[int]:
    """Block majors the running kernel has registered (real disks live on these)."""
    majors: set[int] = set()
    in_block = False
    for line in proc_devices.read_text().splitlines():
        if line.startswith("Block devices"):
            in_block = True
            continue
        if in_block and line.strip():
            majors.add(int(line.split()[0]))
    return majors


def free_majors(count: int) -> tuple[int, ...]:
    used = used_block_majors()
    free = tuple(m for m in PREFERRED_MAJORS if m not in used)
    if len(free) < count:
        raise RuntimeError(f"fewer than {count} free block majors among {PREFERRED_MAJORS}")
    return free[:count]


def _device_number(major: int, index: int) -> tuple[int, int]:
    # Minor numbers are 20 bits; spread a large index over consecutive majors is not needed
    # below 2**20 devices, so one major per kind is enough.
    return major, index


class BenchNode:
    """`<root>/dev`, `<root>/sys`, `<root>/proc`, `<root>/etc/config.json`, `<root>/dp`."""

    def __init__(self) -> None:
        # Short and under /tmp: a unix socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="pdpb-", dir="/tmp"))
        self.dev = self.root / "dev"
        self.sys = self.root / "sys"
        self.proc = self.root / "proc"
        self.config_dir = self.root / "etc"
        self.config = self.config_dir / "config.json"
        self.plugin_dir = self.root / "dp"
        for directory in (
            self.dev,
            self.sys / "block",
            self.sys / "dev" / "block",
            self.config_dir,
            self.plugin_dir,
        ):
            directory.mkdir(parents=True)
        self.dm_major, self.sd_major, self.root_major = free_majors(3)
        self._write_proc()

    # -- host files ------------------------------------------------------------

    def _write_proc(self) -> None:
        (self.proc / "1").mkdir(parents=True)
        (self.proc / "1" / "mountinfo").write_text(
            f"1 0 {self.root_major}:1 / / rw,relatime shared:1 - ext4 /dev/rootdisk rw\n"
        )
        (self.proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")

    def write_config(self, doc: dict[str, Any]) -> None:
        """Replace the config file atomically (as a ConfigMap update would)."""
        scratch = self.config.with_suffix(".tmp")
        scratch.write_text(json.dumps(doc))
        scratch.replace(self.config)

    # -- devices ---------------------------------------------------------------

    def _node(self, name: str, major: int, minor: int) -> None:
        os.mknod(self.dev / name, stat.S_IFBLK | 0o660, os.makedev(major, minor))

    def _sysfs(self, name: str, major: int, minor: int) -> Path:
        entry = self.sys / "block" / name
        entry.mkdir()
        (entry / "dev").write_text(f"{major}:{minor}\n")
        (entry / "size").write_text(f"{SECTORS}\n")
        (entry / "slaves").mkdir()
        (entry / "holders").mkdir()
        os.symlink(f"../../block/{name}", self.sys / "dev" / "block" / f"{major}:{minor}")
        return entry

    def add_dm(self, index: int, paths: tuple[str, ...] = ()) -> str:
        """`dm-<index>`; with `paths`, a multipath map over those sd disks."""
        name = f"dm-{index}"
        major, minor = _device_number(self.dm_major, index)
        self._node(name, major, minor)
        entry = self._sysfs(name, major, minor)
        (entry / "dm").mkdir()
        (entry / "dm" / "name").write_text(f"mpath{index:05d}\n")
        kind = "mpath" if paths else "CRYPT"
        (entry / "dm" / "uuid").write_text(f"{kind}-3600a0980{index:023x}\n")
        (entry / "dm" / "suspended").write_text("0\n")
        for path in paths:
            os.symlink(f"../../{path}", entry / "slaves" / path)
            os.symlink(f"../../{name}", self.sys / "block" / path / "holders" / name)
        return name

    def add_sd(self, index: int) -> str:
        name = _sd_name(index)
        major, minor = _device_number(self.sd_major, index)
        self._node(name, major, minor)
        entry = self._sysfs(name, major, minor)
        (entry / "device").mkdir()
        (entry / "device" / "state").write_text("running\n")
        (entry / "device" / "wwid").write_text(f"naa.600a0980{index:024x}\n")
        return name

    def remove_dm(self, index: int) -> None:
        name = f"dm-{index}"
        (self.dev / name).unlink()
        (self.sys / "dev" / "block" / f"{self.dm_major}:{index}").unlink()
        shutil.rmtree(self.sys / "block" / name)

    def build_plain(self, count: int) -> None:
        for index in range(count):
            self.add_dm(index)

    def build_san(self, maps: int, paths_per_map: int) -> None:
        for index in range(maps):
            paths = tuple(self.add_sd(index * paths_per_map + p) for p in range(paths_per_map))
            self.add_dm(index, paths)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _sd_name(index: int) -> str:
    """sda … sdz, sdaa … sdzz, sdaaa …: the kernel's disk names."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return "sd" + letters
