"""The host-use guard on fake /proc and /sys trees (real files), on this machine, and the
built-in deny list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from power_device_plugin import host_use
from power_device_plugin.host_use import (
    HostUse,
    denied_char_device,
    denied_reason,
    first_denied_reason,
    parse_mountinfo,
    read_host_use,
)

ROOT_FS = "27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw"
VIRTUAL_FS = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw\n"
    "60 27 0:50 / /var/lib/containers/overlay/merged rw - overlay overlay rw\n"
)
SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


class FakeTrees:
    """A host's ``/proc`` (mountinfo, swaps) and ``/sys/block`` under a temporary directory,
    with or without the ``/sys/dev/block/M:m`` links a real sysfs has."""

    def __init__(self, root: Path, dev_block_links: bool = False) -> None:
        self.proc = root / "proc"
        self.sys = root / "sys"
        (self.proc / "1").mkdir(parents=True)
        (self.sys / "block").mkdir(parents=True)
        self.dev_block_links = dev_block_links
        if dev_block_links:
            (self.sys / "dev" / "block").mkdir(parents=True)
        self.swaps("")

    def _dev_block_link(self, dev: str, entry: Path) -> None:
        if self.dev_block_links:
            (self.sys / "dev" / "block" / dev).symlink_to(
                os.path.relpath(entry, self.sys / "dev" / "block")
            )

    def mountinfo(self, lines: str, pid: str = "1") -> None:
        (self.proc / pid).mkdir(exist_ok=True)
        (self.proc / pid / "mountinfo").write_text(lines + "\n")

    def swaps(self, lines: str) -> None:
        (self.proc / "swaps").write_text(SWAPS_HEADER + lines)

    def disk(self, name: str, dev: str, partitions: dict[str, str] | None = None) -> None:
        entry = self.sys / "block" / name
        entry.mkdir()
        (entry / "dev").write_text(dev + "\n")
        self._dev_block_link(dev, entry)
        for sub in ("holders", "slaves"):
            (entry / sub).mkdir()
        for part, part_dev in (partitions or {}).items():
            (entry / part).mkdir()
            (entry / part / "partition").write_text("1\n")
            (entry / part / "dev").write_text(part_dev + "\n")
            (entry / part / "holders").mkdir()
            self._dev_block_link(part_dev, entry / part)

    def dm(self, name: str, dev: str, mapper_name: str, slaves: tuple[str, ...] = ()) -> None:
        """A dm device built on ``slaves``, linked both ways as the kernel does
        (dm-N/slaves/<s> and <s>/holders/dm-N), as files rather than symlinks."""
        self.disk(name, dev)
        (self.sys / "block" / name / "dm").mkdir()
        (self.sys / "block" / name / "dm" / "name").write_text(mapper_name + "\n")
        for slave in slaves:
            self.build_on(name, slave)

    def build_on(self, holder: str, slave: str) -> None:
        """``holder`` built on ``slave``: both sysfs entries exist already."""
        (self.sys / "block" / holder / "slaves" / slave).write_text("")
        self.holders_dir(slave).mkdir(exist_ok=True)
        (self.holders_dir(slave) / holder).write_text("")

    def holders_dir(self, name: str) -> Path:
        direct = self.sys / "block" / name
        if direct.is_dir():
            return direct / "holders"
        (parent,) = (d for d in (self.sys / "block").iterdir() if (d / name).is_dir())
        return parent / name / "holders"

    def read(self) -> HostUse:
        return read_host_use(self.proc, self.sys)


@pytest.fixture(params=[False, True], ids=["block-listing", "dev-block-walk"])
def trees(tmp_path: Path, request: pytest.FixtureRequest) -> FakeTrees:
    """Every guard test runs on both readings of sysfs: they must give the same answers."""
    return FakeTrees(tmp_path, dev_block_links=request.param)


def test_a_mounted_partition_marks_itself_its_disk_and_sibling_partitions(
    trees: FakeTrees,
) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1", "sda2": "8:2"})
    trees.disk("sdb", "8:16", {"sdb1": "8:17"})
    trees.mountinfo("28 27 8:1 / /boot rw - xfs /dev/sda1 rw")
    use = trees.read()
    assert use.error == ""
    assert use.in_use == {
        (8, 1): "mounted at /boot",
        (8, 0): "disk of sda1 (mounted at /boot)",
        (8, 2): "partition of sda (sda1 mounted at /boot)",
    }
    assert use.reason_for((8, 16)) is None
    assert use.reason_for((8, 17)) is None


def test_every_mount_counts_and_the_shortest_mount_point_names_it(trees: FakeTrees) -> None:
    trees.disk("vda", "252:0")
    trees.disk("vdb", "252:16")
    trees.mountinfo(
        "42 27 252:0 /var/lib/docker /var/lib/docker rw - ext4 /dev/vda rw\n"
        "27 1 252:0 / / rw - ext4 /dev/vda rw\n"
        "90 27 252:16 / /var/lib/kubelet rw - xfs /dev/vdb rw"
    )
    assert trees.read().in_use == {
        (252, 0): "mounted at /",
        (252, 16): "mounted at /var/lib/kubelet",
    }


def test_mount_points_are_octal_unescaped(trees: FakeTrees) -> None:
    trees.disk("sdc", "8:32")
    trees.mountinfo(ROOT_FS + "\n" + r"70 27 8:32 / /mnt/my\040disk\011x rw - ext4 /dev/sdc rw")
    assert trees.read().reason_for((8, 32)) == "mounted at /mnt/my disk\tx"


def test_virtual_file_systems_with_major_0_are_ignored(trees: FakeTrees) -> None:
    trees.mountinfo(ROOT_FS + "\n" + VIRTUAL_FS)
    in_use = trees.read().in_use
    assert set(in_use) == {(8, 1)}


def test_btrfs_anonymous_device_is_found_through_its_source(trees: FakeTrees) -> None:
    trees.disk("nvme0n1", "259:0", {"nvme0n1p2": "259:2"})
    trees.mountinfo("27 1 0:31 /@ / rw - btrfs /dev/nvme0n1p2 rw,subvol=/@\n" + VIRTUAL_FS)
    use = trees.read()
    assert use.reason_for((259, 2)) == "mounted at /"
    assert use.reason_for((0, 31)) is None


def test_a_swap_partition_is_marked_by_its_path(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1", "sda2": "8:2"})
    trees.disk("sdb", "8:16", {"sdb1": "8:17"})
    trees.mountinfo(ROOT_FS)
    trees.swaps("/dev/sdb1                               partition\t8388604\t\t0\t\t-2\n")
    use = trees.read()
    assert use.reason_for((8, 17)) == "active swap (/dev/sdb1)"
    assert use.reason_for((8, 16)) == "disk of sdb1 (active swap (/dev/sdb1))"


def test_a_swap_on_a_mapper_name_is_marked_through_dm_name(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1", "sda3": "8:3"})
    trees.dm("dm-1", "253:1", "rhel-swap", slaves=("sda3",))
    trees.mountinfo(ROOT_FS)
    trees.swaps("/dev/mapper/rhel-swap                   partition\t4194300\t\t0\t\t-2\n")
    use = trees.read()
    assert use.reason_for((253, 1)) == "active swap (/dev/mapper/rhel-swap)"
    assert use.reason_for((8, 3)) == "under dm-1 (active swap (/dev/mapper/rhel-swap))"


def test_a_swap_file_adds_nothing_beyond_its_mounted_file_system(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1"})
    trees.disk("sdb", "8:16")
    trees.mountinfo(ROOT_FS)
    trees.swaps("/swap\\040file                              file\t\t1048572\t\t0\t\t-2\n")
    use = trees.read()
    assert use.error == ""
    assert set(use.in_use) == {(8, 0), (8, 1)}


def test_a_swap_partition_unknown_to_sysfs_fails_closed(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1"})
    trees.mountinfo(ROOT_FS)
    trees.swaps("/dev/sdz9                               partition\t8388604\t\t0\t\t-2\n")
    use = trees.read()
    assert "/dev/sdz9" in use.error
    assert use.reason_for((8, 99)) == use.error


def test_a_mounted_multipath_map_marks_every_path_under_it(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0")
    trees.disk("sdb", "8:16")
    trees.disk("sdc", "8:32")
    trees.dm("dm-0", "253:0", "mpatha", slaves=("sda", "sdb"))
    trees.mountinfo("27 1 253:0 / /sysroot rw - xfs /dev/mapper/mpatha rw")
    use = trees.read()
    assert use.reason_for((253, 0)) == "mounted at /sysroot"
    assert use.reason_for((8, 0)) == "under dm-0 (mounted at /sysroot)"
    assert use.reason_for((8, 16)) == "under dm-0 (mounted at /sysroot)"
    assert use.reason_for((8, 32)) is None


def test_holders_on_top_of_a_used_device_are_marked_recursively(trees: FakeTrees) -> None:
    trees.disk("sdb", "8:16", {"sdb1": "8:17"})
    trees.dm("dm-2", "253:2", "vg-lv", slaves=("sdb1",))
    trees.dm("dm-3", "253:3", "vg-lv-crypt", slaves=("dm-2",))
    trees.mountinfo(ROOT_FS)
    trees.swaps("/dev/sdb1                               partition\t8388604\t\t0\t\t-2\n")
    use = trees.read()
    assert use.reason_for((253, 2)) == "holder of sdb1 (active swap (/dev/sdb1))"
    assert use.reason_for((253, 3)) == "holder of dm-2 (sdb1 active swap (/dev/sdb1))"


def test_sysfs_relation_cycles_terminate(trees: FakeTrees) -> None:
    trees.dm("dm-0", "253:0", "a")
    trees.dm("dm-1", "253:1", "b", slaves=("dm-0",))
    trees.build_on("dm-0", "dm-1")
    trees.dm("dm-2", "253:2", "c")
    trees.build_on("dm-2", "dm-2")
    trees.mountinfo("27 1 253:0 / / rw - xfs /dev/dm-0 rw")
    use = trees.read()
    assert set(use.in_use) == {(253, 0), (253, 1)}


def test_real_sysfs_symlinks_for_holders_and_slaves_are_read_by_name(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0")
    trees.disk("dm-0", "253:0")
    (trees.sys / "block" / "dm-0" / "slaves" / "sda").symlink_to("../../sda")
    trees.mountinfo("27 1 253:0 / / rw - xfs /dev/dm-0 rw")
    assert trees.read().reason_for((8, 0)) == "under dm-0 (mounted at /)"


def _real_sysfs_layout(sys_root: Path) -> None:
    """Devices where a real sysfs keeps them (``devices/...``), reached through
    ``dev/block``, ``block`` and ``class/block`` links, ``slaves/``/``holders/`` as links
    to the devices' directories: sda (sda1, sda2) and sdb under multipath dm-0, and an
    unrelated sdc."""
    pci = sys_root / "devices" / "pci0000:00" / "host0"
    virtual = sys_root / "devices" / "virtual" / "block"
    for directory in (sys_root / "dev" / "block", sys_root / "block", sys_root / "class" / "block"):
        directory.mkdir(parents=True, exist_ok=True)

    def device(directory: Path, dev: str, partition: bool = False) -> None:
        for sub in ("holders", "slaves"):
            (directory / sub).mkdir(parents=True)
        (directory / "dev").write_text(dev + "\n")
        if partition:
            (directory / "partition").write_text("1\n")
        for link_dir, name in (
            (sys_root / "dev" / "block", dev),
            (sys_root / "class" / "block", directory.name),
        ):
            (link_dir / name).symlink_to(os.path.relpath(directory, link_dir))
        if not partition:
            link_dir = sys_root / "block"
            (link_dir / directory.name).symlink_to(os.path.relpath(directory, link_dir))

    device(pci / "sda", "8:0")
    device(pci / "sda" / "sda1", "8:1", partition=True)
    device(pci / "sda" / "sda2", "8:2", partition=True)
    device(pci / "sdb", "8:16")
    device(pci / "sdc", "8:32")
    device(virtual / "dm-0", "253:0")
    (virtual / "dm-0" / "dm").mkdir()
    (virtual / "dm-0" / "dm" / "name").write_text("mpatha\n")
    for path in ("sda", "sdb"):
        (virtual / "dm-0" / "slaves" / path).symlink_to(
            os.path.relpath(pci / path, virtual / "dm-0" / "slaves")
        )
        (pci / path / "holders" / "dm-0").symlink_to(
            os.path.relpath(virtual / "dm-0", pci / path / "holders")
        )


def test_the_walk_follows_a_real_sysfs_layout_from_a_mounted_partition(tmp_path: Path) -> None:
    trees = FakeTrees(tmp_path)
    _real_sysfs_layout(trees.sys)
    trees.mountinfo("28 27 8:1 / /boot rw - xfs /dev/sda1 rw")
    use = trees.read()
    assert use.error == ""
    assert use.in_use == {
        (8, 1): "mounted at /boot",
        (8, 0): "disk of sda1 (mounted at /boot)",
        (8, 2): "partition of sda (sda1 mounted at /boot)",
        (253, 0): "holder of sda (sda1 mounted at /boot)",
        (8, 16): "under dm-0 (sda1 mounted at /boot)",
    }


def test_the_walk_maps_a_mapper_swap_and_a_btrfs_source_by_name(tmp_path: Path) -> None:
    trees = FakeTrees(tmp_path)
    _real_sysfs_layout(trees.sys)
    trees.mountinfo("27 1 0:31 /@ / rw - btrfs /dev/sdc rw,subvol=/@")
    trees.swaps("/dev/mapper/mpatha                      partition\t4194300\t\t0\t\t-2\n")
    use = trees.read()
    assert use.error == ""
    assert use.reason_for((8, 32)) == "mounted at /"
    assert use.reason_for((253, 0)) == "active swap (/dev/mapper/mpatha)"
    assert use.reason_for((8, 1)) == "partition of sda (dm-0 active swap (/dev/mapper/mpatha))"


def test_the_walk_reads_only_the_stack_of_used_devices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trees = FakeTrees(tmp_path, dev_block_links=True)
    trees.disk("sda", "8:0", {"sda1": "8:1"})
    trees.disk("sdb", "8:16")
    trees.dm("dm-0", "253:0", "mpatha", slaves=("sda",))
    for index in range(20):  # the SAN paths and maps the host does not use
        trees.disk(f"sdz{index}", f"65:{index * 16}")
        trees.dm(f"dm-{index + 10}", f"253:{index + 10}", f"other{index}", slaves=(f"sdz{index}",))
    trees.mountinfo(ROOT_FS)
    touched: list[str] = []
    real_list_dir, real_read_text = host_use._list_dir, host_use._read_text

    def listing(path: str) -> list[str]:
        touched.append(path)
        return real_list_dir(path)

    def reading(path: str) -> str | None:
        touched.append(path)
        return real_read_text(path)

    monkeypatch.setattr(host_use, "_list_dir", listing)
    monkeypatch.setattr(host_use, "_read_text", reading)
    use = trees.read()
    assert set(use.in_use) == {(8, 1), (8, 0), (253, 0)}
    read_devices = {Path(path).relative_to(trees.sys / "block").parts[0] for path in touched}
    assert read_devices == {"sda", "dm-0"}


def test_missing_mountinfo_fails_closed_for_every_device(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0")
    use = trees.read()
    assert use.error.startswith("host mount table unreadable: ")
    assert str(trees.proc / "1" / "mountinfo") in use.error
    assert "No such file or directory" in use.error
    assert use.reason_for((8, 0)) == use.error
    assert use.reason_for((99, 99)) == use.error
    assert use.reason_for(None) == use.error


def test_mountinfo_falls_back_to_self_when_pid_1_is_unreadable(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1"})
    trees.mountinfo(ROOT_FS, pid="self")
    use = trees.read()
    assert use.error == ""
    assert use.reason_for((8, 1)) == "mounted at /"


def test_a_mount_table_that_is_a_directory_fails_closed(trees: FakeTrees) -> None:
    (trees.proc / "1" / "mountinfo").mkdir()
    (trees.proc / "self" / "mountinfo").mkdir(parents=True)
    use = trees.read()
    assert "Is a directory" in use.error


def test_a_mount_table_without_any_mount_fails_closed(trees: FakeTrees) -> None:
    trees.mountinfo("garbage\n\n")
    assert trees.read().error.startswith("host mount table has no mounts: ")


def test_missing_swaps_fails_closed_but_keeps_the_mounts(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1"})
    trees.mountinfo(ROOT_FS)
    (trees.proc / "swaps").unlink()
    use = trees.read()
    assert use.error.startswith("host swap table unreadable: ")
    assert use.in_use[(8, 1)] == "mounted at /"
    assert use.reason_for((8, 40)) == use.error


def test_vanished_or_odd_sysfs_entries_are_skipped(trees: FakeTrees) -> None:
    trees.disk("sda", "8:0", {"sda1": "8:1"})
    (trees.sys / "block" / "sda" / "dev").unlink()  # gone between listdir and read
    (trees.sys / "block" / "sdx").mkdir()  # no dev at all
    (trees.sys / "block" / "sdy").mkdir()
    (trees.sys / "block" / "sdy" / "dev").write_text("not a number\n")
    (trees.sys / "block" / "junk").write_text("")
    trees.mountinfo(ROOT_FS + "\nshort line\n1 2 x:y / /bad rw - ext4 /dev/x rw")
    use = trees.read()
    assert use.in_use == {(8, 1): "mounted at /"}


def test_a_reason_is_none_only_for_devices_the_host_does_not_use() -> None:
    use = HostUse({(8, 0): "mounted at /"})
    assert use.reason_for((8, 0)) == "mounted at /"
    assert use.reason_for((8, 16)) is None
    assert use.reason_for(None) is None


def test_mountinfo_optional_fields_do_not_hide_the_source() -> None:
    (mount,) = parse_mountinfo(
        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue"
    )
    assert (mount.rdev, mount.mount_point, mount.source) == ((98, 0), "/mnt2", "/dev/root")


def _root_device_from_mountinfo() -> tuple[int, int]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            major, minor = (int(n) for n in fields[2].split(":"))
            if fields[4] == "/" and major != 0:
                return major, minor
    pytest.fail("this machine's / is not on a block device (major 0); pick another check")


def test_this_machines_root_file_system_device_is_in_use() -> None:
    root = _root_device_from_mountinfo()
    use = read_host_use(Path("/proc"), Path("/sys"))
    assert use.error == ""
    assert use.reason_for(root) is not None
    assert "/" in (use.in_use[root])
    # Loop devices nobody mounted are not the host's.
    loop_free = [
        (7, minor)
        for minor in range(8)
        if os.path.exists(f"/sys/block/loop{minor}")
        and not os.path.exists(f"/sys/block/loop{minor}/loop/backing_file")
    ]
    for rdev in loop_free:
        if rdev != root:
            assert use.reason_for(rdev) is None


# --- the built-in deny list ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host_path",
    [
        "/dev/mem",
        "/dev/kmem",
        "/dev/port",
        "/dev/kmsg",
        "/dev/mapper/control",
        "/dev/cpu/3/msr",
        "/dev/cpu/0/cpuid",
        "/dev/nvram",
        "/dev/console",
        "/dev/tty",
        "/dev/tty5",
        "/dev/ttyS0",
        "/dev/ptmx",
        "/dev/pts/0",
        "/dev/hvc0",
        "/dev/loop-control",
        "/dev/btrfs-control",
        "/dev/fuse",
        "/dev/kvm",
        "/dev/vhost-net",
        "/dev/vhost-vsock",
        "/dev/vfio/vfio",
        "/dev/vfio/7",
        "/dev/net/tun",
        "/dev/watchdog",
        "/dev/watchdog0",
        "/dev/snapshot",
        "/dev/uinput",
        "/dev/userfaultfd",
        "/dev/hwrng",
        "/dev/rtc",
        "/dev/rtc0",
        "/dev/mcelog",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tpmrm0",
        "/dev/papr-vpd",
        "/dev/vmcp",
    ],
)
def test_the_deny_list_refuses_host_control_devices(host_path: str) -> None:
    reason = denied_reason(host_path)
    assert reason is not None
    assert reason.startswith(f"built-in deny list: {host_path} (")


@pytest.mark.parametrize(
    "host_path",
    [
        "/dev/dm-0",
        "/dev/sda",
        "/dev/sda1",
        "/dev/vda",
        "/dev/nvme0n1",
        "/dev/crypto/nx-gzip",
        "/dev/mapper/mpatha",
        "/dev/mapper/controller-lv",
        "/dev/cpu/3/msr-shadow",
        "/dev/memory",
        "/dev/dasda",
    ],
)
def test_the_deny_list_leaves_storage_and_accelerators_alone(host_path: str) -> None:
    assert denied_reason(host_path) is None


def test_the_deny_list_sees_through_path_spelling() -> None:
    assert denied_reason("/dev//mem") == "built-in deny list: /dev/mem (physical memory)"
    assert denied_reason("/dev/./cpu/1/../2/msr") is not None
    assert denied_reason("//dev/kvm") is not None


def test_any_denied_name_of_a_device_denies_it() -> None:
    assert first_denied_reason(["/dev/sdq", "/dev/disk/by-id/x", "/dev/kvm"]) is not None
    assert first_denied_reason(["/dev/dm-0", "/dev/mapper/mpatha"]) is None


@pytest.mark.parametrize(
    ("rdev", "denied"),
    [
        ((1, 1), True),  # mem
        ((1, 3), True),  # null
        ((4, 1), True),  # tty1
        ((136, 4), True),  # pts/4
        ((202, 0), True),  # cpu/0/msr
        ((10, 232), True),  # kvm
        ((10, 236), True),  # mapper/control
        ((10, 58), False),  # a dynamic misc minor
        ((248, 0), False),  # e.g. nx-gzip's dynamic major
        ((8, 0), False),
    ],
)
def test_denied_character_devices_are_caught_by_number(rdev: tuple[int, int], denied: bool) -> None:
    assert (denied_char_device(rdev) is not None) is denied
