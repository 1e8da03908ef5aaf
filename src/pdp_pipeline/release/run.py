"""The strict, signed, three-architecture release (`invoke release`).

Order matters, and is the point of this module:
1. the version comes from the tag on HEAD (`vX.Y.Z`), on a clean tree, or the
   release is refused before anything is built; a release whose tags already
   name one signed index of this commit is not made again (`released`): the
   run writes its files from the registry and builds nothing;
2. the images are built from the ubi9 base pinned by digest (never a fallback)
   with provenance attestations, pushed under a *candidate* tag, and every
   architecture is verified by the testinfra suite;
3. only then: SBOMs are made from each image, attached with `cosign attest`,
   the index is signed, signatures and attestations are verified, and the
   index is pushed under the release tags (`vX.Y.Z`, `vX.Y`, the commit);
4. `manifests/` is pinned to the new digest, the install YAML rendered, and
   the summary written as Markdown (the GitHub release notes) and JSON.

A dry run (`--dry-run`) does all of it against the local registry with a
throwaway key, and is the only mode that accepts another base (debian, or a
`--base-image` mirror); every artifact it makes is marked as a dry run.

This module holds the order only. The version and tags are `version`'s, what
may be asked for is `options`'s, the provenance check is `provenance`'s, whether
a tag may be pushed (a release never moves) is `published`'s, the record and its
summary are `summary`'s, and the real side effects behind `Steps` are wired in
`steps`.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pdp_pipeline.images import registry
from pdp_pipeline.images.tags import (
    LABEL_BASE,
    LABEL_BASE_FALLBACK,
    LABEL_BASE_NAME,
    LABEL_CREATED,
    LABEL_RUNTIME,
)
from pdp_pipeline.log import Log
from pdp_pipeline.release import sbom, signing
from pdp_pipeline.release.options import ReleaseOptions, build_labels, build_settings, check_options
from pdp_pipeline.release.provenance import missing_provenance
from pdp_pipeline.release.published import ReleaseMoved, TagPlan, plan_tags
from pdp_pipeline.release.released import already_released
from pdp_pipeline.release.summary import ArchRelease, ReleaseRecord, write_summary
from pdp_pipeline.release.version import (
    ReleaseVersion,
    candidate_tag,
    read_git_state,
    release_tags,
    release_version,
)


class ReleaseFailed(Exception):
    """A step failed after the build started; the message says what was pushed so far."""


def check_base_pinned(base_names: Mapping[str, str], *, dry_run: bool) -> None:
    """A release's runtime images must name their base by digest."""
    loose = {arch: name for arch, name in base_names.items() if "@sha256:" not in name}
    if loose and not dry_run:
        shown = ", ".join(f"{arch}: {name}" for arch, name in sorted(loose.items()))
        raise ReleaseFailed(
            f"the base of {shown} is not pinned by digest; a release needs the exact base. "
            "Nothing was pushed under a release tag."
        )


@dataclass(frozen=True)
class Steps:
    """The side effects of a release, as parameters so the order can be tested."""

    build: Callable[..., Any]
    index_platforms: Callable[[str], list[tuple[str, str]]]
    raw_manifest: Callable[[str], Any]
    create_index: Callable[..., str]
    collect_inventory: Callable[[str, str], str]
    cosign: Callable[..., str]
    make_signer: Callable[[ReleaseOptions, Path], signing.Signer]
    pin_and_render: Callable[[str, Path, bool], list[Path]]
    tag_digest: Callable[[str], str | None]  # None: the registry has no such tag
    release_label: Callable[[str], str | None]  # the release label of the image a ref names
    # Copy REPO@digest (an index and all it names) into another repository by digest, no tag.
    promote: Callable[[str, str], str]
    # The labels of the image a ref names (an index: its first platform's); None: not read.
    image_labels: Callable[[str], Mapping[str, str]] | None = None


@dataclass(frozen=True)
class _Candidate:
    """The verified candidate build, as the index in the registry shows it."""

    build: Any  # build_record.BuildRecord
    index_ref: str  # repository@index digest
    platform_digests: dict[str, str]  # linux/ARCH -> image manifest digest
    sizes: dict[str, int]  # linux/ARCH -> compressed bytes


ARTIFACT_PATTERNS = (
    "release-summary.*",
    "sbom-*.cdx.json",
    "install-*.yaml",
    signing.PUBLIC_KEY_NAME,
)


def clear_artifacts(out_dir: Path) -> None:
    """Remove an earlier run's artifacts, and nothing else, from `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ARTIFACT_PATTERNS:
        for path in out_dir.glob(pattern):
            path.unlink()


def run_release(
    options: ReleaseOptions, root: Path, steps: Steps, log: Log = print
) -> ReleaseRecord:
    """Build, verify, attest, sign, tag, pin and summarise one release."""
    check_options(options)
    state = read_git_state(root)
    version = release_version(state)
    tags = release_tags(version, state.commit, state.other_tags, dry_run=options.dry_run)
    candidate_name = candidate_tag(state.commit, dry_run=options.dry_run)
    repository = f"{options.registry.rstrip('/')}/{options.repository}"
    mode = "DRY RUN of release" if options.dry_run else "release"
    log(f"release: {mode} {version.tag} of {state.commit[:12]}; tags {', '.join(tags)}")

    out_dir = options.out_dir if options.out_dir.is_absolute() else root / options.out_dir
    clear_artifacts(out_dir)
    signer = steps.make_signer(options, root)
    log(f"release: signing with {signer.describe()}")

    # Before anything is built: a release already in the registry is not made again.
    done = _published_digest(options, repository, tags, state.commit, version, signer, steps, log)
    if done is not None:
        log(f"release: already released: {repository}:{tags[0]}@{done}")
        return _record_published(
            options, repository, tags, state.commit, version, done, signer, out_dir, steps, log
        )

    candidates = f"{options.registry.rstrip('/')}/{options.candidates_repository}"
    verified_candidate = _build_candidate(options, version, candidate_name, candidates, steps)
    # Only now does anything reach the release repository: the verified index, by digest.
    log(f"release: candidate verified in {candidates}; copying it into {repository} by digest")
    candidate = replace(
        verified_candidate,
        index_ref=steps.promote(verified_candidate.index_ref, repository),
    )
    # Before anything is signed: a tag that already names another digest stops here.
    plan = plan_tags(
        repository,
        tags,
        version,
        candidate.build.index_digest,
        tag_digest=steps.tag_digest,
        release_label=steps.release_label,
        dry_run=options.dry_run,
    )
    for tag in plan.moved:
        log(f"release: DRY RUN: {repository}:{tag} names another digest; a release would stop")
    created = datetime.now(timezone.utc).replace(microsecond=0)
    marks = {"dry-run": "true"} if options.dry_run else {}
    sboms = _attach_sboms(
        candidate,
        repository,
        signer,
        out_dir,
        created,
        {**marks, "release": version.tag},
        steps,
        log,
    )
    verified = _sign_and_verify(candidate, repository, signer, {"release": tags[0], **marks}, steps)
    if verified:
        log("release: signature and SBOM attestations verified")
    _push_release_tags(candidate, repository, plan, steps, log)

    artifacts: list[Path] = [path for path, _ in sboms.values()]
    if signer.public_key is not None:
        shutil.copy(signer.public_key, out_dir / signing.PUBLIC_KEY_NAME)
        artifacts.append(out_dir / signing.PUBLIC_KEY_NAME)
    if options.pin_manifests:
        pinned = f"{repository}:{tags[0]}@{candidate.build.index_digest}"
        artifacts += steps.pin_and_render(pinned, out_dir, options.dry_run)

    result = ReleaseRecord(
        version=version.tag,
        commit=state.commit,
        dry_run=options.dry_run,
        repository=repository,
        index_digest=candidate.build.index_digest,
        tags=tags,
        base=candidate.build.base,
        fell_back=candidate.build.fell_back,
        signer=signer.describe(),
        signature_verified=verified,
        created=created.isoformat().replace("+00:00", "Z"),
        archs=_arch_releases(candidate, sboms),
        artifacts=tuple(sorted(path.name for path in artifacts)),
    )
    markdown, machine = write_summary(result, out_dir)
    log(f"release: summary in {markdown} and {machine}")
    return result


def _published_digest(
    options: ReleaseOptions,
    repository: str,
    tags: tuple[str, ...],
    commit: str,
    version: ReleaseVersion,
    signer: signing.Signer,
    steps: Steps,
    log: Log,
) -> str | None:
    """The digest of this release if the registry already publishes it, else None.

    A release refuses tags that disagree (ReleaseMoved); a dry run, whose tags are
    scratch, says so and builds anew.
    """

    def verify(ref: str) -> bool:
        try:
            steps.cosign(signing.verify_command(signer, ref), what=f"verifying {ref}")
        except signing.SigningError as error:
            log(f"release: {error}")
            return False
        return True

    if options.dry_run and signer.throwaway:
        # A throwaway key is fresh each run: it cannot verify an earlier run's signature.
        log("release: DRY RUN with a throwaway key: an earlier run's tags are not checked")
        return None
    can_verify = not (signer.keyless and not signer.certificate_identity_regexp)
    try:
        return already_released(
            repository,
            tags,
            commit,
            tags[0],
            tag_digest=steps.tag_digest,
            labels=steps.image_labels,
            verify=verify if can_verify else None,
        )
    except ReleaseMoved as refusal:
        if not options.dry_run:
            raise
        log(f"release: DRY RUN: {refusal} A release would stop here; this dry run builds anew.")
        return None


def _attested_sbom(output: str) -> dict[str, Any] | None:
    """The CycloneDX document in `cosign verify-attestation --output json` (the last one)."""
    document = None
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        envelope = json.loads(line)
        statement = json.loads(base64.b64decode(envelope.get("payload", "")) or b"{}")
        predicate = statement.get("predicate")
        if isinstance(predicate, dict):
            document = predicate
    return document


def _record_published(
    options: ReleaseOptions,
    repository: str,
    tags: tuple[str, ...],
    commit: str,
    version: ReleaseVersion,
    digest: str,
    signer: signing.Signer,
    out_dir: Path,
    steps: Steps,
    log: Log,
) -> ReleaseRecord:
    """The release files of a release already published, read back from the registry.

    The summary (Markdown and JSON) comes from the index and its platform images
    (digests, sizes, labels); each SBOM is the document attested on its platform
    image, verified with the release's signer; the public key and install YAML are
    written as a release writes them. Nothing is built, signed or tagged.
    """
    index_ref = f"{repository}@{digest}"
    platforms = dict(steps.index_platforms(index_ref))
    labels = steps.image_labels or (lambda _ref: {})
    index_labels = labels(index_ref)
    archs = []
    artifacts: list[Path] = []
    for platform, platform_digest in sorted(platforms.items()):
        image = f"{repository}@{platform_digest}"
        arch = platform.rsplit("/", 1)[-1]
        output = steps.cosign(
            signing.verify_attestation_command(signer, image, "cyclonedx"),
            what=f"verifying the SBOM attestation of {platform}",
        )
        document = _attested_sbom(output)
        if document is None:
            raise ReleaseFailed(
                f"{image} has no CycloneDX attestation this signer verifies; the release "
                f"{index_ref} is incomplete. Nothing was built or tagged."
            )
        path = out_dir / f"sbom-{arch}.cdx.json"
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        artifacts.append(path)
        components = [
            c for c in document.get("components", []) if c.get("type") != "operating-system"
        ]
        image_labels = labels(image)
        archs.append(
            ArchRelease(
                arch=arch,
                platform=platform,
                digest=platform_digest,
                size=registry.manifest_size(steps.raw_manifest(image)),
                verified=True,  # release tags are pushed only after every check passed
                runtime=image_labels.get(LABEL_RUNTIME, "unknown (not labelled)"),
                base_name=image_labels.get(LABEL_BASE_NAME, "unknown (not labelled)"),
                sbom=path.name,
                sbom_components=len(components),
                sbom_attested=True,
                provenance=not missing_provenance(
                    {platform: platform_digest},
                    steps.raw_manifest(index_ref),
                    lambda d: steps.raw_manifest(f"{repository}@{d}"),
                ),
            )
        )
    if signer.public_key is not None:
        shutil.copy(signer.public_key, out_dir / signing.PUBLIC_KEY_NAME)
        artifacts.append(out_dir / signing.PUBLIC_KEY_NAME)
    if options.pin_manifests:
        artifacts += steps.pin_and_render(
            f"{repository}:{tags[0]}@{digest}", out_dir, options.dry_run
        )
    result = ReleaseRecord(
        version=version.tag,
        commit=commit,
        dry_run=options.dry_run,
        repository=repository,
        index_digest=digest,
        tags=tags,
        base=index_labels.get(LABEL_BASE, "unknown (not labelled)"),
        fell_back=index_labels.get(LABEL_BASE_FALLBACK) == "true",
        signer=signer.describe(),
        signature_verified=True,  # already_released verified it
        created=index_labels.get(LABEL_CREATED, "unknown (not labelled)"),
        archs=tuple(archs),
        artifacts=tuple(sorted(path.name for path in artifacts)),
        already_released=True,
    )
    markdown, machine = write_summary(result, out_dir)
    log(f"release: summary (read back from the registry) in {markdown} and {machine}")
    return result


def _build_candidate(
    options: ReleaseOptions,
    version: ReleaseVersion,
    candidate_name: str,
    repository: str,
    steps: Steps,
) -> _Candidate:
    """Build under the candidate tag; stop unless every check of it passed."""
    base, allow_fallback = build_settings(options)
    record = steps.build(
        base=base,
        allow_fallback=allow_fallback,
        tag=candidate_name,
        extra_labels=build_labels(version, dry_run=options.dry_run),
        image_repository=options.candidates_repository,
    )
    pending = (
        f"only the candidate tag {candidate_name} was pushed, to {repository}; "
        "nothing reached the release repository"
    )
    unverified = [a.platform.arch for a in record.archs if a.verified is not True]
    if unverified:
        raise ReleaseFailed(
            f"verification did not pass for {', '.join(unverified)}; {pending}, "
            "nothing under a release tag"
        )
    if record.version != version.version:
        raise ReleaseFailed(
            f"the images print version {record.version}, the tag says {version.version}; {pending}"
        )
    check_base_pinned(
        {a.platform.arch: a.runtime.base_name for a in record.archs}, dry_run=options.dry_run
    )
    index_ref = f"{repository}@{record.index_digest}"
    platform_digests = dict(steps.index_platforms(index_ref))
    expected = {a.platform.platform for a in record.archs}
    if set(platform_digests) != expected:
        raise ReleaseFailed(
            f"the index {index_ref} holds {sorted(platform_digests)}, expected "
            f"{sorted(expected)}; {pending}"
        )
    lacking = missing_provenance(
        platform_digests,
        steps.raw_manifest(index_ref),
        lambda digest: steps.raw_manifest(f"{repository}@{digest}"),
    )
    if lacking:
        raise ReleaseFailed(f"no SLSA provenance attestation for {', '.join(lacking)}; {pending}")
    # With provenance each per-arch build result is an index with no size of its own;
    # the size that matters is the platform image's, from its manifest.
    sizes = {
        platform: registry.manifest_size(steps.raw_manifest(f"{repository}@{digest}"))
        for platform, digest in platform_digests.items()
    }
    return _Candidate(record, index_ref, platform_digests, sizes)


def _attach_sboms(
    candidate: _Candidate,
    repository: str,
    signer: signing.Signer,
    out_dir: Path,
    created: datetime,
    properties: Mapping[str, str],
    steps: Steps,
    log: Log,
) -> dict[str, tuple[Path, int]]:
    """Per platform: the SBOM file written and attested, and its component count."""
    written: dict[str, tuple[Path, int]] = {}
    for platform, digest in candidate.platform_digests.items():
        image = f"{repository}@{digest}"
        log(f"release: SBOM of {platform} ({image})")
        inventory = sbom.parse_inventory(steps.collect_inventory(image, platform))
        subject = sbom.ImageSubject(repository, digest, platform)
        path = out_dir / f"sbom-{platform.rsplit('/', 1)[-1]}.cdx.json"
        path.write_text(
            sbom.cyclonedx_document(inventory, subject, created, properties), encoding="utf-8"
        )
        steps.cosign(
            signing.attest_command(signer, image, path, "cyclonedx"),
            what=f"attaching the SBOM of {platform}",
        )
        written[platform] = (path, len(inventory.os_packages) + len(inventory.python_packages))
    return written


def _sign_and_verify(
    candidate: _Candidate,
    repository: str,
    signer: signing.Signer,
    annotations: Mapping[str, str],
    steps: Steps,
) -> bool | None:
    """Sign the index; verify it and the SBOMs when we know whom to trust (None if not)."""
    steps.cosign(
        signing.sign_command(signer, candidate.index_ref, annotations), what="signing the index"
    )
    if signer.keyless and not signer.certificate_identity_regexp:
        return None
    steps.cosign(
        signing.verify_command(signer, candidate.index_ref), what="verifying the signature"
    )
    for platform, digest in sorted(candidate.platform_digests.items()):
        steps.cosign(
            signing.verify_attestation_command(signer, f"{repository}@{digest}", "cyclonedx"),
            what=f"verifying the SBOM attestation of {platform}",
        )
    return True


def _push_release_tags(
    candidate: _Candidate, repository: str, plan: TagPlan, steps: Steps, log: Log
) -> None:
    """The signed index under each release tag to push, digest unchanged (or stop)."""
    signed = candidate.build.index_digest
    for tag in plan.unchanged:
        log(f"release: {repository}:{tag} already names {signed}; left as it is")
    for tag in plan.push:
        digest = steps.create_index(f"{repository}:{tag}", [candidate.index_ref], log=log)
        if digest != signed:
            raise ReleaseFailed(
                f"{repository}:{tag} got digest {digest}, not the signed {signed}; "
                "the signature would not cover it. Delete that tag before trying again."
            )
        log(f"release: {repository}:{tag} -> {digest}")


def _arch_releases(
    candidate: _Candidate, sboms: Mapping[str, tuple[Path, int]]
) -> tuple[ArchRelease, ...]:
    return tuple(
        ArchRelease(
            arch=a.platform.arch,
            platform=a.platform.platform,
            digest=candidate.platform_digests[a.platform.platform],
            size=candidate.sizes.get(a.platform.platform, a.size),
            verified=bool(a.verified),
            runtime=f"{a.runtime.ref}@{a.runtime.digest}",
            base_name=a.runtime.base_name,
            sbom=sboms[a.platform.platform][0].name,
            sbom_components=sboms[a.platform.platform][1],
            sbom_attested=True,  # _attach_sboms raised otherwise
            provenance=True,  # _build_candidate raised otherwise
        )
        for a in candidate.build.archs
    )
