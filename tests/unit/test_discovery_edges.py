"""Discovery's answers pinned word for word at the edges: every refusal text, the
exact names a candidate carries, health and NUMA nodes from sysfs, and the watcher's
lean scan agreeing with the full report on richer trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.unit.conftest import FakeHost, config_of

from power_device_plugin.config import PluginConfig
from power_device_plugin.discovery import (
    ADVERTISED,
    EXCLUDED,
    REFUSED,
    Candidate,
    ScanResult,
    first_match,
    parse_device_number,
    scan,
    selected_by_config,
)
from power_device_plugin.host_use import HostUse

NOT_USED = HostUse(in_use={})


def by_host_path(result: ScanResult) -> dict[str, Candidate]:
    return {c.host_path: c for c in result.candidates}


def only(config: PluginConfig, host: FakeHost, host_use: HostUse = NOT_USED) -> Candidate:
    (candidate,) = scan(config, host.dev, host.sys, host_use).candidates
    return candidate


def verdict_rule_reason(candidate: Candidate) -> tuple[str, str, str]:
    return candidate.verdict, candidate.rule, candidate.reason


# --- small pure helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("8:16", (8, 16)),
        ("253:0", (253, 0)),
        ("8-16", None),
        ("8:", None),
        (":16", None),
        ("x:1", None),
        ("1:x", None),
        ("", None),
        (None, None),
    ],
)
def test_a_sysfs_dev_file_reads_as_a_device_number_only_when_it_is_one(
    text: str | None, number: tuple[int, int] | None
) -> None:
    assert parse_device_number(text) == number


def test_first_match_is_the_first_pattern_in_order_that_matches_any_name() -> None:
    patterns = ("/dev/sd*", "/dev/mapper/*", "/dev/dm-*")
    assert first_match(patterns, ("/dev/dm-0", "/dev/mapper/a")) == "/dev/mapper/*"
    assert first_match(patterns, ("/dev/dm-0",)) == "/dev/dm-*"
    assert first_match(patterns, ("/dev/vda", "/dev/mapper")) is None
    assert first_match((), ("/dev/sda",)) is None


def test_selected_by_config_for_nx_gzip_needs_its_path_and_the_flag() -> None:
    on = config_of(nx_gzip=True)
    assert selected_by_config(on, "/dev/crypto/nx-gzip", (), "nx-gzip")
    assert not selected_by_config(on, "/dev/crypto/other", (), "nx-gzip")
    assert not selected_by_config(config_of(), "/dev/crypto/nx-gzip", (), "nx-gzip")
    excluded = config_of(nx_gzip=True, exclude_devices=["/dev/crypto/*"])
    assert not selected_by_config(excluded, "/dev/crypto/nx-gzip", (), "nx-gzip")
    # Without includes only sysfs devices are selected; an alias counts for includes.
    assert not selected_by_config(config_of(), "/dev/accel/0", (), "include")
    includes = config_of(include_devices=["/dev/mapper/*"])
    assert selected_by_config(includes, "/dev/dm-0", ("/dev/mapper/a",), "sysfs")
    assert not selected_by_config(includes, "/dev/dm-0", (), "sysfs")


# --- names --------------------------------------------------------------------------------


def test_kernel_names_with_a_slash_become_paths_with_their_partitions(host: FakeHost) -> None:
    entry = host.sys / "block" / "cciss!c0d0"
    entry.mkdir()
    (entry / "dev").write_text("104:0\n")
    (entry / "cciss!c0d0p1").mkdir()
    (entry / "cciss!c0d0p1" / "dev").write_text("104:1\n")
    (entry / "cciss!c0d0p1" / "partition").write_text("1\n")
    host.block_node("/dev/cciss/c0d0", (104, 0))
    host.block_node("/dev/cciss/c0d0p1", (104, 1))
    result = scan(config_of(), host.dev, host.sys, NOT_USED)
    assert [(c.host_path, c.verdict, c.rdev) for c in result.candidates] == [
        ("/dev/cciss/c0d0", ADVERTISED, (104, 0)),
        ("/dev/cciss/c0d0p1", ADVERTISED, (104, 1)),
    ]


def test_only_sub_directories_named_after_the_disk_with_a_partition_file_are_partitions(
    host: FakeHost,
) -> None:
    host.disk("sda")
    # A holder-like directory with a partition file but another name, and a
    # directory named like a partition without one: neither is a partition.
    host.sysfs("sda/other1/partition", "1")
    host.sysfs("sda/other1/dev", "8:90")
    host.sysfs("sda/sda9/dev", "8:91")
    result = scan(config_of(), host.dev, host.sys, NOT_USED)
    assert [c.host_path for c in result.candidates] == ["/dev/sda"]


def test_a_sysfs_device_has_its_mapper_name_as_its_only_alias(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    host.disk("sda", partitions=("sda1",))
    found = by_host_path(scan(config_of(), host.dev, host.sys, NOT_USED))
    assert found["/dev/dm-0"].aliases == ("/dev/mapper/mpatha",)
    assert found["/dev/sda"].aliases == ()
    assert found["/dev/sda1"].aliases == ()
    assert {c.source for c in found.values()} == {"sysfs"}
    assert {c.kind for c in found.values()} == {"block"}


def test_a_mapper_link_named_by_an_include_carries_its_dm_node_as_alias(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    mapper = only(config_of(include_devices=["/dev/mapper/*"]), host)
    assert mapper.host_path == "/dev/mapper/mpatha"
    assert mapper.path == str(host.dev / "mapper" / "mpatha")
    assert mapper.aliases == ("/dev/dm-0",)
    assert (mapper.source, mapper.kind) == ("include", "block")
    assert verdict_rule_reason(mapper) == (ADVERTISED, "include /dev/mapper/*", "block device node")


def test_a_node_under_another_name_carries_the_sysfs_names_of_its_device(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    host.block_node("/dev/disk/lun0", host.number_of("/dev/dm-0"))
    full = scan(config_of(include_devices=["/dev/disk/lun0"]), host.dev, host.sys, NOT_USED)
    (lun,) = full.advertised()
    assert lun.aliases == ("/dev/dm-0", "/dev/mapper/mpatha")
    lean = scan(
        config_of(include_devices=["/dev/disk/lun0"]),
        host.dev,
        host.sys,
        NOT_USED,
        explain_unmatched=False,
    )
    assert lean.advertised() == (lun,)


def test_an_unmatched_sysfs_device_is_reported_with_its_names(host: FakeHost) -> None:
    host.dm("dm-0", "mpatha")
    host.disk("sda")
    found = by_host_path(
        scan(config_of(include_devices=["/dev/sda"]), host.dev, host.sys, NOT_USED)
    )
    dm = found["/dev/dm-0"]
    assert verdict_rule_reason(dm) == (
        EXCLUDED,
        "include-devices",
        "not matched by any include-devices pattern",
    )
    assert dm.path == str(host.dev / "dm-0")
    assert (dm.source, dm.aliases) == ("sysfs", ("/dev/mapper/mpatha",))
    assert dm.identity == dm.problem == ""
    # sysfs entries an include already matched are not listed twice.
    assert [
        c.host_path
        for c in scan(
            config_of(include_devices=["/dev/mapper/*"]), host.dev, host.sys, NOT_USED
        ).candidates
    ] == ["/dev/mapper/mpatha", "/dev/sda"]


def test_a_second_name_of_a_device_is_excluded_naming_the_first(host: FakeHost) -> None:
    host.disk("sda")
    host.link("/dev/disk0", "sda")
    config = config_of(include_devices=["/dev/disk0", "/dev/sd*"])
    found = by_host_path(scan(config, host.dev, host.sys, NOT_USED))
    assert verdict_rule_reason(found["/dev/disk0"]) == (
        ADVERTISED,
        "include /dev/disk0",
        "block device node",
    )
    assert verdict_rule_reason(found["/dev/sda"]) == (
        EXCLUDED,
        "include /dev/sd*",
        "same device as /dev/disk0",
    )
    assert found["/dev/sda"].aliases == ("/dev/disk0",)
    assert found["/dev/disk0"].aliases == ("/dev/sda",)
    assert found["/dev/sda"].rdev == found["/dev/disk0"].rdev == host.number_of("/dev/sda")


# --- refusals, word for word ----------------------------------------------------------------


def test_a_link_to_a_denied_name_says_which_name_is_denied(host: FakeHost) -> None:
    host.char_node("/dev/mem", (1, 1))
    host.link("/dev/innocent", "mem")
    innocent = only(config_of(include_devices=["/dev/innocent"]), host)
    assert verdict_rule_reason(innocent) == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: /dev/mem (physical memory) (/dev/mem)",
    )
    mem = only(config_of(include_devices=["/dev/mem"]), host)
    assert mem.reason == "built-in deny list: /dev/mem (physical memory)"


def test_a_character_device_of_a_denied_number_is_refused_under_any_name(host: FakeHost) -> None:
    host.char_node("/dev/harmless", (1, 1))
    harmless = only(config_of(include_devices=["/dev/harmless"]), host)
    assert verdict_rule_reason(harmless) == (
        REFUSED,
        "built-in deny list",
        "built-in deny list: character device 1:1 "
        "(memory devices (mem, kmem, port, null, zero, random, kmsg, ...))",
    )
    assert (harmless.kind, harmless.rdev) == ("char", (1, 1))


def test_a_character_node_where_sysfs_lists_a_block_device_is_refused(host: FakeHost) -> None:
    host.disk("sdq", node=False)
    host.char_node("/dev/sdq")
    sdq = only(config_of(), host)
    assert verdict_rule_reason(sdq) == (
        REFUSED,
        "sysfs block",
        "not a block device node (character device)",
    )


def test_a_character_device_matched_by_a_glob_is_refused_saying_how_to_grant_it(
    host: FakeHost,
) -> None:
    host.char_node("/dev/accel/0")
    accel = only(config_of(include_devices=["/dev/accel/*"]), host)
    assert verdict_rule_reason(accel) == (
        REFUSED,
        "character devices by exact name",
        "character device matched by the glob /dev/accel/*; name it exactly "
        "in include-devices to grant it",
    )


def test_the_nx_gzip_character_device_is_advertised(host: FakeHost) -> None:
    host.char_node("/dev/crypto/nx-gzip")
    nx = only(config_of(nx_gzip=True), host)
    assert verdict_rule_reason(nx) == (ADVERTISED, "nx-gzip", "char device node")
    assert (nx.source, nx.kind, nx.path) == (
        "nx-gzip",
        "char",
        str(host.dev / "crypto" / "nx-gzip"),
    )


def test_in_use_and_unreadable_host_use_refusals_read_in_full(host: FakeHost) -> None:
    host.disk("sda")
    number = host.number_of("/dev/sda")
    used = only(config_of(), host, HostUse(in_use={number: "mounted at /boot"}))
    assert verdict_rule_reason(used) == (REFUSED, "in use", "in use: mounted at /boot")
    assert (used.rdev, used.kind, used.identity, used.problem) == (number, "block", "", "")
    unknown = only(config_of(), host, HostUse(error="/proc/1/mountinfo: unreadable"))
    assert verdict_rule_reason(unknown) == (
        REFUSED,
        "in use",
        "cannot tell whether the host uses it: /proc/1/mountinfo: unreadable",
    )


def test_an_exclusion_is_reported_before_the_state_of_the_node(host: FakeHost) -> None:
    host.regular_file("/dev/sdx")
    sdx = only(config_of(include_devices=["/dev/sdx"], exclude_devices=["/dev/sd*"]), host)
    assert verdict_rule_reason(sdx) == (EXCLUDED, "exclude /dev/sd*", "matched an exclude pattern")


def test_a_fifo_is_not_a_device_node(host: FakeHost) -> None:
    os.mkfifo(host.dev / "pipe0")
    pipe = only(config_of(include_devices=["/dev/pipe*"]), host)
    assert verdict_rule_reason(pipe) == (REFUSED, "include /dev/pipe*", "not a device node")
    assert (pipe.kind, pipe.rdev) == ("", None)


def test_a_path_through_a_device_node_cannot_be_read(host: FakeHost) -> None:
    host.block_node("/dev/sda")
    through = only(config_of(include_devices=["/dev/sda/x"]), host)
    assert verdict_rule_reason(through) == (
        REFUSED,
        "include /dev/sda/x",
        "cannot be read: Not a directory",
    )


def test_an_unreadable_link_or_node_is_refused_with_the_error(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.dm("dm-0", "mpatha")

    def denied(path: object, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "readlink", denied)
        mapper = only(config_of(include_devices=["/dev/mapper/*"]), host)
    assert mapper.reason == "cannot be read: Permission denied"
    real_stat = os.stat

    def stat_denied(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(path).endswith("/dm-0"):
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat_denied)
    dm = only(config_of(include_devices=["/dev/dm-0"]), host)
    assert verdict_rule_reason(dm) == (
        REFUSED,
        "include /dev/dm-0",
        "cannot be read: Permission denied",
    )


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/devices/sda", "symlink escapes dev-root (points to /devices/sda)"),
        ("/dev/../etc/sda", "symlink escapes dev-root (points to /dev/../etc/sda)"),
        ("../../sys/sda", "symlink escapes dev-root (points to ../../sys/sda)"),
        ("/dev", "not a device node (directory)"),
        ("/dev/", "not a device node (directory)"),
        ("/dev/sda", "block device node"),
        ("/dev//sda", "block device node"),
        ("../sda", "block device node"),
    ],
)
def test_where_a_link_may_point(host: FakeHost, target: str, reason: str) -> None:
    host.block_node("/dev/sda")
    host.link("/dev/by-id/link", target)
    link = only(config_of(include_devices=["/dev/by-id/*"]), host)
    assert link.reason == reason


def test_a_link_into_a_directory_named_like_dev_root_but_longer_escapes(host: FakeHost) -> None:
    sibling = host.dev.parent / (host.dev.name + "x")
    sibling.mkdir()
    os.mknod(sibling / "sda", 0o60660, os.makedev(8, 99))
    host.link("/dev/sneaky", f"../{host.dev.name}x/sda")
    sneaky = only(config_of(include_devices=["/dev/sneaky"]), host)
    assert sneaky.reason == f"symlink escapes dev-root (points to ../{host.dev.name}x/sda)"


def test_a_chain_of_links_is_followed_up_to_forty_hops(host: FakeHost) -> None:
    host.block_node("/dev/sda")

    def chain(prefix: str, links: int) -> None:
        for hop in range(links):
            target = "sda" if hop == links - 1 else f"{prefix}{hop + 1}"
            host.link(f"/dev/{prefix}{hop}", target)

    chain("ok", 39)
    chain("long", 40)
    assert only(config_of(include_devices=["/dev/ok0"]), host).reason == "block device node"
    assert only(config_of(include_devices=["/dev/long0"]), host).reason == (
        "too many levels of symlinks"
    )


def test_a_directory_link_out_of_dev_root_is_refused_in_those_words(host: FakeHost) -> None:
    outside = host.dev.parent / "elsewhere"
    outside.mkdir()
    os.mknod(outside / "sdz", 0o60660, os.makedev(8, 77))
    host.link("/dev/out", str(outside))
    out = only(config_of(include_devices=["/dev/out/sdz"]), host)
    assert verdict_rule_reason(out) == (REFUSED, "include /dev/out/sdz", "symlink escapes dev-root")


# --- health ---------------------------------------------------------------------------------


def problems(host: FakeHost, config: PluginConfig | None = None) -> dict[str, str]:
    result = scan(config or config_of(), host.dev, host.sys, NOT_USED)
    return {c.host_path: c.problem for c in result.advertised()}


def test_a_multipath_problem_lists_every_path_and_its_state(host: FakeHost) -> None:
    host.disk("sda")
    host.disk("sdb")
    host.sysfs("sda/device/state", "offline")
    host.dm("dm-0", "mpatha", uuid="mpath-3600a", slaves=("sda", "sdb"))
    assert problems(host)["/dev/dm-0"] == (
        "no live multipath path (sda offline, sdb has no device/state)"
    )


def test_a_multipath_map_with_a_live_nvme_path_is_healthy(host: FakeHost) -> None:
    host.disk("nvme0n1")
    host.disk("nvme1n1")
    host.sysfs("nvme0n1/device/state", "dead")
    host.sysfs("nvme1n1/device/state", "live")
    host.dm("dm-0", "mpatha", uuid="mpath-eui.1", slaves=("nvme0n1", "nvme1n1"))
    assert problems(host)["/dev/dm-0"] == ""


def test_only_a_uuid_starting_with_mpath_makes_a_multipath_map(host: FakeHost) -> None:
    host.dm("dm-0", "a", uuid="LVM-mpath-x")
    host.dm("dm-1", "b", uuid="mpath-x")
    assert problems(host) == {
        "/dev/dm-0": "",
        "/dev/dm-1": "no live multipath path (the map has no paths)",
    }


def test_the_first_problem_found_is_the_one_reported(host: FakeHost) -> None:
    host.disk("sda")
    host.sysfs("sda/device/state", "blocked")
    host.sysfs("sda/size", "0")
    host.dm("dm-0", "mpatha", uuid="mpath-1")
    host.sysfs("dm-0/dm/suspended", "1")
    host.sysfs("dm-0/size", "0")
    host.dm("dm-1", "mpathb", uuid="mpath-2")
    host.sysfs("dm-1/size", "0")
    assert problems(host) == {
        "/dev/sda": "device/state is blocked",
        "/dev/dm-0": "dm/suspended is 1",
        "/dev/dm-1": "size is 0",
    }


def test_a_partition_has_its_own_size_but_its_disks_state(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1", "sda2"))
    host.sysfs("sda/size", "0")
    host.sysfs("sda/sda1/size", "0")
    host.sysfs("sda/sda2/size", "4096")
    host.sysfs("sda/device/state", "running")
    assert problems(host) == {"/dev/sda": "size is 0", "/dev/sda1": "size is 0", "/dev/sda2": ""}


def test_identity_problem_and_numa_nodes_belong_to_advertised_devices_only(
    host: FakeHost,
) -> None:
    host.disk("sda")
    host.sysfs("sda/device/wwid", "naa.1")
    host.sysfs("sda/device/state", "offline")
    host.sysfs("sda/device/numa_node", "1")
    excluded = only(config_of(exclude_devices=["/dev/sda"]), host)
    assert (excluded.identity, excluded.problem, excluded.numa_nodes) == ("", "", ())
    advertised = only(config_of(), host)
    assert (advertised.identity, advertised.problem, advertised.numa_nodes) == (
        "wwid:naa.1",
        "device/state is offline",
        (1,),
    )


# --- NUMA nodes -----------------------------------------------------------------------------


def numa(host: FakeHost) -> dict[str, tuple[int, ...]]:
    return {
        c.host_path: c.numa_nodes
        for c in scan(config_of(), host.dev, host.sys, NOT_USED).advertised()
    }


def test_numa_nodes_of_disks_and_their_partitions(host: FakeHost) -> None:
    host.disk("sda", partitions=("sda1",))
    host.disk("sdb")
    host.disk("sdc")
    host.disk("sdd")
    host.disk("sde")
    host.sysfs("sda/device/numa_node", "0")
    host.sysfs("sdb/device/numa_node", "-1")
    host.sysfs("sdc/device/numa_node", "unknown")
    host.sysfs("sdd/device/numa_node", "3")
    assert numa(host) == {
        "/dev/sda": (0,),
        "/dev/sda1": (0,),
        "/dev/sdb": (),
        "/dev/sdc": (),
        "/dev/sdd": (3,),
        "/dev/sde": (),
    }


def test_a_dm_map_has_the_numa_nodes_of_its_paths(host: FakeHost) -> None:
    for name, node in (("sda", "1"), ("sdb", "0"), ("sdc", "1"), ("sdd", "-1"), ("sde", "x")):
        host.disk(name)
        host.sysfs(f"{name}/device/numa_node", node)
    host.disk("sdf")
    host.dm("dm-0", "mpatha", slaves=("sda", "sdb", "sdc", "sdd", "sde", "sdf"))
    host.dm("dm-1", "mpathb", slaves=("sdd", "sde", "sdf"))
    host.dm("dm-2", "mpathc")
    found = numa(host)
    assert (found["/dev/dm-0"], found["/dev/dm-1"], found["/dev/dm-2"]) == ((0, 1), (), ())


# --- the watcher's lean scan ------------------------------------------------------------------


def _rich_node(host: FakeHost, number_links: bool) -> None:
    host.disk("sda", partitions=("sda1", "sda2"))
    host.disk("sdb")
    host.disk("nvme0n1", partitions=("nvme0n1p1",))
    host.sysfs("sda/device/state", "offline")
    host.sysfs("sda/device/wwid", "naa.a")
    host.sysfs("sda/device/numa_node", "1")
    host.sysfs("sda/sda2/size", "0")
    host.sysfs("sdb/device/state", "running")
    host.sysfs("sdb/device/numa_node", "0")
    host.sysfs("nvme0n1/device/state", "live")
    host.sysfs("nvme0n1/device/wwid", "eui.n")
    host.dm("dm-0", "mpatha", uuid="mpath-a", slaves=("sda", "sdb"))
    host.dm("dm-1", "vg-lv", uuid="LVM-b")
    host.sysfs("dm-1/dm/suspended", "1")
    host.link("/dev/disk/by-id/wwn-a", "../../sda")
    host.block_node("/dev/lun-b", host.number_of("/dev/sdb"))
    host.block_node("/dev/lun-n", host.number_of("/dev/nvme0n1"))
    if number_links:
        links = host.sys / "dev" / "block"
        links.mkdir(parents=True)
        for entry in ("sda", "sda/sda1", "sda/sda2", "sdb", "nvme0n1", "nvme0n1/nvme0n1p1"):
            name = entry.split("/")[-1]
            number = host.number_of(f"/dev/{name}")
            (links / f"{number[0]}:{number[1]}").symlink_to(f"../../block/{entry}")
        for name in ("dm-0", "dm-1"):
            number = host.number_of(f"/dev/{name}")
            (links / f"{number[0]}:{number[1]}").symlink_to(f"../../block/{name}")


@pytest.mark.parametrize("number_links", [True, False], ids=["by-number", "listing"])
@pytest.mark.parametrize(
    "includes",
    [
        ["/dev/sda*"],
        ["/dev/sda2", "/dev/nvme0n1p1"],
        ["/dev/mapper/*", "/dev/dm-*"],
        ["/dev/disk/by-id/*", "/dev/lun-b"],
        ["/dev/lun-b", "/dev/sd*", "/dev/nvme*"],
        ["/dev/dm-1", "/dev/nvme0n1"],
    ],
)
def test_the_lean_scan_gives_the_full_answer_for_every_advertised_device(
    host: FakeHost, number_links: bool, includes: list[str]
) -> None:
    _rich_node(host, number_links)
    config = config_of(include_devices=includes, exclude_devices=["/dev/mapper/vg-*"])
    full = scan(config, host.dev, host.sys, NOT_USED)
    lean = scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=False)
    assert lean.advertised() == full.advertised()
    assert lean.advertised()
    assert [c for c in lean.candidates if c.rule != "include-devices"] == [
        c for c in full.candidates if c.rule != "include-devices"
    ]


def test_the_full_scan_reads_partitions_health_names_and_numa_exactly(host: FakeHost) -> None:
    _rich_node(host, number_links=False)
    found = by_host_path(
        scan(config_of(include_devices=["/dev/sda*", "/dev/lun-b"]), host.dev, host.sys, NOT_USED)
    )
    sda2, lun = found["/dev/sda2"], found["/dev/lun-b"]
    assert (sda2.problem, sda2.numa_nodes, sda2.identity) == ("device/state is offline", (1,), "")
    assert (lun.aliases, lun.identity, lun.problem, lun.numa_nodes) == (
        ("/dev/sdb",),
        "",
        "",
        (0,),
    )


def test_the_lean_scan_reads_a_partition_through_its_number_link(host: FakeHost) -> None:
    _rich_node(host, number_links=True)
    lean = scan(
        config_of(include_devices=["/dev/sda1", "/dev/nvme0n1p1"]),
        host.dev,
        host.sys,
        NOT_USED,
        explain_unmatched=False,
    )
    found = by_host_path(lean)
    assert (found["/dev/sda1"].problem, found["/dev/sda1"].numa_nodes) == (
        "device/state is offline",
        (1,),
    )
    assert found["/dev/nvme0n1p1"].problem == ""


def test_the_lean_scan_lists_sysfs_at_most_once_and_only_when_needed(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import discovery

    _rich_node(host, number_links=False)
    real_listing = discovery.sysfs_block_devices
    listings: list[Path] = []

    def counted(sys_root: Path) -> object:
        listings.append(sys_root)
        return real_listing(sys_root)

    monkeypatch.setattr(discovery, "sysfs_block_devices", counted)
    # Nodes named as their sysfs entry are found by name: no listing.
    named = config_of(include_devices=["/dev/sd[ab]", "/dev/dm-*"])
    lean = scan(named, host.dev, host.sys, NOT_USED, explain_unmatched=False)
    assert listings == []
    assert by_host_path(lean)["/dev/dm-0"].aliases == ("/dev/mapper/mpatha",)
    # Nodes under other names need the listing, made once for the whole scan.
    host.block_node("/dev/stray0", (8, 200))
    host.block_node("/dev/stray1", (8, 201))
    other = config_of(
        include_devices=[
            "/dev/stray0",
            "/dev/lun-b",
            "/dev/lun-n",
            "/dev/disk/by-id/*",
            "/dev/mapper/*",
            "/dev/stray1",
        ]
    )
    lean = scan(other, host.dev, host.sys, NOT_USED, explain_unmatched=False)
    assert listings == [host.sys]
    found = by_host_path(lean)
    assert found["/dev/lun-b"].numa_nodes == (0,)
    assert found["/dev/lun-n"].identity == "wwid:eui.n"
    assert found["/dev/disk/by-id/wwn-a"].identity == "wwid:naa.a"
    assert found["/dev/mapper/mpatha"].identity == "dm-uuid:mpath-a"


def test_a_node_whose_number_sysfs_does_not_know_has_no_sysfs_facts(host: FakeHost) -> None:
    host.disk("sda")
    host.sysfs("sda/device/wwid", "naa.a")
    host.block_node("/dev/sda9", (8, 99))
    host.block_node("/dev/sdb", (8, 98))
    for explain in (True, False):
        result = scan(
            config_of(include_devices=["/dev/sda9", "/dev/sdb"]),
            host.dev,
            host.sys,
            NOT_USED,
            explain_unmatched=explain,
        )
        advertised = [c for c in result.candidates if c.verdict == ADVERTISED]
        assert [(c.host_path, c.aliases, c.identity) for c in advertised] == [
            ("/dev/sda9", (), ""),
            ("/dev/sdb", (), ""),
        ]


# --- order and dev-root names -----------------------------------------------------------------


def test_glob_matches_are_judged_in_name_order(host: FakeHost) -> None:
    host.block_node("/dev/xq", (8, 50))
    for name in ("xd", "xz", "xa", "xm"):
        host.link(f"/dev/{name}", "xq")
    result = scan(config_of(include_devices=["/dev/x*"]), host.dev, host.sys, NOT_USED)
    assert [(c.host_path, c.verdict, c.reason) for c in result.candidates] == [
        ("/dev/xa", ADVERTISED, "block device node"),
        ("/dev/xd", EXCLUDED, "same device as /dev/xa"),
        ("/dev/xm", EXCLUDED, "same device as /dev/xa"),
        ("/dev/xq", EXCLUDED, "same device as /dev/xa"),
        ("/dev/xz", EXCLUDED, "same device as /dev/xa"),
    ]


def test_candidates_come_as_includes_then_sysfs_then_nx_gzip(host: FakeHost) -> None:
    host.disk("sdb")
    host.disk("sda")
    host.char_node("/dev/crypto/nx-gzip")
    host.char_node("/dev/accel/0")
    plain = scan(config_of(nx_gzip=True), host.dev, host.sys, NOT_USED)
    assert [c.host_path for c in plain.candidates] == [
        "/dev/sda",
        "/dev/sdb",
        "/dev/crypto/nx-gzip",
    ]
    with_includes = scan(
        config_of(nx_gzip=True, include_devices=["/dev/accel/0", "/dev/sdb"]),
        host.dev,
        host.sys,
        NOT_USED,
    )
    assert [(c.host_path, c.verdict) for c in with_includes.candidates] == [
        ("/dev/accel/0", ADVERTISED),
        ("/dev/sdb", ADVERTISED),
        ("/dev/sda", EXCLUDED),
        ("/dev/crypto/nx-gzip", ADVERTISED),
    ]


def test_a_glob_that_matches_nothing_adds_no_candidate(host: FakeHost) -> None:
    host.block_node("/dev/sda")
    result = scan(
        config_of(include_devices=["/dev/nvme*", "/dev/sd?"]), host.dev, host.sys, NOT_USED
    )
    assert [c.host_path for c in result.candidates] == ["/dev/sda"]


@pytest.mark.parametrize("dev_name", ["de[v]", "dev*", "dev?", "devX"])
def test_a_dev_root_whose_name_looks_like_a_glob_is_taken_literally(
    tmp_path: Path, dev_name: str
) -> None:
    from tests.unit.conftest import needs_root

    needs_root()
    host = FakeHost(tmp_path, dev_name=dev_name)
    (tmp_path / "host" / "dev").mkdir(exist_ok=True)
    os.mknod(tmp_path / "host" / "dev" / "sdz", 0o60660, os.makedev(8, 97))
    host.block_node("/dev/sda", (8, 96))
    result = scan(
        config_of(include_devices=["/dev/sd*", "/dev/nvme9"]), host.dev, host.sys, NOT_USED
    )
    assert [(c.host_path, c.path, c.verdict) for c in result.candidates] == [
        ("/dev/sda", str(host.dev / "sda"), ADVERTISED),
        ("/dev/nvme9", str(host.dev / "nvme9"), REFUSED),
    ]


def test_the_lean_scan_finds_a_slashed_kernel_name_through_its_number_link(
    host: FakeHost,
) -> None:
    entry = host.sys / "block" / "cciss!c0d0"
    (entry / "device").mkdir(parents=True)
    (entry / "dev").write_text("104:0\n")
    (entry / "device" / "wwid").write_text("cciss.0\n")
    (entry / "device" / "numa_node").write_text("2\n")
    (entry / "cciss!c0d0p1").mkdir()
    (entry / "cciss!c0d0p1" / "dev").write_text("104:1\n")
    (entry / "cciss!c0d0p1" / "partition").write_text("1\n")
    links = host.sys / "dev" / "block"
    links.mkdir(parents=True)
    (links / "104:0").symlink_to("../../block/cciss!c0d0")
    (links / "104:1").symlink_to("../../block/cciss!c0d0/cciss!c0d0p1")
    host.block_node("/dev/cciss/c0d0", (104, 0))
    host.block_node("/dev/cciss/c0d0p1", (104, 1))
    host.block_node("/dev/array0", (104, 0))
    host.block_node("/dev/array0p1", (104, 1))
    config = config_of(include_devices=["/dev/array0*"])
    for explain in (True, False):
        result = scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=explain)
        assert [
            (c.host_path, c.aliases, c.identity, c.numa_nodes) for c in result.advertised()
        ] == [
            ("/dev/array0", ("/dev/cciss/c0d0",), "wwid:cciss.0", (2,)),
            ("/dev/array0p1", ("/dev/cciss/c0d0p1",), "", (2,)),
        ]


def test_the_lean_scan_finds_nodes_under_other_names_by_their_number_links(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import discovery

    _rich_node(host, number_links=True)

    def listing(*args: object) -> object:
        raise AssertionError("<sys>/block was listed")

    monkeypatch.setattr(discovery, "sysfs_block_devices", listing)
    config = config_of(include_devices=["/dev/lun-b", "/dev/lun-n", "/dev/disk/by-id/*"])
    found = by_host_path(scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=False))
    assert [(c.host_path, c.aliases, c.identity, c.numa_nodes) for c in found.values()] == [
        ("/dev/lun-b", ("/dev/sdb",), "", (0,)),
        ("/dev/lun-n", ("/dev/nvme0n1",), "wwid:eui.n", ()),
        ("/dev/disk/by-id/wwn-a", ("/dev/sda",), "wwid:naa.a", (1,)),
    ]


def test_the_lean_scan_finds_a_slashed_kernel_name_by_the_name_a_link_reaches(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import discovery

    entry = host.sys / "block" / "cciss!c0d0"
    (entry / "device").mkdir(parents=True)
    (entry / "dev").write_text("104:0\n")
    (entry / "device" / "wwid").write_text("cciss.0\n")
    host.block_node("/dev/cciss/c0d0", (104, 0))
    host.link("/dev/array0", "cciss/c0d0")

    def listing(*args: object) -> object:
        raise AssertionError("<sys>/block was listed")

    monkeypatch.setattr(discovery, "sysfs_block_devices", listing)
    config = config_of(include_devices=["/dev/array0"])
    (array,) = scan(config, host.dev, host.sys, NOT_USED, explain_unmatched=False).candidates
    assert (array.verdict, array.aliases, array.identity) == (
        ADVERTISED,
        ("/dev/cciss/c0d0",),
        "wwid:cciss.0",
    )


def test_a_refused_path_carries_only_the_names_sysfs_gave_it(host: FakeHost) -> None:
    host.disk("sdz", node=False)
    host.dm("dm-3", "gone")
    host.remove("/dev/dm-3")
    found = by_host_path(scan(config_of(), host.dev, host.sys, NOT_USED))
    assert [
        (c.host_path, c.verdict, c.reason, c.aliases, c.kind, c.rdev) for c in found.values()
    ] == [
        ("/dev/dm-3", REFUSED, "does not exist", ("/dev/mapper/gone",), "", None),
        ("/dev/sdz", REFUSED, "does not exist", (), "", None),
    ]


def test_a_character_node_sharing_a_disks_number_gets_none_of_the_disks_facts(
    host: FakeHost,
) -> None:
    host.disk("sda")
    host.sysfs("sda/device/wwid", "naa.a")
    host.sysfs("sda/device/state", "offline")
    host.sysfs("sda/device/numa_node", "1")
    host.char_node("/dev/chr0", host.number_of("/dev/sda"))
    for explain in (True, False):
        result = scan(
            config_of(include_devices=["/dev/chr0"]),
            host.dev,
            host.sys,
            NOT_USED,
            explain_unmatched=explain,
        )
        (chr0,) = result.advertised()
        assert (chr0.host_path, chr0.kind, chr0.aliases) == ("/dev/chr0", "char", ())
        assert (chr0.identity, chr0.problem, chr0.numa_nodes) == ("", "", ())


def test_an_unmatched_dm_device_without_a_node_is_reported_with_its_mapper_name(
    host: FakeHost,
) -> None:
    host.disk("sda")
    host.dm("dm-3", "gone")
    host.remove("/dev/dm-3")
    found = by_host_path(
        scan(config_of(include_devices=["/dev/sda"]), host.dev, host.sys, NOT_USED)
    )
    dm = found["/dev/dm-3"]
    assert (dm.verdict, dm.rule, dm.aliases) == (EXCLUDED, "include-devices", ("/dev/mapper/gone",))


def test_sysfs_text_that_is_not_utf8_is_read_with_replacement_characters(host: FakeHost) -> None:
    host.disk("sda")
    (host.sys / "block" / "sda" / "device").mkdir()
    (host.sys / "block" / "sda" / "device" / "wwid").write_bytes(b"naa.\xff01  \n")
    assert only(config_of(), host).identity == "wwid:naa.\ufffd01"


def test_a_dm_device_with_an_empty_name_has_no_mapper_alias(host: FakeHost) -> None:
    host.dm("dm-0", "x")
    (host.sys / "block" / "dm-0" / "dm" / "name").write_text("\n")
    host.remove("/dev/mapper/x")
    dm = only(config_of(), host)
    assert (dm.host_path, dm.aliases, dm.verdict) == ("/dev/dm-0", (), ADVERTISED)


def test_the_deny_list_pre_check_built_afresh_never_changes_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from power_device_plugin import discovery
    from power_device_plugin.host_use import DENY_LIST, denied_reason

    monkeypatch.setattr(discovery, "_DENY_SKETCHES", discovery._deny_sketches())
    names = {"/dev/sda", "/dev/dm-0", "/dev/mapper/mpatha", "/dev/accel/0", "/dev/x/y/z"}
    for pattern, _why in DENY_LIST:
        for fill in ("", "0", "ab"):
            names |= {pattern.replace("*", fill), pattern.replace("*", fill) + "9"}
    denied = {n for n in names if denied_reason(n) is not None}
    assert len(denied) > len(DENY_LIST)
    assert {n: discovery._denied_reason(n) for n in names} == {n: denied_reason(n) for n in names}


def test_the_full_scan_lists_sysfs_once_even_for_numbers_it_does_not_know(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    from power_device_plugin import discovery

    host.disk("sda")
    host.block_node("/dev/stray0", (8, 200))
    host.block_node("/dev/stray1", (8, 201))
    real_listing = discovery.sysfs_block_devices
    listings: list[Path] = []

    def counted(sys_root: Path) -> object:
        listings.append(sys_root)
        return real_listing(sys_root)

    monkeypatch.setattr(discovery, "sysfs_block_devices", counted)
    config = config_of(include_devices=["/dev/stray*", "/dev/sda"])
    result = scan(config, host.dev, host.sys, NOT_USED)
    assert listings == [host.sys]
    assert [c.host_path for c in result.advertised()] == ["/dev/stray0", "/dev/stray1", "/dev/sda"]


def test_a_dev_root_of_slash_maps_host_paths_onto_the_root(host: FakeHost) -> None:
    # /tmp exists on every test machine: a directory, so refused, but found and inside.
    config = config_of(include_devices=["/dev/tm[p]", "/dev/tmp", "/dev/no-such-node-9z"])
    result = scan(config, Path("/"), host.sys, NOT_USED)
    assert [(c.host_path, c.path, c.verdict, c.reason) for c in result.candidates] == [
        ("/dev/tmp", "/tmp", REFUSED, "not a device node (directory)"),
        ("/dev/tmp", "/tmp", REFUSED, "not a device node (directory)"),
        ("/dev/no-such-node-9z", "/no-such-node-9z", REFUSED, "does not exist"),
    ]
