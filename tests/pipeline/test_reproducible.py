"""Same commit, same digests: two fresh clones in two directories build identical images.

Each clone builds all three architectures (debian base, runtime images reused by
content key, every plugin layer built anew with --no-cache, no verification) and
pushes them to the local registry under its own tag. The per-architecture digests
and the index digest must be equal: nothing in the images may depend on where the
clone lives or when it was built.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pdp_pipeline.images import build, registry
from pdp_pipeline.images.record import BuildRecord
from pdp_pipeline.platforms import PLATFORMS

ROOT = Path(__file__).resolve().parents[2]
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def fresh_clone(into: Path) -> Path:
    """A clone of this checkout's HEAD that shares no files (and so no mtimes) with it."""
    into.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(into)],
        check=True,
        capture_output=True,
    )
    return into


def build_clone(clone: Path, tag: str) -> BuildRecord:
    options = build.BuildOptions(
        archs=PLATFORMS, base="debian", tag=tag, push=True, verify=False, no_cache=True
    )
    return build.run_build(
        options, log=lambda _: None, root=clone, record_file=clone / ".cache" / "record.json"
    )


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    host_setup.setup(host_setup.HostPaths(cache=ROOT / ".cache"), log=lambda _: None)
    return "127.0.0.1:5000"


@pytest.mark.engine
def test_two_fresh_clones_of_one_commit_build_the_same_digests(
    local_registry: str, tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    first = fresh_clone(tmp_path / "a" / "src")
    time.sleep(1.1)  # the second clone's files are a second younger than the first's
    second = fresh_clone(tmp_path / "elsewhere" / "deeper" / "power-device-plugin")

    one = build_clone(first, f"repro-a-{run}")
    two = build_clone(second, f"repro-b-{run}")

    assert one.revision == two.revision
    assert {a.platform.arch: a.digest for a in one.archs} == {
        a.platform.arch: a.digest for a in two.archs
    }
    assert one.index_digest == two.index_digest
    assert one.index_ref is not None and one.index_ref != two.index_ref
    assert registry.raw_manifest(one.index_ref, log=lambda _: None)["mediaType"] == OCI_INDEX
