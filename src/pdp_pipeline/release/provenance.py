"""SLSA provenance in an OCI index: which platform images lack an attestation.

buildx (`--provenance=mode=max`) stores each platform's attestations as an
extra manifest of the index; a release refuses an index in which any platform
image has no SLSA provenance among them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from pdp_pipeline.images import registry

SLSA_PROVENANCE_TYPES = ("https://slsa.dev/provenance/v0.2", "https://slsa.dev/provenance/v1")


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
