"""What a release may be asked for, and what it asks the build for.

Only a dry run may choose another base than ubi9. Fewer architectures or a base mirror
are for a dry run, or for a release to a registry on this host (loopback: nothing
leaves the machine, as in the workflow rehearsal, docs/rehearsal.md); a release to any
other registry refuses them before anything runs. Every image of a release
carries the release tag in a label, and a dry run's images say so in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pdp_pipeline.images.registry import is_loopback_registry
from pdp_pipeline.platforms import PLATFORMS, Platform
from pdp_pipeline.release.version import DRY_RUN_SUFFIX, ReleaseRefused, ReleaseVersion

LABEL_DRY_RUN = "io.github.power-device-plugin.dry-run"
LABEL_RELEASE = "io.github.power-device-plugin.release"
RELEASE_BASE = "ubi9"
CANDIDATES_SUFFIX = "-candidates"


@dataclass(frozen=True)
class ReleaseOptions:
    dry_run: bool = False
    registry: str = "127.0.0.1:5000"
    repository: str = "power-dev-plugin"
    archs: tuple[Platform, ...] = PLATFORMS
    base: str | None = None  # None: ubi9 (a dry run falls back to debian if ubi9 is out of reach)
    base_image: str | None = None  # a ubi9 mirror: dry run only
    builder: str | None = None  # a buildx builder, e.g. with native ppc64le/s390x nodes
    key: Path | None = None  # cosign private key; None: keyless (release) or throwaway (dry run)
    certificate_identity_regexp: str | None = None  # keyless: who may have signed
    out_dir: Path = Path("out/release")
    pin_manifests: bool = True
    # Where the candidate is built and verified; None: `<repository>-candidates`. Only a
    # verified candidate is copied (by digest) into `repository`, then signed, then tagged.
    candidates: str | None = None

    @property
    def candidates_repository(self) -> str:
        return self.candidates or f"{self.repository}{CANDIDATES_SUFFIX}"


def check_options(options: ReleaseOptions) -> None:
    """Refuse what only a dry run may do, before anything runs."""
    if options.dry_run:
        if options.base not in (None, RELEASE_BASE, "debian"):
            raise ReleaseRefused(f"--base {options.base!r}: a dry run builds on ubi9 or debian")
        return
    if options.candidates_repository == options.repository:
        raise ReleaseRefused(
            f"--candidates {options.candidates!r} is the release repository: candidates are "
            "built and verified elsewhere. Nothing was built."
        )
    if options.base not in (None, RELEASE_BASE):
        raise ReleaseRefused(
            f"--base {options.base!r}: a release is built on {RELEASE_BASE} only; another base "
            "is for --dry-run. Nothing was built."
        )
    # A release that publishes (to a registry off this host) ships every platform on the
    # pinned base; one kept on this host (a rehearsal) may take fewer and a mirror.
    if is_loopback_registry(options.registry):
        return
    if options.archs != PLATFORMS:
        chosen = ", ".join(p.arch for p in options.archs)
        raise ReleaseRefused(
            f"--arch {chosen}: a release to {options.registry} ships every architecture "
            f"({', '.join(p.arch for p in PLATFORMS)}); fewer is for --dry-run or a release to"
            " this host's registry. Nothing was built."
        )
    if options.base_image:
        raise ReleaseRefused(
            f"--base-image {options.base_image!r}: a release to {options.registry} resolves the"
            " ubi9 base itself and pins it by digest; a mirror is for --dry-run or a release to"
            " this host's registry. Nothing was built."
        )


def build_labels(version: ReleaseVersion, *, dry_run: bool) -> dict[str, str]:
    """Labels the release adds to every image (the build sets the OCI ones)."""
    labels = {LABEL_RELEASE: version.tag + (DRY_RUN_SUFFIX if dry_run else "")}
    if dry_run:
        labels[LABEL_DRY_RUN] = "true"
    return labels


def build_settings(options: ReleaseOptions) -> tuple[str, bool]:
    """(base, allow_fallback) for the build: strict unless this is a dry run on ubi9."""
    base = options.base or RELEASE_BASE
    allow_fallback = options.dry_run and options.base is None and options.base_image is None
    return base, allow_fallback
