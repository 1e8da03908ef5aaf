"""The record of a build: what a later step needs to know, kept as JSON.

`run_build` writes it to `.cache/build/last-build.json`; `verify`, `release`,
the manifests and the summary read it. The record names each architecture's
image, digest, size, runtime and verification result, and the index of them all.
`BuildError`, which every build step raises (quoting a failed command's
`last_lines`), lives here because reading a record raises it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdp_pipeline.images import runtime
from pdp_pipeline.platforms import Platform, by_arch, select

ROOT = Path(__file__).resolve().parents[3]
BUILD_DIR = Path(".cache") / "build"
RECORD_NAME = "last-build.json"
RECORD_FORMAT = 1


class BuildError(Exception):
    """A build step failed; the message names the step, the architecture and the cause."""


def last_lines(text: str, count: int = 25) -> str:
    """The tail of a command's output, as a BuildError quotes it."""
    return "\n".join(text.rstrip().splitlines()[-count:])


@dataclass
class ArchResult:
    """One architecture's plugin image."""

    platform: Platform
    image_ref: str  # <registry>/<repository>:<tag>-<arch>
    digest: str  # of what was pushed (or loaded) under image_ref
    size: int | None  # bytes: compressed in the registry, or unpacked in the local engine
    runtime: runtime.RuntimeImage
    verified: bool | None = None  # None: verification did not run
    seconds: float = 0.0  # the buildx build (and push) of this image

    def digest_ref(self) -> str:
        """`<registry>/<repository>@<digest>`: how verification pulls it."""
        return self.image_ref.rsplit(":", 1)[0] + "@" + self.digest


@dataclass
class BuildRecord:
    """Everything a later step needs to know about one build."""

    tag: str
    version: str
    revision: str
    index_ref: str | None  # None when nothing was pushed
    index_digest: str | None
    base: str  # the base actually used
    fell_back: bool  # ubi9 was asked for and debian was used
    archs: list[ArchResult]
    registry: str = ""
    repository: str = ""
    requested_base: str = ""
    pushed: bool = True
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(_record_to_dict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BuildRecord:
        return _record_from_dict(json.loads(text))

    def result_for(self, arch: str) -> ArchResult:
        for result in self.archs:
            if result.platform.arch == arch:
                return result
        built = ", ".join(r.platform.arch for r in self.archs) or "none"
        raise BuildError(f"the build record has no {arch} image (built: {built})")


def record_path(root: Path = ROOT) -> Path:
    return root / BUILD_DIR / RECORD_NAME


def save_record(record: BuildRecord, path: Path) -> None:
    """Write atomically, so a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(record.to_json())
    temporary.replace(path)


def load_record(path: Path) -> BuildRecord:
    try:
        return BuildRecord.from_json(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"no build record at {path}: run `invoke build` first") from None
    except (ValueError, KeyError, TypeError) as error:
        raise BuildError(f"the build record {path} is unreadable ({error!r})") from None


def archs_to_verify(record: BuildRecord, spec: str) -> list[str]:
    """`--arch` of `verify`: `all` means every architecture the record built."""
    if spec.strip() == "all":
        return [r.platform.arch for r in record.archs]
    wanted = [p.arch for p in select(spec)]
    for arch in wanted:
        record.result_for(arch)  # refuses one the record lacks, naming what it has
    return wanted


# --- the record's JSON -----------------------------------------------------------


def _record_to_dict(record: BuildRecord) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "tag": record.tag,
        "version": record.version,
        "revision": record.revision,
        "index_ref": record.index_ref,
        "index_digest": record.index_digest,
        "base": record.base,
        "requested_base": record.requested_base,
        "fell_back": record.fell_back,
        "registry": record.registry,
        "repository": record.repository,
        "pushed": record.pushed,
        "created": record.created,
        "archs": [
            {
                "arch": r.platform.arch,
                "platform": r.platform.platform,
                "image_ref": r.image_ref,
                "digest": r.digest,
                "size": r.size,
                "verified": r.verified,
                "seconds": r.seconds,
                "runtime": _runtime_to_dict(r.runtime),
            }
            for r in record.archs
        ],
    }


def _record_from_dict(data: Mapping[str, Any]) -> BuildRecord:
    if data.get("format") != RECORD_FORMAT:
        raise ValueError(f"record format {data.get('format')!r}, expected {RECORD_FORMAT}")
    return BuildRecord(
        tag=data["tag"],
        version=data["version"],
        revision=data["revision"],
        index_ref=data["index_ref"],
        index_digest=data["index_digest"],
        base=data["base"],
        fell_back=bool(data["fell_back"]),
        archs=[
            ArchResult(
                platform=by_arch(item["arch"]),
                image_ref=item["image_ref"],
                digest=item["digest"],
                size=item["size"],
                runtime=_runtime_from_dict(item["runtime"]),
                verified=item["verified"],
                seconds=float(item.get("seconds", 0.0)),
            )
            for item in data["archs"]
        ],
        registry=data.get("registry", ""),
        repository=data.get("repository", ""),
        requested_base=data.get("requested_base", ""),
        pushed=bool(data.get("pushed", True)),
        created=data.get("created", ""),
    )


def _runtime_to_dict(image: runtime.RuntimeImage) -> dict[str, Any]:
    return {
        "base": image.base,
        "arch": image.platform.arch,
        "ref": image.ref,
        "digest": image.digest,
        "key": image.key,
        "reused": image.reused,
        "base_name": image.base_name,
    }


def _runtime_from_dict(data: Mapping[str, Any]) -> runtime.RuntimeImage:
    return runtime.RuntimeImage(
        base=data["base"],
        platform=by_arch(data["arch"]),
        ref=data["ref"],
        digest=data["digest"],
        key=data["key"],
        reused=bool(data["reused"]),
        base_name=data["base_name"],
    )
