"""What the registry already publishes under the release tags, and what may change.

A release never moves: `vX.Y.Z` and the commit tag name one index forever. A
rerun (after a late failure) that built another digest stops before anything is
signed or tagged, naming both digests; a tag that already names this digest is
left as it is. Only the minor tag `vX.Y` is meant to move, and only forward: from
an older patch of the same minor line to this one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pdp_pipeline.release.version import (
    DRY_RUN_SUFFIX,
    ReleaseRefused,
    ReleaseVersion,
    parse_release_tag,
)


class ReleaseMoved(Exception):
    """A release tag already names another digest; nothing was signed, nothing repointed."""


@dataclass(frozen=True)
class TagPlan:
    """Which release tags to push, and which already name the release's digest."""

    push: tuple[str, ...]
    unchanged: tuple[str, ...]
    moved: tuple[str, ...] = ()  # dry run only: tags a release would refuse to move


def _older_patch_of(label: str | None, version: ReleaseVersion) -> bool:
    """True if `label` (the image's release label) is an earlier patch of version's minor."""
    if not label:
        return False
    try:
        found = parse_release_tag(label.removesuffix(DRY_RUN_SUFFIX))
    except ReleaseRefused:  # a label that is not a release tag proves nothing
        return False
    return (found.major, found.minor) == (version.major, version.minor) and found < version


def plan_tags(
    repository: str,
    tags: Sequence[str],
    version: ReleaseVersion,
    digest: str,
    *,
    tag_digest: Callable[[str], str | None],
    release_label: Callable[[str], str | None],
    dry_run: bool,
) -> TagPlan:
    """Look every release tag up; refuse (ReleaseMoved) if one would move.

    `tag_digest(ref)` is the digest `ref` names in the registry, None if it does
    not exist; `release_label(ref)` the release label of the image it names. In a
    dry run, whose tags are scratch, a tag that would move is repointed and listed
    in `moved` instead, so the run still shows what a release would refuse.
    """
    push: list[str] = []
    unchanged: list[str] = []
    moved: list[str] = []
    refusals: list[str] = []
    minor_tags = {version.minor_tag, version.minor_tag + DRY_RUN_SUFFIX}
    for tag in tags:
        ref = f"{repository}:{tag}"
        current = tag_digest(ref)
        if current is None:
            push.append(tag)
        elif current == digest:
            unchanged.append(tag)
        elif tag in minor_tags and _older_patch_of(release_label(ref), version):
            push.append(tag)  # the minor line moves forward to its newest patch
        else:
            refusals.append(f"{ref} already names {current}, this run built {digest}")
            moved.append(tag)
            push.append(tag)
    if refusals and not dry_run:
        raise ReleaseMoved(
            "a release never moves: "
            + "; ".join(refusals)
            + ". Nothing was signed and no tag was repointed; the new build stays under its"
            " candidate tag. Release a new version instead."
        )
    return TagPlan(tuple(push), tuple(unchanged), tuple(moved))
