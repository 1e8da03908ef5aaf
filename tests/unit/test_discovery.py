from __future__ import annotations

import os
import stat
from pathlib import Path

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
from power_device_plugin.host_use import HostUse

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
    host.char_node("/dev/vfio/7")
    result = scan(
        config_of(include_devices=["/dev/dm-*", "/dev/vfio/7"]), host.dev, host.sys, NOT_USED
    )
    assert advertised_paths(result) == ["/dev/dm-0", "/dev/vfio/7"]
    found = by_host_path(result)
    assert found["/dev/dm-0"].rule == "include /dev/dm-*"
    assert found["/dev/vfio/7"].kind == "char"
    assert (found["/dev/sda"].verdict, found["/dev/sda"].rule) == (EXCLUDED, "include-devices")


def test_include_glob_star_does_not_cross_directories(host: FakeHost) -> None:
    host.char_node("/dev/vfio/7")
    result = scan(config_of(include_devices=["/dev/v*"]), host.dev, host.sys, NOT_USED)
    assert by_host_path(result)["/dev/vfio"].verdict == REFUSED
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
    assert not selected_by_config(config_of(), "/dev/vfio/7", (), "include")
    assert not selected_by_config(config_of(exclude_devices=["/dev/sd*"]), "/dev/sda", (), "sysfs")
    with_includes = config_of(include_devices=["/dev/dm-*"])
    assert selected_by_config(with_includes, "/dev/dm-0", (), "include")
    assert not selected_by_config(with_includes, "/dev/sda", (), "sysfs")
    assert not selected_by_config(
        config_of(exclude_devices=["/dev/mapper/x"]), "/dev/dm-0", ("/dev/mapper/x",), "sysfs"
    )
    assert selected_by_config(config_of(nx_gzip=True), "/dev/crypto/nx-gzip", (), "nx-gzip")
    assert not selected_by_config(config_of(), "/dev/crypto/nx-gzip", (), "nx-gzip")
