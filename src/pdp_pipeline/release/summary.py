"""The record of a release and its summary: Markdown release notes, JSON, terminal table.

The Markdown is the body of the GitHub release (what was released, where, and
what was proven, with the command that verifies the signature); the JSON is the
same record for machines; a dry run's summary says it is not a release.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pdp_pipeline.release import signing

SUMMARY_MARKDOWN = "release-summary.md"
SUMMARY_JSON = "release-summary.json"


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
    # True: a rerun found this release already published and built nothing; the
    # record was read back from the registry (SBOMs from their verified attestations).
    already_released: bool = False

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
    ]
    if record.already_released:
        lines += [
            "Already released: this summary was read back from the registry by a rerun that "
            "built, signed and tagged nothing; SBOMs are the attested documents.",
            "",
        ]
    lines += [
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


def summary_table(record: ReleaseRecord) -> list[str]:
    """The closing lines printed on the terminal."""
    rows = [f"{'architecture':<14} {'digest':<71} {'size':>10}  verification"]
    rows += [
        f"{a.platform:<14} {a.digest:<71} {human_size(a.size):>10}  {_mark(a.verified)}"
        for a in record.archs
    ]
    return rows
