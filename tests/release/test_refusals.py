"""`invoke release` refuses, before building anything, what must never be released."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.release.snapshot import git, invoke_in, snapshot_checkout

REFUSAL_TIMEOUT = 120.0  # seconds: a refusal comes before any build


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    return snapshot_checkout(tmp_path / "checkout", tag="v0.1.0")


def _refusal(repo: Path, *args: str) -> str:
    result = invoke_in(repo, "release", *args, timeout=REFUSAL_TIMEOUT)
    assert result.returncode != 0, result.stdout
    assert not (repo / ".cache" / "build").exists(), "a refused release must build nothing"
    return result.stderr + result.stdout


def test_dirty_tree_is_refused_naming_the_changed_file(checkout: Path) -> None:
    readme = checkout / "README.md"
    readme.write_text(readme.read_text() + "\nan uncommitted line\n")

    output = _refusal(checkout, "--dry-run")

    assert "release refused: the working tree has uncommitted changes (README.md)" in output


def test_untracked_file_also_makes_the_tree_dirty(checkout: Path) -> None:
    (checkout / "src" / "stray.py").write_text("x = 1\n")

    output = _refusal(checkout, "--dry-run")

    assert "uncommitted changes (src/stray.py)" in output


@pytest.mark.parametrize(
    ("tag", "reason"),
    [
        ("v1.0", "releases are tagged vMAJOR.MINOR.PATCH"),
        ("v1.0.0-rc.1", "pre-release and build suffixes are not released"),
    ],
)
def test_non_semver_tag_is_refused_saying_what_a_release_tag_is(
    tmp_path: Path, tag: str, reason: str
) -> None:
    repo = snapshot_checkout(tmp_path / "checkout", tag=None)
    git(repo, "tag", "-a", tag, "-m", tag)

    output = _refusal(repo, "--dry-run")

    assert f"release refused: tag {tag!r} is not a release tag" in output
    assert reason in output


@pytest.mark.parametrize("tag", [None, "1.0.0"])
def test_untagged_head_is_refused_with_the_command_that_tags_it(
    tmp_path: Path, tag: str | None
) -> None:
    # A tag without the v is not seen by `git describe --match 'v*'`: HEAD counts as untagged.
    repo = snapshot_checkout(tmp_path / "checkout", tag=tag)

    output = _refusal(repo, "--dry-run")

    assert "has no tag: tag the commit to release (`git tag -a v1.2.3" in output


def test_release_refuses_the_debian_base(checkout: Path) -> None:
    output = _refusal(checkout, "--base", "debian", "--key", "/nonexistent/cosign.key")

    assert "--base 'debian': a release is built on ubi9 only" in output
