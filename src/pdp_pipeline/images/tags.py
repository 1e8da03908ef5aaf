"""Image tags, image references, the package version and the OCI labels, from git.

One `git describe --tags --match 'v*' --always --dirty` is the source of both the
default image tag and the PEP 440 version baked into the wheel, so the tag an
image is pushed under and the `--version` it prints always agree.
`image_ref()` is the only function that spells an image reference; every other
module calls it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from packaging.version import InvalidVersion, Version

from pdp_pipeline.platforms import PLATFORMS

TITLE = "power-device-plugin"
DESCRIPTION = "Kubernetes device plugin that grants protected host devices to non-privileged pods"
# Kept equal to [project.urls] Source in pyproject.toml (a unit test compares them).
SOURCE_URL = "https://github.com/power-device-plugin/power-device-plugin"
LICENSE = "Apache-2.0"

# The OCI annotation keys (image-spec annotations.md), plus ours for the base choice.
LABEL_TITLE = "org.opencontainers.image.title"
LABEL_DESCRIPTION = "org.opencontainers.image.description"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_SOURCE = "org.opencontainers.image.source"
LABEL_CREATED = "org.opencontainers.image.created"
LABEL_LICENSES = "org.opencontainers.image.licenses"
LABEL_BASE_NAME = "org.opencontainers.image.base.name"
LABEL_BASE = "io.github.power-device-plugin.base"
LABEL_BASE_FALLBACK = "io.github.power-device-plugin.base.fallback"
LABEL_RUNTIME = "io.github.power-device-plugin.runtime"
REQUIRED_LABELS = (
    LABEL_TITLE,
    LABEL_VERSION,
    LABEL_REVISION,
    LABEL_SOURCE,
    LABEL_CREATED,
    LABEL_BASE_NAME,
)

DESCRIBE_COMMAND = ("git", "describe", "--tags", "--match", "v*", "--always", "--dirty")
# Docker's tag grammar: a word character, then up to 127 word characters, dots or dashes.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_NOT_TAG_CHAR_RE = re.compile(r"[^A-Za-z0-9_.-]")
_DISTANCE_RE = re.compile(r"^(?P<tag>.+)-(?P<distance>\d+)-g(?P<sha>[0-9a-f]{4,40})$")
_SHA_RE = re.compile(r"^[0-9a-f]{4,40}$")
# The longest architecture suffix we append (`-<arch>`), so per-arch tags stay valid.
_ARCH_SUFFIX_ROOM = max(len(f"-{p.arch}") for p in PLATFORMS)
MAX_TAG_LENGTH = 128 - _ARCH_SUFFIX_ROOM


class TagError(ValueError):
    """A tag, description or version that cannot be used; the message names the value."""


@dataclass(frozen=True)
class GitDescription:
    """The parts of one `git describe` output."""

    text: str  # the output as git printed it
    tag: str | None  # the nearest `v*` tag, or None when the history has none
    distance: int  # commits since that tag (0 when HEAD is the tag, or there is no tag)
    sha: str | None  # abbreviated commit, present unless HEAD is exactly the tag
    dirty: bool  # the working tree had changes


def parse_description(text: str) -> GitDescription:
    """Split `v1.2.3`, `v1.2.3-4-gabc1234`, `abc1234` (each maybe `-dirty`) into parts."""
    raw = text.strip()
    if not raw:
        raise TagError("git describe printed nothing; cannot derive a tag or version")
    dirty = raw.endswith("-dirty")
    core = raw[: -len("-dirty")] if dirty else raw
    match = _DISTANCE_RE.match(core)
    if match:
        return GitDescription(raw, match["tag"], int(match["distance"]), match["sha"], dirty)
    if core.startswith("v"):
        return GitDescription(raw, core, 0, None, dirty)
    if _SHA_RE.match(core):
        return GitDescription(raw, None, 0, core, dirty)
    raise TagError(f"git describe printed {raw!r}: neither a v* tag nor a commit id")


def release_of(tag: str) -> str:
    """The normalized PEP 440 release a `v*` tag names: `v1.2.3` → `1.2.3`."""
    if not tag.startswith("v"):
        raise TagError(f"tag {tag!r} does not start with 'v'; release tags look like v1.2.3")
    try:
        version = Version(tag[1:])
    except InvalidVersion:
        raise TagError(f"tag {tag!r}: {tag[1:]!r} is not a PEP 440 version") from None
    if version.local is not None:
        raise TagError(f"tag {tag!r} carries a local version part; release tags cannot")
    return str(version)


def package_version(description: GitDescription) -> str:
    """The PEP 440 version of the wheel built from this description.

    `v1.2.3` → `1.2.3`; `v1.2.3-4-gabc1234` → `1.2.3.post4+gabc1234`;
    `abc1234` → `0.0.0+gabc1234`; `-dirty` adds `dirty` to the local part.
    """
    public = release_of(description.tag) if description.tag else "0.0.0"
    if description.distance:
        public += f".post{description.distance}"
    local = []
    if description.sha and (description.distance or description.tag is None):
        local.append(f"g{description.sha}")
    if description.dirty:
        local.append("dirty")
    text = public + ("+" + ".".join(local) if local else "")
    # Normalize once more so the string equals what setuptools and importlib report.
    return str(Version(text))


def docker_tag(text: str) -> str:
    """A valid image tag for a git description: other characters become '-'."""
    tag = _NOT_TAG_CHAR_RE.sub("-", text.strip())
    if tag and not re.match(r"[A-Za-z0-9_]", tag[0]):
        tag = "v" + tag
    tag = tag[:MAX_TAG_LENGTH]
    check_tag(tag, flag="git describe")
    return tag


def check_tag(tag: str, flag: str = "--tag") -> str:
    """Refuse a tag docker would refuse (leaving room for the `-<arch>` suffix)."""
    if not _TAG_RE.match(tag) or len(tag) > MAX_TAG_LENGTH:
        raise TagError(
            f"{flag} {tag!r} is not a valid image tag: use letters, digits, '_', '.', '-'"
            f" (not first), at most {MAX_TAG_LENGTH} characters"
        )
    return tag


def arch_tag(tag: str, arch: str) -> str:
    """The tag of one architecture's image: `<tag>-<arch>`."""
    return f"{tag}-{arch}"


def image_ref(
    registry: str,
    repository: str,
    *,
    tag: str | None = None,
    arch: str | None = None,
    digest: str | None = None,
) -> str:
    """`registry/repository[:tag[-arch]][@digest]` — the one place refs are spelled."""
    ref = f"{registry.rstrip('/')}/{repository.strip('/')}" if registry else repository
    if tag is not None:
        ref += ":" + (arch_tag(tag, arch) if arch else tag)
    elif arch is not None:
        raise TagError(f"image_ref: arch {arch!r} given without a tag for {ref}")
    if digest is not None:
        if not digest.startswith("sha256:"):
            raise TagError(f"image_ref: {digest!r} is not a sha256 digest (for {ref})")
        ref += "@" + digest
    return ref


@dataclass(frozen=True)
class Identity:
    """What a build is called: tag, package version, commit."""

    tag: str
    version: str
    revision: str
    description: str
    # HEAD's commit time (seconds since the epoch): SOURCE_DATE_EPOCH of the build and
    # the image's `created`, so one commit builds the same digests wherever it is built.
    commit_time: int = 0


def describe(root: Path) -> str:
    """`git describe` of the working tree at root."""
    return _git(root, list(DESCRIBE_COMMAND))


def revision(root: Path) -> str:
    """The full commit id of HEAD (the `revision` label)."""
    return _git(root, ["git", "rev-parse", "HEAD"])


def resolve_identity(root: Path, tag: str | None = None) -> Identity:
    """Tag, version and revision for a build of the tree at root.

    Without `tag`, both come from `git describe`. An explicit `v*` release tag
    (`--tag v1.2.3`) also sets the version, so the release image prints what its
    tag says; any other explicit tag keeps the version from git.
    """
    text = describe(root)
    version = package_version(parse_description(text))
    if tag is None:
        chosen = docker_tag(text)
    else:
        chosen = check_tag(tag)
        if re.match(r"^v\d", chosen):
            version = release_of(chosen)
    return Identity(
        tag=chosen,
        version=version,
        revision=revision(root),
        description=text,
        commit_time=commit_time(root),
    )


def commit_time(root: Path) -> int:
    """HEAD's committer time, seconds since the epoch (`git log -1 --format=%ct`)."""
    text = _git(root, ["git", "log", "-1", "--format=%ct"])
    try:
        return int(text)
    except ValueError:
        raise TagError(
            f"`git log -1 --format=%ct` in {root} printed {text!r}, not a time"
        ) from None


def rfc3339(epoch: int) -> str:
    """The `created` label value of a time: RFC 3339, UTC, whole seconds."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def oci_labels(
    identity: Identity,
    *,
    created: str,
    base: str,
    base_name: str,
    fell_back: bool,
    runtime_ref: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The labels of one plugin image. `extra` may add keys, never replace ours."""
    labels = {
        LABEL_TITLE: TITLE,
        LABEL_DESCRIPTION: DESCRIPTION,
        LABEL_VERSION: identity.version,
        LABEL_REVISION: identity.revision,
        LABEL_SOURCE: SOURCE_URL,
        LABEL_CREATED: created,
        LABEL_LICENSES: LICENSE,
        LABEL_BASE_NAME: base_name,
        LABEL_BASE: base,
        LABEL_BASE_FALLBACK: "true" if fell_back else "false",
        LABEL_RUNTIME: runtime_ref,
    }
    for key, value in (extra or {}).items():
        if key in labels:
            raise TagError(f"extra label {key!r} would replace a label the build sets; refused")
        labels[key] = value
    return labels


def _git(root: Path, argv: list[str]) -> str:
    try:
        result = subprocess.run(
            argv, cwd=root, capture_output=True, text=True, check=False, timeout=30
        )
    except OSError as error:
        raise TagError(f"`{' '.join(argv)}` could not run in {root}: {error}") from None
    if result.returncode != 0:
        raise TagError(
            f"`{' '.join(argv)}` failed in {root} (exit {result.returncode}):"
            f" {result.stderr.strip()}"
        )
    return result.stdout.strip()
