"""A real (not dry) release never falls back: where ubi9 cannot be pulled, it stops."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.release.snapshot import git, invoke_in, snapshot_checkout

from pdp_pipeline.images import bases, registry

pytestmark = pytest.mark.engine

PIN = bases.load_pin("ubi9")  # the committed base, by digest: what a release builds on
UBI9_PROBE_TIMEOUT = 30.0  # seconds: resolving the base is a quick HEAD request


def _ubi9_reachable() -> bool:
    probe = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", PIN.ref],
        capture_output=True,
        check=False,
        timeout=UBI9_PROBE_TIMEOUT,
    )
    return probe.returncode == 0


def test_release_stops_instead_of_falling_back_when_ubi9_is_out_of_reach(tmp_path: Path) -> None:
    if _ubi9_reachable():
        pytest.skip("ubi9 is reachable from this host: the no-fallback path cannot be provoked")
    repo = snapshot_checkout(tmp_path / "checkout", tag="v0.3.0")
    subprocess.run(
        ["cosign", "generate-key-pair", "--output-key-prefix", str(tmp_path / "release")],
        env={**os.environ, "COSIGN_PASSWORD": ""},
        capture_output=True,
        check=True,
    )

    result = invoke_in(repo, "release", "--key", str(tmp_path / "release.key"), timeout=600)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "release failed: BaseUnavailable" in output
    assert f"base image {PIN.ref} cannot be reached" in output  # the pin, by digest
    assert "FALLING BACK" not in output
    commit = git(repo, "rev-parse", "HEAD").strip()
    for tag in ("v0.3.0", f"candidate-{commit[:12]}", f"candidate-{commit[:12]}-amd64"):
        assert not registry.tag_exists(f"127.0.0.1:5000/power-dev-plugin:{tag}", log=lambda _: None)
