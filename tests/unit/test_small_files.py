"""Reading sysfs and /proc files without the text-I/O stack, and mapping found paths
to host paths without relpath: the same answers as the slow ways, on the edges."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest

from power_device_plugin import small_files
from power_device_plugin.discovery import to_host_path


def test_reads_a_short_file_whole(tmp_path: Path) -> None:
    (tmp_path / "dev").write_text("253:4\n")
    assert small_files.read_text(str(tmp_path / "dev")) == "253:4\n"


def test_reads_past_one_chunk(tmp_path: Path) -> None:
    # Exactly one chunk, and one chunk and a bit: the loop must read on to the end.
    for size in (small_files._CHUNK, small_files._CHUNK + 17, 3 * small_files._CHUNK):
        text = "".join(chr(ord("a") + i % 26) for i in range(size))
        (tmp_path / "big").write_text(text)
        assert small_files.read_text(str(tmp_path / "big")) == text


def test_replaces_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "name").write_bytes(b"mpath\xffa\n")
    assert small_files.read_text(str(tmp_path / "name")) == "mpath\ufffda\n"


@pytest.mark.parametrize("name", ["missing", "a-directory", "bad\0name"])
def test_unreadable_gives_none(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-directory").mkdir()
    assert small_files.read_text(str(tmp_path / name)) is None


def test_empty_file_is_empty_text_not_none(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert small_files.read_text(str(tmp_path / "empty")) == ""


def test_no_descriptor_is_left_open(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        small_files.read_text(str(tmp_path / "f"))
        small_files.read_text(str(tmp_path / "a-directory-that-is-not-there"))
    assert len(os.listdir("/proc/self/fd")) == before


def test_list_dir_sorted_and_empty_when_unlistable(tmp_path: Path) -> None:
    for name in ("sdb", "sda", "dm-0"):
        (tmp_path / name).touch()
    assert small_files.list_dir(str(tmp_path)) == ["dm-0", "sda", "sdb"]
    assert small_files.list_dir(str(tmp_path / "sda")) == []
    assert small_files.list_dir(str(tmp_path / "missing")) == []


def _by_relpath(path: str, dev_root: str) -> str:
    relative = posixpath.relpath(posixpath.normpath(path), dev_root)
    return posixpath.normpath("/dev/" + relative)


@pytest.mark.parametrize("dev_root", ["/host/dev", "/host/dev/", "/", "//host/dev", "host/dev"])
@pytest.mark.parametrize(
    "relative",
    ["dm-0", "mapper/mpatha", "disk/by-id/wwn-0x5000", "./dm-1", "a/../sda", "..", "../etc", ""],
)
def test_host_path_is_what_relpath_gives(
    dev_root: str, relative: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = dev_root.rstrip("/") + "/" + relative if relative else dev_root
    monkeypatch.chdir(tmp_path)  # a relative root is taken from the working directory
    assert to_host_path(path, dev_root) == _by_relpath(path, dev_root)
