"""The strict, signed, three-architecture release (`invoke release`).

Order matters, and is the point of this module:
1. the version comes from the tag on HEAD (`vX.Y.Z`), on a clean tree, or the
   release is refused before anything is built;
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
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pdp_pipeline import registry, sbom, signing
from pdp_pipeline.platforms import PLATFORMS, Platform

Log = Callable[[str], None]

DRY_RUN_SUFFIX = "-dryrun"
LABEL_DRY_RUN = "io.github.power-device-plugin.dry-run"
LABEL_RELEASE = "io.github.power-device-plugin.release"
RELEASE_BASE = "ubi9"
PROVENANCE = "mode=max"
SLSA_PROVENANCE_TYPES = ("https://slsa.dev/provenance/v0.2", "https://slsa.dev/provenance/v1")
SUMMARY_MARKDOWN = "release-summary.md"
SUMMARY_JSON = "release-summary.json"

_SEMVER_TAG = re.compile(r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_LOOKS_LIKE_VERSION = re.compile(r"^v?[0-9]")


class ReleaseRefused(Exception):
    """A precondition does not hold; nothing was built or pushed."""


class ReleaseFailed(Exception):
    """A step failed after the build started; the message says what was pushed so far."""


# --- the version -------------------------------------------------------------


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


# --- options -----------------------------------------------------------------


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


def check_options(options: ReleaseOptions) -> None:
    """Refuse what only a dry run may do, before anything runs."""
    if options.dry_run:
        if options.base not in (None, RELEASE_BASE, "debian"):
            raise ReleaseRefused(f"--base {options.base!r}: a dry run builds on ubi9 or debian")
        return
    if options.base not in (None, RELEASE_BASE):
        raise ReleaseRefused(
            f"--base {options.base!r}: a release is built on {RELEASE_BASE} only; another base "
            "is for --dry-run. Nothing was built."
        )
    if options.archs != PLATFORMS:
        chosen = ", ".join(p.arch for p in options.archs)
        raise ReleaseRefused(
            f"--arch {chosen}: a release ships every architecture "
            f"({', '.join(p.arch for p in PLATFORMS)}); fewer is for --dry-run. Nothing was built."
        )
    if options.base_image:
        raise ReleaseRefused(
            f"--base-image {options.base_image!r}: a release resolves the ubi9 base itself and "
            "pins it by digest; a mirror is for --dry-run. Nothing was built."
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


def check_base_pinned(base_names: Mapping[str, str], *, dry_run: bool) -> None:
    """A release's runtime images must name their base by digest."""
    loose = {arch: name for arch, name in base_names.items() if "@sha256:" not in name}
    if loose and not dry_run:
        shown = ", ".join(f"{arch}: {name}" for arch, name in sorted(loose.items()))
        raise ReleaseFailed(
            f"the base of {shown} is not pinned by digest; a release needs the exact base. "
            "Nothing was pushed under a release tag."
        )


# --- provenance in the index --------------------------------------------------


def attestation_manifests(index: Mapping[str, Any]) -> dict[str, str]:
    """{platform image digest: attestation manifest digest} from a raw OCI index.

    buildx stores each platform's attestations as an extra manifest of the
    index, annotated with the digest of the image it describes.
    """
    found: dict[str, str] = {}
    for entry in index.get("manifests", []):
        notes = entry.get("annotations") or {}
        if notes.get("vnd.docker.reference.type") == registry.ATTESTATION_REFERENCE_TYPE:
            found[str(notes.get("vnd.docker.reference.digest"))] = str(entry["digest"])
    return found


def predicate_types(attestation_manifest: Mapping[str, Any]) -> set[str]:
    """The in-toto predicate types one attestation manifest carries."""
    return {
        str((layer.get("annotations") or {}).get("in-toto.io/predicate-type"))
        for layer in attestation_manifest.get("layers", [])
    }


def missing_provenance(
    platform_digests: Mapping[str, str], index: Mapping[str, Any], fetch: Callable[[str], Any]
) -> list[str]:
    """The platforms whose image has no SLSA provenance attestation in the index."""
    attestations = attestation_manifests(index)
    missing = []
    for platform, digest in sorted(platform_digests.items()):
        manifest_digest = attestations.get(digest)
        if manifest_digest is None or not (
            predicate_types(fetch(manifest_digest)) & set(SLSA_PROVENANCE_TYPES)
        ):
            missing.append(platform)
    return missing


# --- the record and the summary ----------------------------------------------


@dataclass(frozen=True)
class ArchRelease:
    arch: str
    platform: str
    digest: str  # the platform's image manifest in the release index
    size: int | None  # compressed bytes in the registry, as the build measured them
    verified: bool
    runtime: str  # the runtime image (by digest) the plugin image sits on
    base_name: str  # the base OS image, by digest for a release
    sbom: str  # file name of the CycloneDX document under the output directory
    sbom_components: int
    sbom_attested: bool
    provenance: bool


@dataclass(frozen=True)
class ReleaseRecord:
    version: str  # vX.Y.Z
    commit: str
    dry_run: bool
    repository: str  # registry/name
    index_digest: str
    tags: tuple[str, ...]
    base: str
    fell_back: bool
    signer: str
    signature_verified: bool | None  # None: not verified here (keyless without an identity)
    created: str
    archs: tuple[ArchRelease, ...]
    artifacts: tuple[str, ...] = field(default=())

    @property
    def refs(self) -> tuple[str, ...]:
        return tuple(f"{self.repository}:{tag}" for tag in self.tags)

    def to_json(self) -> str:
        data = asdict(self)
        data["refs"] = list(self.refs)
        data["index_ref"] = f"{self.repository}@{self.index_digest}"
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def human_size(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _mark(flag: bool | None) -> str:
    return {True: "passed", False: "FAILED", None: "not checked"}[flag]


def render_markdown(record: ReleaseRecord) -> str:
    """The release notes body: what was released, where, and what was proven."""
    lines = []
    if record.dry_run:
        lines += [
            "> **DRY RUN** — built, signed and verified against a local registry with a "
            "throwaway key. Not a release.",
            "",
        ]
    lines += [
        f"# power-device-plugin {record.version}",
        "",
        f"- Index: `{record.repository}@{record.index_digest}`",
        "- Tags: " + ", ".join(f"`{tag}`" for tag in record.tags),
        f"- Commit: `{record.commit}`",
        f"- Base: {record.base}" + (" (fell back from ubi9)" if record.fell_back else ""),
        f"- Signature: {record.signer}; verification {_mark(record.signature_verified)}",
        f"- Built: {record.created}",
        "",
        "| architecture | digest | size | verification | SBOM | provenance |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arch in record.archs:
        sbom_cell = f"{arch.sbom_components} components" + (
            ", attested" if arch.sbom_attested else ", NOT attested"
        )
        lines.append(
            f"| {arch.platform} | `{arch.digest}` | {human_size(arch.size)} "
            f"| {_mark(arch.verified)} | {sbom_cell} | {'yes' if arch.provenance else 'MISSING'} |"
        )
    lines += ["", "Base images:", ""]
    lines += [f"- {arch.platform}: `{arch.base_name}`" for arch in record.archs]
    lines += [
        "",
        "Verify the signature:",
        "",
        "```sh",
        _verify_hint(record),
        "```",
        "",
    ]
    if record.artifacts:
        lines += ["Artifacts: " + ", ".join(f"`{name}`" for name in record.artifacts), ""]
    return "\n".join(lines)


def _verify_hint(record: ReleaseRecord) -> str:
    ref = f"{record.repository}@{record.index_digest}"
    if record.signer.startswith("keyless"):
        return (
            "cosign verify --certificate-oidc-issuer "
            f"{signing.GITHUB_OIDC_ISSUER} \\\n  --certificate-identity-regexp "
            f"'^https://github.com/.+/.github/workflows/release.yml@refs/tags/' {ref}"
        )
    extra = " --insecure-ignore-tlog=true --allow-insecure-registry" if record.dry_run else ""
    return f"cosign verify --key cosign.pub{extra} {ref}"


def write_summary(record: ReleaseRecord, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = out_dir / SUMMARY_MARKDOWN
    machine = out_dir / SUMMARY_JSON
    markdown.write_text(render_markdown(record), encoding="utf-8")
    machine.write_text(record.to_json(), encoding="utf-8")
    return markdown, machine


# --- the run -----------------------------------------------------------------


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


@dataclass(frozen=True)
class _Candidate:
    """The verified candidate build, as the index in the registry shows it."""

    build: Any  # build.BuildRecord
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

    candidate = _build_candidate(options, version, candidate_name, repository, steps)
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
    _push_release_tags(candidate, repository, tags, steps, log)

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
    )
    pending = f"only the candidate tag {candidate_name} was pushed"
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
    candidate: _Candidate, repository: str, tags: Sequence[str], steps: Steps, log: Log
) -> None:
    """The signed index under each release tag, digest unchanged (or stop)."""
    signed = candidate.build.index_digest
    for tag in tags:
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


def summary_table(record: ReleaseRecord) -> list[str]:
    """The closing lines printed on the terminal."""
    rows = [f"{'architecture':<14} {'digest':<71} {'size':>10}  verification"]
    rows += [
        f"{a.platform:<14} {a.digest:<71} {human_size(a.size):>10}  {_mark(a.verified)}"
        for a in record.archs
    ]
    return rows


# --- the real side effects ----------------------------------------------------

DRY_RUN_KEY_DIR = Path(".cache") / "release" / "cosign-dryrun"
DRY_RUN_MANIFESTS_DIR = Path(".cache") / "release" / "manifests-dryrun"
# Set by GitHub Actions when the job may request an OIDC token (`id-token: write`).
OIDC_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"


def check_signing(options: ReleaseOptions, env: Mapping[str, str]) -> None:
    """Refuse, before building, a release that could not be signed."""
    if shutil.which("cosign") is None:
        raise ReleaseRefused(
            "cosign is not installed (`invoke setup` installs it from Debian trixie; in GitHub "
            "Actions use sigstore/cosign-installer). Nothing was built."
        )
    if options.key is not None and not options.key.is_file():
        raise ReleaseRefused(f"--key {options.key}: no such key file. Nothing was built.")
    if not options.dry_run and options.key is None and OIDC_ENV not in env:
        raise ReleaseRefused(
            "keyless signing needs an OIDC token, which only a CI job with `id-token: write` "
            "has; outside CI pass --key cosign.key (COSIGN_PASSWORD in the environment). "
            "Nothing was built."
        )


def make_signer(options: ReleaseOptions, root: Path) -> signing.Signer:
    """Throwaway key for a dry run, the given key, or keyless in CI (checked first)."""
    import os

    check_signing(options, os.environ)
    insecure = signing.is_loopback_registry(options.registry)
    if options.key is not None:
        public = options.key.with_suffix(".pub")
        return signing.Signer(
            key=options.key,
            public_key=public if public.is_file() else None,
            # A dry run stays offline even with a real key.
            transparency_log=not options.dry_run,
            insecure_registry=insecure,
        )
    if options.dry_run:
        return signing.throwaway_signer(root / DRY_RUN_KEY_DIR, insecure_registry=insecure)
    return signing.Signer(
        certificate_identity_regexp=options.certificate_identity_regexp,
        insecure_registry=insecure,
    )


def pin_and_render(root: Path, pinned: str, out_dir: Path, dry_run: bool) -> list[Path]:
    """Pin the manifests to the release image and render the install YAML of each variant.

    A release pins `manifests/` in place (the commit that records it is the
    maintainers' call); a dry run pins a copy, so the checkout stays untouched.
    """
    from pdp_pipeline import manifests

    tree = root
    if dry_run:
        tree = root / DRY_RUN_MANIFESTS_DIR
        if tree.exists():
            shutil.rmtree(tree)
        shutil.copytree(root / "manifests", tree / "manifests")
    manifests.pin_image(tree / manifests.IMAGE_PIN_DIR, manifests.parse_image_ref(pinned))
    written = []
    for variant in ("openshift", "kubernetes"):
        path = out_dir / f"install-{variant}.yaml"
        path.write_text(manifests.render_text(tree / manifests.VARIANTS[variant]), encoding="utf-8")
        written.append(path)
    return written


def default_steps(options: ReleaseOptions, root: Path, log: Log = print) -> Steps:
    """The steps wired to buildx, the registry, the engine, cosign and kustomize."""
    import os

    from pdp_pipeline import build

    throwaway = options.dry_run and options.key is None

    def run_build(**settings: Any) -> build.BuildRecord:
        build_options = build.BuildOptions(
            archs=options.archs,
            registry=options.registry,
            repository=options.repository,
            base_image=options.base_image,
            builder=options.builder,
            push=True,
            verify=True,
            provenance=PROVENANCE,
            **settings,
        )
        return build.run_build(build_options, log=log, root=root)

    def cosign(command: Sequence[str], *, what: str) -> str:
        log(f"release: {what}")
        env = signing.cosign_environment(os.environ, throwaway=throwaway)
        return signing.run_cosign(command, what=what, env=env)

    def create_index(target: str, sources: Sequence[str], log: Log = log) -> str:
        return registry.create_index(target, sources, log=log)

    return Steps(
        build=run_build,
        index_platforms=lambda ref: registry.index_platforms(ref, log=log),
        raw_manifest=lambda ref: registry.raw_manifest(ref, log=log),
        create_index=create_index,
        collect_inventory=sbom.collect_inventory,
        cosign=cosign,
        make_signer=make_signer,
        pin_and_render=lambda pinned, out, dry: pin_and_render(root, pinned, out, dry),
    )
