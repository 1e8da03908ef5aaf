from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pdp_pipeline.images import tags

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("described", "version"),
    [
        ("v1.2.3", "1.2.3"),
        ("v1.2.3-4-gabc1234", "1.2.3.post4+gabc1234"),
        ("abc1234", "0.0.0+gabc1234"),
        ("v1.2.3-dirty", "1.2.3+dirty"),
        ("v1.2.3-4-gabc1234-dirty", "1.2.3.post4+gabc1234.dirty"),
        ("abc1234-dirty", "0.0.0+gabc1234.dirty"),
        ("v2.0.0rc1-12-g0123456789ab", "2.0.0rc1.post12+g0123456789ab"),
        ("v1.2.3-rc.1", "1.2.3rc1"),
    ],
)
def test_package_version_follows_git_description(described: str, version: str) -> None:
    assert tags.package_version(tags.parse_description(described)) == version


def test_a_tag_with_dashes_is_split_at_the_distance_not_at_its_own_dash() -> None:
    parsed = tags.parse_description("v1.2.3-rc.1-7-gdeadbee")
    assert (parsed.tag, parsed.distance, parsed.sha) == ("v1.2.3-rc.1", 7, "deadbee")


@pytest.mark.parametrize("described", ["", "  ", "not a description!", "v1.2.x"])
def test_unusable_descriptions_and_tags_are_refused_naming_the_value(described: str) -> None:
    with pytest.raises(tags.TagError):
        tags.package_version(tags.parse_description(described))


def test_release_tags_with_a_local_part_are_refused() -> None:
    with pytest.raises(tags.TagError, match="local"):
        tags.release_of("v1.2.3+build5")


@pytest.mark.parametrize(
    ("described", "tag"),
    [
        ("v1.2.3-4-gabc1234-dirty", "v1.2.3-4-gabc1234-dirty"),
        ("feature/x-1-gabc1234", "feature-x-1-gabc1234"),
        ("v1.0+meta", "v1.0-meta"),
        (".hidden", "v.hidden"),
    ],
)
def test_default_tag_is_the_description_made_valid_for_docker(described: str, tag: str) -> None:
    assert tags.docker_tag(described) == tag


def test_default_tag_leaves_room_for_the_architecture_suffix() -> None:
    long_tag = tags.docker_tag("v" + "1" * 300)
    assert len(tags.arch_tag(long_tag, "ppc64le")) <= 128


@pytest.mark.parametrize("bad", ["", "-leading-dash", "has space", "a" * 121, "x:y", "é"])
def test_an_explicit_tag_docker_would_refuse_is_refused_naming_the_flag(bad: str) -> None:
    with pytest.raises(tags.TagError, match="--tag"):
        tags.check_tag(bad)


@pytest.mark.parametrize("arch", ["amd64", "ppc64le", "s390x"])
def test_per_arch_tag_appends_the_architecture(arch: str) -> None:
    assert tags.arch_tag("v1.2.3", arch) == f"v1.2.3-{arch}"


def test_image_ref_spells_tag_arch_and_digest_refs() -> None:
    digest = "sha256:" + "a" * 64
    assert tags.image_ref("127.0.0.1:5000", "pdp", tag="v1") == "127.0.0.1:5000/pdp:v1"
    assert (
        tags.image_ref("127.0.0.1:5000", "pdp", tag="v1", arch="s390x")
        == "127.0.0.1:5000/pdp:v1-s390x"
    )
    assert tags.image_ref("127.0.0.1:5000/", "pdp", digest=digest) == (
        f"127.0.0.1:5000/pdp@{digest}"
    )
    assert tags.image_ref("", "pdp", tag="v1") == "pdp:v1"


def test_image_ref_refuses_an_arch_without_a_tag_and_a_non_sha256_digest() -> None:
    with pytest.raises(tags.TagError, match="without a tag"):
        tags.image_ref("r", "pdp", arch="amd64")
    with pytest.raises(tags.TagError, match="sha256"):
        tags.image_ref("r", "pdp", digest="md5:0")


def _identity() -> tags.Identity:
    return tags.Identity(tag="v1.2.3", version="1.2.3", revision="f" * 40, description="v1.2.3")


def test_labels_carry_title_version_revision_source_created_and_base_name() -> None:
    labels = tags.oci_labels(
        _identity(),
        created="2026-01-02T03:04:05Z",
        base="debian",
        base_name="debian:bookworm",
        fell_back=True,
        runtime_ref="r/rt@sha256:" + "0" * 64,
    )
    assert set(tags.REQUIRED_LABELS) <= set(labels)
    assert labels[tags.LABEL_VERSION] == "1.2.3"
    assert labels[tags.LABEL_REVISION] == "f" * 40
    assert labels[tags.LABEL_CREATED] == "2026-01-02T03:04:05Z"
    assert labels[tags.LABEL_BASE_NAME] == "debian:bookworm"
    assert labels[tags.LABEL_BASE_FALLBACK] == "true"


def test_extra_labels_are_added_but_cannot_replace_the_builds_own() -> None:
    common = dict(created="c", base="debian", base_name="b", fell_back=False, runtime_ref="r")
    labels = tags.oci_labels(_identity(), extra={"com.example.team": "x"}, **common)  # type: ignore[arg-type]
    assert labels["com.example.team"] == "x"
    with pytest.raises(tags.TagError, match="replace"):
        tags.oci_labels(_identity(), extra={tags.LABEL_VERSION: "9"}, **common)  # type: ignore[arg-type]


def test_created_is_the_commit_time_in_rfc3339_utc() -> None:
    assert tags.rfc3339(1700000000) == "2023-11-14T22:13:20Z"


def test_commit_time_is_heads_committer_time(tmp_path: Path) -> None:
    env = {**os.environ, "GIT_COMMITTER_DATE": "@1700000000 +0200", "GIT_AUTHOR_DATE": "@1 +0000"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(tmp_path),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        check=True,
        env=env,
    )
    assert tags.commit_time(tmp_path) == 1700000000


def test_source_label_equals_the_projects_source_url() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^Source\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert match is not None
    assert match.group(1) == tags.SOURCE_URL


def _git(repo: Path, *argv: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", *argv],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_identity_from_a_real_repository_is_dirty_aware(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("1")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-q", "-m", "one")
    _git(tmp_path, "tag", "v0.3.0")
    clean = tags.resolve_identity(tmp_path)
    assert (clean.tag, clean.version) == ("v0.3.0", "0.3.0")
    assert re.match(r"^[0-9a-f]{40}$", clean.revision)

    (tmp_path / "f").write_text("2")
    _git(tmp_path, "commit", "-q", "-am", "two")
    (tmp_path / "f").write_text("3")
    dirty = tags.resolve_identity(tmp_path)
    assert dirty.tag.startswith("v0.3.0-1-g") and dirty.tag.endswith("-dirty")
    assert re.match(r"^0\.3\.0\.post1\+g[0-9a-f]+\.dirty$", dirty.version)
    assert dirty.revision != clean.revision


def test_an_explicit_release_tag_sets_the_version_other_tags_keep_gits(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("1")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-q", "-m", "one")
    released = tags.resolve_identity(tmp_path, tag="v2.1.0")
    assert (released.tag, released.version) == ("v2.1.0", "2.1.0")
    named = tags.resolve_identity(tmp_path, tag="nightly")
    assert named.tag == "nightly"
    assert named.version.startswith("0.0.0+g")


def test_outside_a_git_repository_the_error_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(tags.TagError, match="git describe"):
        tags.resolve_identity(tmp_path)
