"""The loop-device helper the node suite stands on (real devices; needs root, no engine)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.e2e.loopdev import (
    UDEV_LOOP_MODE,
    LoopDevices,
    block_glob,
    free_block,
    loop_numbers_in_use,
)


def test_free_block_skips_blocks_with_any_number_taken() -> None:
    assert free_block([], first=100) == 100
    assert free_block([0, 1, 7, 105], first=100) == 110
    assert free_block(range(100, 130), first=100) == 130
    assert free_block([], first=95) == 100


def test_block_glob_covers_exactly_the_block() -> None:
    assert block_glob(240) == "/dev/loop24[0-9]"
    with pytest.raises(ValueError, match="aligned"):
        block_glob(245)


def test_numbers_in_use_come_from_dev_and_sys_block(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "sys" / "block").mkdir(parents=True)
    for name in ("loop3", "loop-control", "loopy", "sda"):
        (tmp_path / "dev" / name).touch()
    (tmp_path / "sys" / "block" / "loop12").mkdir()

    assert loop_numbers_in_use(tmp_path / "dev", tmp_path / "sys") == {3, 12}


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")


@pytest.fixture
def loops(tmp_path: Path):  # type: ignore[no-untyped-def]
    devices = LoopDevices(tmp_path)
    yield devices
    assert devices.cleanup() == []


@needs_root
@pytest.mark.root
def test_a_created_device_is_a_block_node_showing_its_marker(loops: LoopDevices) -> None:
    device = loops.create(0)

    info = os.stat(device.path)
    assert stat.S_ISBLK(info.st_mode)
    assert os.path.isdir(device.sys_path)
    with open(device.path, "rb") as node:
        assert node.read(len(device.marker)) == device.marker


@needs_root
@pytest.mark.root
def test_created_devices_follow_udevs_rule_unless_asked_not_to(loops: LoopDevices) -> None:
    import grp

    with_rule = loops.create(1)
    without_rule = loops.create(2, udev_rule=False)

    assert os.stat(with_rule.path).st_gid == grp.getgrnam("disk").gr_gid
    assert os.stat(with_rule.path).st_mode & 0o777 == UDEV_LOOP_MODE
    assert os.stat(without_rule.path).st_mode & 0o077 == 0


@needs_root
@pytest.mark.root
def test_remove_deletes_the_node_and_the_sysfs_entry(loops: LoopDevices) -> None:
    device = loops.create(3)

    loops.remove(device)

    assert not os.path.exists(device.path)
    assert not os.path.exists(device.sys_path)
    assert loops.live() == []


@needs_root
@pytest.mark.root
def test_cleanup_removes_every_device_left(tmp_path: Path) -> None:
    devices = LoopDevices(tmp_path)
    made = [devices.create(i) for i in range(3)]

    assert devices.cleanup() == []

    assert [os.path.exists(d.path) for d in made] == [False, False, False]
