"""Real loop devices for the node suite: created, marked, removed, always cleaned up.

Each device is a loop device over a small file whose first bytes are a marker,
so a workload that reads the granted node proves it got *that* device.

The suite takes device numbers in a block of ten that nothing on the host
uses (e.g. loop240…loop249), created with `LOOP_CTL_ADD` on
`/dev/loop-control`. That keeps the plugin's include glob (`/dev/loop24[0-9]`)
away from every other loop device on the host, and lets a device truly
*appear* (its node and `/sys/block` entry are created) and *disappear*
(`losetup -d` only unbinds; `LOOP_CTL_REMOVE` deletes the node and the sysfs
entry), which is what the plugin's hotplug path has to notice.

Nodes are created by devtmpfs as `root:root 0600`. On a real node udev then
applies its default rule for loop devices (group `disk`, mode `0660`); this
host runs no udev, so `create()` applies that rule itself (`udev_rule=False`
leaves the kernel's default, to show what a node without udev gives).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOOP_CONTROL = "/dev/loop-control"
LOOP_CTL_ADD = 0x4C80
LOOP_CTL_REMOVE = 0x4C81
BLOCK_SIZE = 10
BACKING_FILE_BYTES = 1024 * 1024
UDEV_LOOP_MODE = 0o660  # udev's 50-udev-default.rules: block devices in group disk, 0660


class LoopDeviceError(RuntimeError):
    """A loop device could not be made or removed; says which and why."""


def free_block(taken: Iterable[int], *, size: int = BLOCK_SIZE, first: int = 100) -> int:
    """The first multiple of `size` from `first` whose `size` numbers are all free.

    Numbers are aligned to the block so one glob (`/dev/loop24[0-9]`) covers it.
    """
    used = set(taken)
    base = ((first + size - 1) // size) * size
    while any(n in used for n in range(base, base + size)):
        base += size
    return base


def block_glob(base: int, *, size: int = BLOCK_SIZE) -> str:
    """A host-path glob matching exactly `/dev/loop<base>` … `/dev/loop<base+size-1>`."""
    if size != 10 or base % 10:
        raise ValueError(f"block {base}+{size}: only aligned blocks of ten have a one-glob form")
    return f"/dev/loop{base // 10}[0-9]"


def loop_numbers_in_use(dev_root: Path = Path("/dev"), sys_root: Path = Path("/sys")) -> set[int]:
    """Loop device numbers that have a node in /dev or an entry in /sys/block."""
    numbers: set[int] = set()
    for directory in (dev_root, sys_root / "block"):
        for name in _names(directory):
            suffix = name[len("loop") :]
            if name.startswith("loop") and suffix.isdigit():
                numbers.add(int(suffix))
    return numbers


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


@dataclass(frozen=True)
class LoopDevice:
    number: int
    backing_file: Path
    marker: bytes

    @property
    def path(self) -> str:
        return f"/dev/loop{self.number}"

    @property
    def sys_path(self) -> str:
        return f"/sys/block/loop{self.number}"


class LoopDevices:
    """Makes loop devices and remembers them so `cleanup()` can remove every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.base = free_block(loop_numbers_in_use())
        self._live: dict[int, LoopDevice] = {}

    @property
    def glob(self) -> str:
        """The include glob that covers this instance's whole block of numbers."""
        return block_glob(self.base)

    def number(self, index: int) -> int:
        if not 0 <= index < BLOCK_SIZE:
            raise ValueError(f"loop index {index} is outside the block of {BLOCK_SIZE}")
        return self.base + index

    def create(self, index: int, *, udev_rule: bool = True) -> LoopDevice:
        """Add `/dev/loop<base+index>`, bind it to a fresh marked file, return it."""
        number = self.number(index)
        marker = f"pdp-e2e marker loop{number} {os.urandom(6).hex()}\n".encode()
        backing = self.workdir / f"loop{number}.img"
        with open(backing, "wb") as handle:
            handle.write(marker)
            handle.truncate(BACKING_FILE_BYTES)
        device = LoopDevice(number, backing, marker)
        with _control() as control:
            try:
                fcntl.ioctl(control, LOOP_CTL_ADD, number)
            except OSError as error:
                raise LoopDeviceError(
                    f"LOOP_CTL_ADD {number} on {LOOP_CONTROL} failed: {error.strerror}"
                ) from error
        self._live[number] = device
        _wait_for(lambda: os.path.exists(device.path), 2.0, f"{device.path} to appear")
        result = subprocess.run(
            ["losetup", device.path, str(backing)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise LoopDeviceError(f"losetup {device.path} {backing}: {result.stderr.strip()}")
        if udev_rule:
            os.chown(device.path, 0, grp.getgrnam("disk").gr_gid)
            os.chmod(device.path, UDEV_LOOP_MODE)
        return device

    def remove(self, device: LoopDevice) -> None:
        """Unbind (`losetup -d`) and delete the device (`LOOP_CTL_REMOVE`), node included."""
        subprocess.run(["losetup", "-d", device.path], capture_output=True, check=False)
        deadline = time.monotonic() + 5.0
        with _control() as control:
            while True:
                try:
                    fcntl.ioctl(control, LOOP_CTL_REMOVE, device.number)
                    break
                except OSError as error:
                    if error.errno == errno.ENODEV:
                        break  # already gone
                    # EBUSY while the unbind settles or a container still holds it open.
                    if error.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise LoopDeviceError(
                            f"LOOP_CTL_REMOVE {device.number} ({device.path}) failed: "
                            f"{error.strerror}; the device is left in place"
                        ) from error
                    time.sleep(0.05)
        self._live.pop(device.number, None)
        _wait_for(lambda: not os.path.exists(device.path), 2.0, f"{device.path} to go")
        device.backing_file.unlink(missing_ok=True)

    def live(self) -> list[LoopDevice]:
        return list(self._live.values())

    def cleanup(self) -> list[str]:
        """Remove every device this instance made; returns the problems, never raises."""
        problems: list[str] = []
        for device in list(self._live.values()):
            try:
                self.remove(device)
            except (LoopDeviceError, OSError) as error:
                problems.append(str(error))
        return problems


class _control:
    """`/dev/loop-control`, opened for one ioctl sequence."""

    def __enter__(self) -> int:
        self.fd = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LoopDeviceError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def node_group(path: str) -> int:
    """The group owning a device node on the host (what the runtime copies in)."""
    return os.stat(path).st_gid


def stat_mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


@contextmanager
def mounted_file_system(device: LoopDevice, mount_point: Path) -> Iterator[Path]:
    """ext4 made on the device and mounted on this machine (the host) at `mount_point`,
    unmounted on the way out whatever happens. Overwrites the device's marker."""
    mount_point.mkdir(parents=True, exist_ok=True)
    for command in (
        ["mkfs.ext4", "-q", "-F", device.path],
        ["mount", device.path, str(mount_point)],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LoopDeviceError(f"{' '.join(command)}: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        unmount(mount_point)


def unmount(mount_point: Path) -> None:
    """Unmount if mounted (a second call is harmless)."""
    if os.path.ismount(mount_point):
        subprocess.run(["umount", str(mount_point)], capture_output=True, check=False)
