from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.unit.conftest import FakeHost, config_of, needs_root

from power_device_plugin.discovery import (
    EXCLUDED,
    REFUSED,
    Candidate,
    ScanResult,
    host_glob_match,
    scan,
    selected_by_config,
)
from power_device_plugin.host_use import HostUse, read_host_use

NOT_USED = HostUse(in_use={})


def by_host_path(result: ScanResult) -> dict[str, Candidate]:
    return {c.host_path: c for c in result.candidates}


def advertised_paths(result: ScanResult) -> list[str]:
    return [c.host_path for c in result.advertised()]


def test_without_includes_every_sysfs_block_device_is_advertised(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1", "sda2"))
    host.dm("dm-0", "mpatha")
    result = scan(config_of(), host.dev, host.sys, NOT_USED)
    assert sorted(advertised_paths(result)) == ["/dev/dm-0", "/dev/sda", "/dev/sda1", "/dev/sda2"]
    dm = by_host_path(result)["/dev/dm-0"]
    assert dm.rule == "sysfs block"
    assert dm.kind == "block"
    assert "/dev/mapper/mpatha" in dm.aliases


def test_candidates_carry_the_path_under_dev_root_and_the_host_path(tmp_path: Path) -> None:
    needs_root()
    host = FakeHost(tmp_path, dev_name="hostdev")
    host.dm("dm-0", "mpatha")
    (only,) = scan(config_of(), host.dev, host.sys, NOT_USED).candidates
    assert only.path == str(host.dev / "dm-0")
    assert only.host_path == "/dev/dm-0"


def test_exclude_matches_host_paths(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1",))
    host.disk("sdb")
    result = scan(config_of(exclude_devices=["/dev/sda*"]), host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == ["/dev/sdb"]
    sda1 = by_host_path(result)["/dev/sda1"]
    assert (sda1.verdict, sda1.rule) == (EXCLUDED, "exclude /dev/sda*")


def test_exclude_matches_the_mapper_name_of_a_dm_device(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    host.dm("dm-1", "rootvg-root")
    result = scan(config_of(exclude_devices=["/dev/mapper/rootvg-*"]), host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == ["/dev/dm-0"]
    assert by_host_path(result)["/dev/dm-1"].rule == "exclude /dev/mapper/rootvg-*"


def test_includes_replace_the_block_listing_and_report_what_they_miss(host: FakeHost) -> None:
    host.disk("sda")
    host.dm("dm-0", "mpatha")
    host.char_node("/dev/accel/7")
    result = scan(
        config_of(include_devices=["/dev/dm-*", "/dev/accel/7"]), host.dev, host.sys, NOT_USED
    )
    assert advertised_paths(result) == ["/dev/dm-0", "/dev/accel/7"]
    found = by_host_path(result)
    assert found["/dev/dm-0"].rule == "include /dev/dm-*"
    assert found["/dev/accel/7"].kind == "char"
    assert (found["/dev/sda"].verdict, found["/dev/sda"].rule) == (EXCLUDED, "include-devices")


def test_include_glob_star_does_not_cross_directories(host: FakeHost) -> None:
    host.char_node("/dev/accel/7")
    result = scan(config_of(include_devices=["/dev/a*"]), host.dev, host.sys, NOT_USED)
    assert by_host_path(result)["/dev/accel"].verdict == REFUSED
    assert advertised_paths(result) == []


def test_include_of_mapper_names_grants_the_mapper_path_and_knows_its_target(
    host: FakeHost,
) -> None:
    host.dm("dm-3", "mpathc")
    result = scan(config_of(include_devices=["/dev/mapper/*"]), host.dev, host.sys, NOT_USED)
    (candidate,) = result.advertised()
    assert candidate.host_path == "/dev/mapper/mpathc"
    assert "/dev/dm-3" in candidate.aliases
    excluded = scan(
        config_of(include_devices=["/dev/mapper/*"], exclude_devices=["/dev/dm-3"]),
        host.dev,
        host.sys,
        NOT_USED,
    )
    assert advertised_paths(excluded) == []


def test_include_glob_matching_a_dm_node_still_excludes_by_mapper_name(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    host.dm("dm-1", "mpathb")
    config = config_of(include_devices=["/dev/dm-*"], exclude_devices=["/dev/mapper/mpathb"])
    assert advertised_paths(scan(config, host.dev, host.sys, NOT_USED)) == ["/dev/dm-0"]


def test_the_same_device_reached_twice_is_advertised_once(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    config = config_of(include_devices=["/dev/dm-*", "/dev/mapper/*"])
    result = scan(config, host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == ["/dev/dm-0"]
    twin = by_host_path(result)["/dev/mapper/mpatha"]
    assert (twin.verdict, twin.reason) == (EXCLUDED, "same device as /dev/dm-0")


def test_nx_gzip_adds_its_node_when_enabled(host: FakeHost) -> None:
    host.char_node("/dev/crypto/nx-gzip")
    assert advertised_paths(scan(config_of(), host.dev, host.sys, NOT_USED)) == []
    result = scan(config_of(nx_gzip=True), host.dev, host.sys, NOT_USED)
    (candidate,) = result.advertised()
    assert (candidate.host_path, candidate.rule, candidate.kind) == (
        "/dev/crypto/nx-gzip",
        "nx-gzip",
        "char",
    )


def test_nx_gzip_is_added_alongside_includes_and_obeys_excludes(host: FakeHost) -> None:
    host.char_node("/dev/crypto/nx-gzip")
    host.dm("dm-0", "mpatha")
    config = config_of(nx_gzip=True, include_devices=["/dev/dm-*"])
    assert advertised_paths(scan(config, host.dev, host.sys, NOT_USED)) == [
        "/dev/dm-0",
        "/dev/crypto/nx-gzip",
    ]
    config = config_of(nx_gzip=True, exclude_devices=["/dev/crypto/*"])
    assert advertised_paths(scan(config, host.dev, host.sys, NOT_USED)) == ["/dev/dm-0"]


def test_missing_nx_gzip_node_is_reported(host: FakeHost) -> None:
    (candidate,) = scan(config_of(nx_gzip=True), host.dev, host.sys, NOT_USED).candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "does not exist")


def test_sysfs_device_without_a_node_is_refused(host: FakeHost) -> None:
    host.disk("sdz", node=False)
    (candidate,) = scan(config_of(), host.dev, host.sys, NOT_USED).candidates
    assert (candidate.host_path, candidate.verdict, candidate.reason) == (
        "/dev/sdz",
        REFUSED,
        "does not exist",
    )


def test_literal_include_that_is_missing_is_reported(host: FakeHost) -> None:
    (candidate,) = scan(
        config_of(include_devices=["/dev/nvme0n1"]), host.dev, host.sys, NOT_USED
    ).candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "does not exist")


def test_regular_file_is_refused(host: FakeHost) -> None:
    host.regular_file("/dev/fake0")
    (candidate,) = scan(
        config_of(include_devices=["/dev/fake*"]), host.dev, host.sys, NOT_USED
    ).candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "not a device node (regular file)")


def test_directory_is_refused(host: FakeHost) -> None:
    host.directory("/dev/fakedir")
    (candidate,) = scan(
        config_of(include_devices=["/dev/fake*"]), host.dev, host.sys, NOT_USED
    ).candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "not a device node (directory)")


def test_dotdot_escape_from_dev_root_is_refused(host: FakeHost) -> None:
    outside = host.dev.parent / "etc"
    outside.mkdir()
    (outside / "shadow").write_text("secret\n")
    config = config_of(include_devices=["/dev/../etc/*"])
    (candidate,) = scan(config, host.dev, host.sys, NOT_USED).candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "path escapes dev-root")
    assert candidate.host_path == "/etc/shadow"


def test_dangling_symlink_is_refused(host: FakeHost) -> None:
    host.link("/dev/mapper/gone", "../dm-9")
    (candidate,) = scan(
        config_of(include_devices=["/dev/mapper/*"]), host.dev, host.sys, NOT_USED
    ).candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "dangling symlink")


def test_relative_symlink_escaping_dev_root_is_refused(host: FakeHost) -> None:
    outside = host.dev.parent / "outside-node"
    os.mknod(outside, stat.S_IFBLK | 0o600, os.makedev(8, 99))
    host.link("/dev/sneaky", "../outside-node")
    (candidate,) = scan(
        config_of(include_devices=["/dev/sneaky"]), host.dev, host.sys, NOT_USED
    ).candidates
    assert candidate.verdict == REFUSED
    assert candidate.reason.startswith("symlink escapes dev-root")


def test_absolute_symlink_outside_host_dev_is_refused(host: FakeHost) -> None:
    host.link("/dev/passwd", "/etc/passwd")
    (candidate,) = scan(
        config_of(include_devices=["/dev/passwd"]), host.dev, host.sys, NOT_USED
    ).candidates
    assert candidate.verdict == REFUSED
    assert candidate.reason == "symlink escapes dev-root (points to /etc/passwd)"


def test_absolute_symlink_in_host_terms_is_followed_inside_dev_root(host: FakeHost) -> None:
    host.block_node("/dev/dm-5")
    host.link("/dev/disk/by-id/wwn-1", "/dev/dm-5")
    result = scan(config_of(include_devices=["/dev/disk/by-id/*"]), host.dev, host.sys, NOT_USED)
    (candidate,) = result.advertised()
    assert candidate.host_path == "/dev/disk/by-id/wwn-1"
    assert "/dev/dm-5" in candidate.aliases


def test_directory_symlink_escaping_dev_root_is_refused(host: FakeHost) -> None:
    outside = host.dev.parent / "elsewhere"
    outside.mkdir()
    os.mknod(outside / "node", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    host.link("/dev/linked", "../elsewhere")
    result = scan(config_of(include_devices=["/dev/linked/*"]), host.dev, host.sys, NOT_USED)
    (candidate,) = result.candidates
    assert (candidate.verdict, candidate.reason) == (REFUSED, "symlink escapes dev-root")


def test_host_glob_match_keeps_star_within_one_component() -> None:
    assert host_glob_match("/dev/dm-*", "/dev/dm-10")
    assert not host_glob_match("/dev/*", "/dev/mapper/mpatha")
    assert host_glob_match("/dev/mapper/mpath[ab]", "/dev/mapper/mpathb")


def test_selected_by_config_follows_includes_excludes_and_sources() -> None:
    assert selected_by_config(config_of(), "/dev/sda", (), "sysfs")
    assert not selected_by_config(config_of(), "/dev/accel/7", (), "include")
    assert not selected_by_config(config_of(exclude_devices=["/dev/sd*"]), "/dev/sda", (), "sysfs")
    with_includes = config_of(include_devices=["/dev/dm-*"])
    assert selected_by_config(with_includes, "/dev/dm-0", (), "include")
    assert not selected_by_config(with_includes, "/dev/sda", (), "sysfs")
    assert not selected_by_config(
        config_of(exclude_devices=["/dev/mapper/x"]), "/dev/dm-0", ("/dev/mapper/x",), "sysfs"
    )
    assert selected_by_config(config_of(nx_gzip=True), "/dev/crypto/nx-gzip", (), "nx-gzip")
    assert not selected_by_config(config_of(), "/dev/crypto/nx-gzip", (), "nx-gzip")


# --- the host's own disks -------------------------------------------------------------


def test_a_block_device_the_host_uses_is_refused_naming_the_use(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1",))
    host.disk("sdb")
    use = HostUse(in_use={host.number_of("/dev/sda1"): "mounted at /sysroot"})
    result = scan(config_of(), host.dev, host.sys, use)
    sda1 = by_host_path(result)["/dev/sda1"]
    assert (sda1.verdict, sda1.rule, sda1.reason) == (
        REFUSED,
        "in use",
        "in use: mounted at /sysroot",
    )
    assert sorted(advertised_paths(result)) == ["/dev/sda", "/dev/sdb"]


def test_the_in_use_guard_holds_whatever_the_globs_and_whichever_name(host: FakeHost) -> None:
    host.dm("dm-0", "rootvg-root")
    use = HostUse(in_use={host.number_of("/dev/dm-0"): "mounted at /"})
    config = config_of(include_devices=["/dev/mapper/*", "/dev/dm-*"])
    result = scan(config, host.dev, host.sys, use)
    assert advertised_paths(result) == []
    assert {c.rule for c in result.candidates} == {"in use"}


def test_unreadable_host_use_refuses_every_block_device_but_not_named_char_devices(
    host: FakeHost,
) -> None:
    host.disk("sda")
    host.char_node("/dev/crypto/nx-gzip")
    use = HostUse(in_use={}, error="cannot read /host/proc/1/mountinfo: no such file")
    result = scan(config_of(nx_gzip=True), host.dev, host.sys, use)
    sda = by_host_path(result)["/dev/sda"]
    assert (sda.verdict, sda.rule) == (REFUSED, "in use")
    assert "cannot read /host/proc/1/mountinfo" in sda.reason
    assert advertised_paths(result) == ["/dev/crypto/nx-gzip"]


def test_the_host_mount_table_is_read_through_read_host_use(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    host.mount("/dev/sdb", "/var/lib/kubelet")
    result = scan(config_of(), host.dev, host.sys, read_host_use(host.proc, host.sys))
    assert advertised_paths(result) == ["/dev/sda"]
    assert by_host_path(result)["/dev/sdb"].reason == "in use: mounted at /var/lib/kubelet"


# --- the built-in deny list and character devices -----------------------------------------


def test_denied_nodes_are_refused_even_when_named_exactly(host: FakeHost) -> None:
    host.char_node("/dev/mem", (1, 1))
    host.char_node("/dev/mapper/control", (10, 236))
    host.char_node("/dev/cpu/0/msr", (202, 0))
    config = config_of(include_devices=["/dev/mem", "/dev/mapper/control", "/dev/cpu/0/msr"])
    result = scan(config, host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == []
    for candidate in result.candidates:
        assert (candidate.verdict, candidate.rule) == (REFUSED, "built-in deny list")
        assert candidate.reason.startswith("built-in deny list")


def test_a_link_to_a_denied_node_is_refused_by_the_name_it_reaches(host: FakeHost) -> None:
    host.char_node("/dev/mem", (1, 1))
    host.link("/dev/innocent", "mem")
    result = scan(config_of(include_devices=["/dev/innocent"]), host.dev, host.sys, NOT_USED)
    (candidate,) = result.candidates
    assert (candidate.verdict, candidate.rule) == (REFUSED, "built-in deny list")
    assert "/dev/mem" in candidate.reason


def test_a_glob_never_pulls_in_character_devices(host: FakeHost) -> None:
    host.disk("vdb")
    host.char_node("/dev/accel/7")
    host.char_node("/dev/mem", (1, 1))
    result = scan(
        config_of(include_devices=["/dev/*", "/dev/accel/*"]), host.dev, host.sys, NOT_USED
    )
    assert advertised_paths(result) == ["/dev/vdb"]
    accel = by_host_path(result)["/dev/accel/7"]
    assert (accel.verdict, accel.rule) == (REFUSED, "character devices by exact name")
    assert "matched by the glob /dev/accel/*" in accel.reason
    mem = by_host_path(result)["/dev/mem"]
    assert (mem.verdict, mem.rule) == (REFUSED, "built-in deny list")


def test_a_character_device_named_exactly_is_advertised(host: FakeHost) -> None:
    host.char_node("/dev/accel/7")
    result = scan(config_of(include_devices=["/dev/accel/7"]), host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == ["/dev/accel/7"]


# --- identity by device number ------------------------------------------------------------


def mapper_real_node(host: FakeHost, dm: str, mapper_name: str) -> None:
    """What ``dmsetup mknodes`` makes on a node without udev: a second real node."""
    host.remove(f"/dev/mapper/{mapper_name}")
    host.block_node(f"/dev/mapper/{mapper_name}", host.number_of(f"/dev/{dm}"))


def test_a_second_real_node_of_the_same_device_is_advertised_once(host: FakeHost) -> None:
    host.dm("dm-1", "mpatha")
    mapper_real_node(host, "dm-1", "mpatha")
    assert not (host.dev / "mapper" / "mpatha").is_symlink()
    config = config_of(include_devices=["/dev/dm-*", "/dev/mapper/*"])
    result = scan(config, host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == ["/dev/dm-1"]
    twin = by_host_path(result)["/dev/mapper/mpatha"]
    assert (twin.verdict, twin.reason) == (EXCLUDED, "same device as /dev/dm-1")
    assert twin.rdev == by_host_path(result)["/dev/dm-1"].rdev


def test_the_name_the_first_include_pattern_selected_is_the_one_granted(host: FakeHost) -> None:
    host.dm("dm-1", "mpatha")
    mapper_real_node(host, "dm-1", "mpatha")
    config = config_of(include_devices=["/dev/mapper/mpath*", "/dev/dm-*"])
    result = scan(config, host.dev, host.sys, NOT_USED)
    (granted,) = result.advertised()
    assert granted.host_path == "/dev/mapper/mpatha"
    assert "/dev/dm-1" in granted.aliases
    only_mapper = scan(config_of(include_devices=["/dev/mapper/*"]), host.dev, host.sys, NOT_USED)
    assert advertised_paths(only_mapper) == ["/dev/mapper/mpatha"]


def test_an_exclude_matches_any_name_of_the_device(host: FakeHost) -> None:
    host.dm("dm-1", "mpatha")
    mapper_real_node(host, "dm-1", "mpatha")
    host.link("/dev/disk/by-id/dm-uuid-mpath-3600", "../../dm-1")
    for exclude in ("/dev/dm-1", "/dev/mapper/mpatha", "/dev/disk/by-id/dm-uuid-*"):
        config = config_of(
            include_devices=["/dev/mapper/*", "/dev/disk/by-id/*", "/dev/dm-*"],
            exclude_devices=[exclude],
        )
        result = scan(config, host.dev, host.sys, NOT_USED)
        assert advertised_paths(result) == [], exclude
        assert {c.verdict for c in result.candidates} == {EXCLUDED}, exclude


def test_block_and_character_devices_with_the_same_number_are_different_devices(
    host: FakeHost,
) -> None:
    host.block_node("/dev/blk0", (240, 1))
    host.char_node("/dev/chr0", (240, 1))
    config = config_of(include_devices=["/dev/blk0", "/dev/chr0"])
    assert advertised_paths(scan(config, host.dev, host.sys, NOT_USED)) == [
        "/dev/blk0",
        "/dev/chr0",
    ]


def test_identity_comes_from_dm_uuid_then_wwid(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha", uuid="mpath-3600a0b80", slaves=("sda",))
    host.disk("sda")
    host.sysfs("sda/device/wwid", "naa.600a0b80")
    host.sysfs("sda/device/state", "running")
    host.disk("sdb")
    found = by_host_path(scan(config_of(), host.dev, host.sys, NOT_USED))
    assert found["/dev/dm-0"].identity == "dm-uuid:mpath-3600a0b80"
    assert found["/dev/sda"].identity == "wwid:naa.600a0b80"
    assert found["/dev/sdb"].identity == ""
    assert found["/dev/sda"].rdev == host.number_of("/dev/sda")


# --- health from sysfs --------------------------------------------------------------------


def problems(host: FakeHost) -> dict[str, str]:
    return {
        c.host_path: c.problem for c in scan(config_of(), host.dev, host.sys, NOT_USED).advertised()
    }


def test_a_device_whose_state_is_not_running_has_a_problem_and_so_do_its_partitions(
    host: FakeHost,
) -> None:
    host.disk("sda", partitions=("sda1",))
    host.disk("sdb")
    host.disk("nvme0n1")
    host.sysfs("sda/device/state", "offline")
    host.sysfs("sdb/device/state", "running")
    host.sysfs("nvme0n1/device/state", "live")
    assert problems(host) == {
        "/dev/sda": "device/state is offline",
        "/dev/sda1": "device/state is offline",
        "/dev/sdb": "",
        "/dev/nvme0n1": "",
    }


def test_a_suspended_dm_map_and_a_zero_size_device_have_problems(host: FakeHost) -> None:
    host.dm("dm-0", "suspended")
    host.sysfs("dm-0/dm/suspended", "1")
    host.dm("dm-1", "running")
    host.sysfs("dm-1/dm/suspended", "0")
    host.disk("sdz")
    host.sysfs("sdz/size", "0")
    host.disk("sdy")
    host.sysfs("sdy/size", "2048")
    assert problems(host) == {
        "/dev/dm-0": "dm/suspended is 1",
        "/dev/dm-1": "",
        "/dev/sdz": "size is 0",
        "/dev/sdy": "",
    }


def test_a_multipath_map_needs_one_live_path(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    host.sysfs("sda/device/state", "offline")
    host.sysfs("sdb/device/state", "transport-offline")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sda", "sdb"))
    host.dm("dm-1", "mpathb", uuid="mpath-3600b")
    host.dm("dm-2", "vg-lv", uuid="LVM-abc")
    found = problems(host)
    assert found["/dev/dm-0"].startswith("no live multipath path")
    assert "sda offline" in found["/dev/dm-0"]
    assert found["/dev/dm-1"] == "no live multipath path (the map has no paths)"
    assert found["/dev/dm-2"] == ""
    host.sysfs("sdb/device/state", "running")
    assert problems(host)["/dev/dm-0"] == ""


# --- races --------------------------------------------------------------------------------


def test_a_link_removed_between_lstat_and_readlink_is_a_refused_candidate(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.dm("dm-0", "mpatha")

    def vanished(path: object) -> str:
        raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(os, "readlink", vanished)
    result = scan(config_of(include_devices=["/dev/mapper/*"]), host.dev, host.sys, NOT_USED)
    mapper = by_host_path(result)["/dev/mapper/mpatha"]
    assert (mapper.verdict, mapper.reason) == (REFUSED, "vanished during the scan")


def test_a_node_removed_between_lstat_and_stat_is_a_refused_candidate(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.disk("sda")
    real_stat = os.stat

    def vanishing_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith("/sda"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", vanishing_stat)
    (sda,) = scan(config_of(), host.dev, host.sys, NOT_USED).candidates
    assert (sda.verdict, sda.reason) == (REFUSED, "vanished during the scan")


def test_sysfs_files_vanishing_mid_scan_never_raise(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.dm("dm-0", "mpatha", uuid="mpath-1", slaves=("sda",))
    host.disk("sda")
    real_open = open

    def vanishing_open(path: object, *args: object, **kwargs: object) -> object:
        if str(path).startswith(str(host.sys)):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", vanishing_open)
    result = scan(config_of(include_devices=["/dev/dm-*"]), host.dev, host.sys, NOT_USED)
    assert advertised_paths(result) == ["/dev/dm-0"]


def _san_node(host: FakeHost, with_number_links: bool) -> None:
    """Two multipath maps over sd paths, one sd not in any map; optionally the
    ``<sys>/dev/block/M:m`` links a real sysfs has."""
    host.disk("sda")
    host.disk("sdb")
    host.disk("sdc")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sda",))
    host.dm("dm-1", "mpathb", uuid="mpath-3600b", slaves=("sdb",))
    host.sysfs("sda/device/state", "running")
    host.sysfs("sdb/device/state", "offline")
    if with_number_links:
        links = host.sys / "dev" / "block"
        links.mkdir(parents=True)
        for name in ("sda", "sdb", "sdc", "dm-0", "dm-1"):
            number = host.number_of(f"/dev/{name}")
            (links / f"{number[0]}:{number[1]}").symlink_to(f"../../block/{name}")


@pytest.mark.parametrize("with_number_links", [True, False], ids=["by-number", "listing"])
def test_the_watchers_scan_advertises_the_same_as_the_full_report(
    host: FakeHost, with_number_links: bool
) -> None:
    _san_node(host, with_number_links)
    config = config_of(include_devices=["/dev/dm-*"], exclude_devices=["/dev/mapper/mpathb"])
    full = scan(config, host.dev, host.sys, NOT_USED)
    lean = scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=False)
    assert lean.advertised() == full.advertised()
    assert advertised_paths(lean) == ["/dev/dm-0"]
    (advertised,) = lean.advertised()
    assert (advertised.identity, advertised.problem) == ("dm-uuid:mpath-3600a", "")
    assert "/dev/mapper/mpatha" in advertised.aliases
    # The exclude by mapper name still applies: the dm name of a matched node is read.
    assert by_host_path(lean)["/dev/dm-1"].verdict == EXCLUDED


def test_the_full_report_explains_what_no_include_matches_and_the_watchers_scan_does_not(
    host: FakeHost,
) -> None:
    _san_node(host, with_number_links=True)
    config = config_of(include_devices=["/dev/dm-*"])
    full = by_host_path(scan(config, host.dev, host.sys, NOT_USED))
    lean = by_host_path(scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=False))
    assert full["/dev/sdc"].rule == "include-devices"
    assert sorted(lean) == ["/dev/dm-0", "/dev/dm-1"]


def test_the_watchers_scan_does_not_list_sysfs_when_every_match_has_a_number_link(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import discovery

    _san_node(host, with_number_links=True)

    def listing(*args: object) -> object:
        raise AssertionError("<sys>/block was listed")

    monkeypatch.setattr(discovery, "sysfs_block_devices", listing)
    config = config_of(include_devices=["/dev/dm-*"])
    result = scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=False)
    assert advertised_paths(result) == ["/dev/dm-0", "/dev/dm-1"]
    assert by_host_path(result)["/dev/dm-1"].problem.startswith("no live multipath path")


def test_the_deny_list_pre_check_never_changes_the_answer() -> None:
    from power_device_plugin.discovery import _denied_reason
    from power_device_plugin.host_use import DENY_LIST, denied_reason

    names = {"/dev//mem", "/dev/./kmem", "//dev/mem", "/dev/x/../mem", "/dev/[", "/dev"}
    for pattern, _why in DENY_LIST:
        for fill in ("", "x", "0", "abc", "1/2"):
            names |= {pattern.replace("*", fill), pattern.replace("*", fill) + "1"}
    names |= {f"/dev/dm-{i}" for i in range(20)} | {f"/dev/mapper/mpath{i}" for i in range(20)}
    assert {n: _denied_reason(n) for n in names} == {n: denied_reason(n) for n in names}
    assert _denied_reason("/dev/cpu/0/msr") is not None
