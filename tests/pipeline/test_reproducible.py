"""Same commit, same digests: two fresh clones in two directories build identical images.

Each clone builds all three architectures (debian base, runtime images reused by
content key, every plugin layer built anew with --no-cache, no verification) and
pushes them to the local registry under its own tag. The per-architecture digests
and the index digest must be equal: nothing in the images may depend on where the
clone lives or when it was built.
"""

from __future__ import annotations

import json
import os
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


def readme_build(clone: Path, repository: str, data_home: Path) -> dict[str, object]:
    """`scripts/in-venv invoke build --arch amd64` in `clone`, as the README says (into a
    repository of this run, so no other build on this host can change what it finds).

    Every clone gets the same user data directory (where the host's build key lives by
    default) and no PDP_BUILD_KEY_DIR: the key is found the way a developer's is.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PDP_", "VIRTUAL_ENV"))}
    env["XDG_DATA_HOME"] = str(data_home)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    result = subprocess.run(
        ["scripts/in-venv", "invoke", "build", "--arch", "amd64", "--repository", repository],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert result.returncode == 0, f"{clone}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    record: dict[str, object] = json.loads(
        (clone / ".cache" / "build" / "last-build.json").read_text()
    )
    return record


@pytest.mark.engine
@pytest.mark.timeout(3600)
def test_two_fresh_clones_running_the_readme_build_for_amd64_give_the_same_digests(
    local_registry: str, tmp_path: Path
) -> None:
    repository = f"pdp-repro-{uuid.uuid4().hex[:8]}"
    data_home = tmp_path / "user-data"
    first = fresh_clone(tmp_path / "one" / "power-device-plugin")
    time.sleep(1.1)  # the second clone's files are a second younger than the first's
    second = fresh_clone(tmp_path / "two" / "elsewhere" / "pdp")

    one = readme_build(first, repository, data_home)
    two = readme_build(second, repository, data_home)

    def digests(record: dict[str, object]) -> dict[str, tuple[str, str]]:
        archs = record["archs"]
        assert isinstance(archs, list)
        return {a["platform"]: (a["digest"], a["runtime"]["digest"]) for a in archs}

    assert one["revision"] == two["revision"]
    assert digests(one) == digests(two)
    assert one["index_digest"] == two["index_digest"]
    # The second clone verified the first one's runtime with the same (per-user) key.
    archs = two["archs"]
    assert isinstance(archs, list)
    assert all(a["runtime"]["reused"] for a in archs), archs
    assert not (first / ".cache" / "release" / "cosign-build").exists()
