"""The index of a build: exactly the built platforms, each entry the image verified."""

from __future__ import annotations

from typing import Any

import pytest

from pdp_pipeline.images import record as build_record
from pdp_pipeline.images import registry

pytestmark = pytest.mark.engine


def _quiet(_: str) -> None:
    """Registry calls log their retries; the suite's own assertions say enough."""


def test_index_lists_exactly_the_built_platforms(record: build_record.BuildRecord) -> None:
    assert record.index_ref is not None
    entries = registry.index_platforms(record.index_ref, log=_quiet)
    listed = sorted(platform for platform, _ in entries)
    assert listed == sorted(r.platform.platform for r in record.archs)


def test_index_tag_still_points_at_the_recorded_index(record: build_record.BuildRecord) -> None:
    assert record.index_ref is not None
    assert registry.manifest_digest(record.index_ref, log=_quiet) == record.index_digest


def test_index_entry_is_the_image_that_was_verified(
    record: build_record.BuildRecord,
    result: build_record.ArchResult,
    container: Any,
    platform_digest: str,
) -> None:
    assert record.index_ref is not None
    index_ref = record.index_ref.rsplit(":", 1)[0] + "@" + str(record.index_digest)
    entries = dict(registry.index_platforms(index_ref, log=_quiet))
    # The container the other checks ran in was created from exactly this digest.
    assert container.attrs["Config"]["Image"] == result.digest_ref()
    assert entries[result.platform.platform] == platform_digest


def test_index_is_an_oci_index(record: build_record.BuildRecord) -> None:
    assert record.index_ref is not None
    document = registry.raw_manifest(record.index_ref, log=_quiet)
    assert document["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert {m["mediaType"] for m in document["manifests"]} <= {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
