"""The `docker buildx build` of one architecture's plugin image, and what its output says.

The command line (platform, runtime pinned by digest, labels, push or load,
provenance), the digest buildx reports in its metadata file, and the run: the
build once (never retried), then the push of its archive (retried).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pdp_pipeline.images import registry
from pdp_pipeline.images.record import BuildError, last_lines
from pdp_pipeline.log import Log
from pdp_pipeline.platforms import Platform

# The image is written as an OCI archive with its timestamps rewritten to
# SOURCE_DATE_EPOCH, then pushed as it is (registry.push_archive). BuildKit 0.13
# refuses `rewrite-timestamp=true` on the engine's own image exporter, which unpacks
# every image into the containerd store ("conflicts with unpack"), and without it the
# directories a COPY writes into carry the build's wall-clock time.
ARCHIVE_OUTPUT = "type=oci,dest={archive},rewrite-timestamp=true"


def buildx_command(
    *,
    platform: Platform,
    containerfile: Path,
    context: Path,
    runtime_ref: str,
    labels: Mapping[str, str],
    image_ref: str,
    metadata_file: Path,
    push: bool,
    archive: Path | None = None,
    builder: str | None = None,
    provenance: str | None = None,
    source_date_epoch: int | None = None,
    no_cache: bool = False,
) -> list[str]:
    """The `docker buildx build` of one architecture's plugin image.

    With `push`, the image goes to `archive` (an OCI archive, OCI media types, so
    the index made of the pushes is an OCI index), every time in it rewritten to
    SOURCE_DATE_EPOCH (the commit time): its `created`, its history and the mtimes
    in its layers. Without `push` it is loaded into the local engine.
    """
    argv = [
        "docker",
        "buildx",
        "build",
        "--platform",
        platform.platform,
        # buildx 0.13 only looks for a file named Dockerfile by itself.
        "-f",
        str(containerfile),
        "--build-arg",
        f"RUNTIME_IMAGE={runtime_ref}",
    ]
    if source_date_epoch is not None:
        argv += ["--build-arg", f"SOURCE_DATE_EPOCH={source_date_epoch}"]
    for key in sorted(labels):
        argv += ["--label", f"{key}={labels[key]}"]
    argv += ["-t", image_ref]
    if push:
        if archive is None:
            raise BuildError(f"a pushed build of {image_ref} needs an archive path to write to")
        argv += ["--output", ARCHIVE_OUTPUT.format(archive=archive)]
    else:
        argv.append("--load")
    argv += ["--metadata-file", str(metadata_file)]
    if no_cache:
        argv.append("--no-cache")
    if builder:
        argv += ["--builder", builder]
    # buildx's default (min provenance) would turn every per-arch push into an index.
    argv.append(f"--provenance={provenance}" if provenance else "--provenance=false")
    argv += ["--progress", "plain", str(context)]
    return argv


def digest_from_metadata(metadata: Mapping[str, Any], image_ref: str) -> str:
    """The digest buildx reports for what it pushed or loaded."""
    digest = metadata.get("containerimage.digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise BuildError(
            f"buildx wrote no image digest for {image_ref} (metadata keys: {sorted(metadata)})"
        )
    return digest


def run_buildx(argv: Sequence[str], image_ref: str, platform: Platform) -> None:
    """Run one build (never retried: it may compile); a failure is a BuildError.

    The build writes an archive or loads the engine; nothing in it talks to a registry
    but the pull of its FROM, so whatever its output says, a failure is the build's.
    """
    result = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise BuildError(
            f"buildx build of {image_ref} ({platform.arch}) failed (exit {result.returncode});"
            f" last lines:\n{last_lines(result.stdout + result.stderr)}"
        )


def build_then_push(
    argv: Sequence[str],
    image_ref: str,
    platform: Platform,
    archive: Path | None,
    log: Log = print,
    *,
    run: Callable[[Sequence[str], str, Platform], None] | None = None,
    push: Callable[[Path, str, str], None] | None = None,
) -> None:
    """Build once; push the archive (if any) with retries. Only the push is ever retried."""
    (run or run_buildx)(argv, image_ref, platform)
    if archive is None:
        return
    send = push or registry.push_archive
    registry.with_retries(
        lambda: send(archive, image_ref, platform.arch),
        what=f"push of {image_ref} ({platform.arch})",
        log=log,
    )
