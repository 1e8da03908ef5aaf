"""Which version a checkout releases, and under which tags.

A release is the `vX.Y.Z` tag on HEAD of a clean checkout, as git reports it
(semantic versioning, no leading zeros, no pre-release suffix); anything else
is refused before anything is built. The index is pushed under `vX.Y.Z`, the
commit, and `vX.Y` while this is the newest patch of its minor line; it waits
under a candidate tag until it is verified. A dry run suffixes every tag with
`-dryrun`. `ReleaseRefused`, which every refusal of a release raises, lives
here because the version is the first thing refused.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DRY_RUN_SUFFIX = "-dryrun"

_SEMVER_TAG = re.compile(r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_LOOKS_LIKE_VERSION = re.compile(r"^v?[0-9]")


class ReleaseRefused(Exception):
    """A precondition does not hold; nothing was built or pushed."""


@dataclass(frozen=True, order=True)
class ReleaseVersion:
    major: int
    minor: int
    patch: int

    @property
    def tag(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    @property
    def version(self) -> str:
        """The package version the images print (`--version`)."""
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def minor_tag(self) -> str:
        return f"v{self.major}.{self.minor}"


def parse_release_tag(tag: str) -> ReleaseVersion:
    """`v1.2.3` → ReleaseVersion(1, 2, 3); anything else is refused, saying why."""
    match = _SEMVER_TAG.match(tag)
    if match:
        return ReleaseVersion(int(match[1]), int(match[2]), int(match[3]))
    if not tag.startswith("v") and _LOOKS_LIKE_VERSION.match(tag):
        hint = f"; did you mean v{tag}?"
    elif re.match(r"^v[0-9]+\.[0-9]+\.[0-9]+[-+]", tag):
        hint = "; pre-release and build suffixes are not released by this task"
    else:
        hint = ""
    raise ReleaseRefused(
        f"tag {tag!r} is not a release tag: releases are tagged vMAJOR.MINOR.PATCH "
        f"(semantic versioning, no leading zeros, e.g. v1.4.0){hint}. Nothing was built."
    )


@dataclass(frozen=True)
class GitState:
    """What the release needs to know about the checkout."""

    commit: str  # full sha of HEAD
    exact_tag: str | None  # `git describe --exact-match` of HEAD, None if untagged
    changes: tuple[str, ...]  # `git status --porcelain` lines (empty: clean)
    other_tags: tuple[str, ...] = ()  # every v* tag in the repository


def release_version(state: GitState) -> ReleaseVersion:
    """The version to release from this checkout, or ReleaseRefused saying why not."""
    if state.changes:
        shown = ", ".join(line[3:] for line in state.changes[:5])
        more = f" and {len(state.changes) - 5} more" if len(state.changes) > 5 else ""
        raise ReleaseRefused(
            f"the working tree has uncommitted changes ({shown}{more}): a release is built "
            "from a clean checkout of its tag only. Commit or remove them; nothing was built."
        )
    if state.exact_tag is None:
        raise ReleaseRefused(
            f"HEAD ({state.commit[:12]}) has no tag: tag the commit to release "
            "(`git tag -a v1.2.3 -m v1.2.3`) and run again. Nothing was built."
        )
    return parse_release_tag(state.exact_tag)


def release_tags(
    version: ReleaseVersion, commit: str, existing: Iterable[str] = (), *, dry_run: bool
) -> tuple[str, ...]:
    """The tags the release index is pushed under.

    `vX.Y.Z` and the commit always; `vX.Y` only when this is the newest patch
    of its minor line, so releasing a fix for an older patch never moves the
    minor tag backwards. A dry run suffixes every tag with `-dryrun`.
    """
    newer = [
        v
        for v in (_semver_or_none(t) for t in existing)
        if v is not None and (v.major, v.minor) == (version.major, version.minor) and v > version
    ]
    tags = [version.tag] + ([] if newer else [version.minor_tag]) + [commit]
    return tuple(t + DRY_RUN_SUFFIX for t in tags) if dry_run else tuple(tags)


def candidate_tag(commit: str, *, dry_run: bool) -> str:
    """Where the images wait, unverified, before they may carry a release tag."""
    return f"candidate-{commit[:12]}" + (DRY_RUN_SUFFIX if dry_run else "")


def _semver_or_none(tag: str) -> ReleaseVersion | None:
    try:
        return parse_release_tag(tag)
    except ReleaseRefused:
        return None


def read_git_state(root: Path) -> GitState:
    """HEAD, its exact `v*` tag, the uncommitted changes, and every `v*` tag."""
    commit = _git(root, "rev-parse", "HEAD").strip()
    described = subprocess.run(
        ["git", "describe", "--exact-match", "--tags", "--match", "v*", "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    exact = described.stdout.strip() if described.returncode == 0 else None
    changes = tuple(
        line for line in _git(root, "status", "--porcelain").splitlines() if line.strip()
    )
    tags = tuple(_git(root, "tag", "--list", "v*").split())
    return GitState(commit=commit, exact_tag=exact, changes=changes, other_tags=tags)


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ReleaseRefused(
            f"`git {' '.join(args)}` failed in {root}: {result.stderr.strip()}; "
            "a release runs in a git checkout. Nothing was built."
        )
    return result.stdout
