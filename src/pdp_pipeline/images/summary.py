"""The closing words of a build: a table for people, JSON for machines."""

from __future__ import annotations

import json
from typing import Any

from pdp_pipeline.images.record import ArchResult, BuildRecord

COLUMNS = ("architecture", "digest", "size", "runtime", "verification")


def verification_word(verified: bool | None) -> str:
    if verified is None:
        return "not run"
    return "passed" if verified else "FAILED"


def human_size(size: int | None) -> str:
    """Bytes in the largest unit that keeps the number below 1024 (MiB for images)."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def row(result: ArchResult) -> tuple[str, ...]:
    return (
        result.platform.platform,
        result.digest,
        human_size(result.size),
        "reused" if result.runtime.reused else "built",
        verification_word(result.verified),
    )


def table(record: BuildRecord) -> str:
    """The table `invoke build` ends with, with the headline facts above it."""
    rows = [COLUMNS, *(row(r) for r in record.archs)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    lines = [
        f"tag {record.tag}  version {record.version}  revision {record.revision[:12]}",
        f"index {record.index_ref}@{record.index_digest}"
        if record.index_ref
        else "index: none (--no-push: images are in the local engine only)",
        f"base {record.base}"
        + (f" (FELL BACK from {record.requested_base})" if record.fell_back else ""),
        line(COLUMNS),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows[1:]),
    ]
    return "\n".join(lines)


def as_dict(record: BuildRecord) -> dict[str, Any]:
    """The summary's facts as plain data (the same facts as the table)."""
    return {
        "tag": record.tag,
        "version": record.version,
        "revision": record.revision,
        "index": (
            {"ref": record.index_ref, "digest": record.index_digest} if record.index_ref else None
        ),
        "base": record.base,
        "requested_base": record.requested_base,
        "fell_back": record.fell_back,
        "images": [
            {
                "architecture": r.platform.platform,
                "ref": r.image_ref,
                "digest": r.digest,
                "size": r.size,
                "runtime": "reused" if r.runtime.reused else "built",
                "runtime_ref": r.runtime.ref,
                "verification": verification_word(r.verified),
            }
            for r in record.archs
        ],
        "all_verified": bool(record.archs) and all(r.verified for r in record.archs),
    }


def to_json(record: BuildRecord) -> str:
    return json.dumps(as_dict(record), indent=2, sort_keys=True) + "\n"
