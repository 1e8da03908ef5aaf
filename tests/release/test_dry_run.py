"""`invoke release --dry-run`, end to end, on this host's engine, QEMU and local registry.

One release runs (on a snapshot checkout tagged v0.1.0, so this checkout's git
state is never touched); the tests then check what it left behind with tools
other than the release's own code: cosign, buildx imagetools, the registry.
PDP_RELEASE_ARCH (default all) narrows the architectures for a quicker run.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.release.snapshot import ROOT, invoke_in, snapshot_checkout

from pdp_pipeline.images import registry, trust
from pdp_pipeline.platforms import select

pytestmark = pytest.mark.engine

TAG = "v0.1.0"
RELEASE_TIMEOUT = 1800.0  # seconds; three architectures, runtimes reused, verified under QEMU
ARCHS = select(os.environ.get("PDP_RELEASE_ARCH", "all"))


class DryRun:
    def __init__(self, repo: Path, result: subprocess.CompletedProcess[str]) -> None:
        self.repo = repo
        self.result = result
        self.out = repo / "out" / "release"
        self.summary: dict[str, Any] = json.loads((self.out / "release-summary.json").read_text())
        self.index = f"{self.summary['repository']}@{self.summary['index_digest']}"
        self.public_key = self.out / "cosign.pub"

    def platform_refs(self) -> dict[str, str]:
        repository = self.summary["repository"]
        return {a["platform"]: f"{repository}@{a['digest']}" for a in self.summary["archs"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> DryRun:
    repo = snapshot_checkout(tmp_path_factory.mktemp("release") / "checkout", tag=TAG)
    arch = ",".join(p.arch for p in ARCHS)
    result = invoke_in(repo, "release", "--dry-run", "--arch", arch, timeout=RELEASE_TIMEOUT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return DryRun(repo, result)


def _cosign(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["cosign", *args], capture_output=True, text=True, check=False, timeout=120
    )


def test_summary_lists_every_architecture_verified(dry_run: DryRun) -> None:
    summary = dry_run.summary

    assert summary["dry_run"] is True
    assert summary["version"] == TAG
    assert [a["platform"] for a in summary["archs"]] == [p.platform for p in ARCHS]
    assert all(a["verified"] for a in summary["archs"])
    assert all(a["size"] and a["size"] > 1_000_000 for a in summary["archs"])
    markdown = (dry_run.out / "release-summary.md").read_text()
    assert markdown.startswith("> **DRY RUN**")
    for arch in summary["archs"]:
        assert f"| {arch['platform']} | `{arch['digest']}` |" in markdown


def test_every_architecture_was_verified_before_any_release_tag(dry_run: DryRun) -> None:
    lines = dry_run.result.stdout.splitlines()
    verified = [i for i, line in enumerate(lines) if line.startswith("verify: [")]
    tagged = [i for i, line in enumerate(lines) if f":{TAG}-dryrun -> sha256:" in line]

    assert len(verified) == len(ARCHS)
    assert all(f"verify: [{p.arch}] passed" in "\n".join(lines) for p in ARCHS)
    assert tagged and max(verified) < min(tagged)


def test_release_tags_point_at_the_signed_index(dry_run: DryRun) -> None:
    tags = dry_run.summary["tags"]
    commit = dry_run.summary["commit"]

    assert tags == [f"{TAG}-dryrun", "v0.1-dryrun", f"{commit}-dryrun"]
    for ref in dry_run.summary["refs"]:
        assert registry.manifest_digest(ref) == dry_run.summary["index_digest"]


def test_index_holds_exactly_the_verified_platform_images(dry_run: DryRun) -> None:
    platforms = dict(registry.index_platforms(dry_run.index))

    assert platforms == {a["platform"]: a["digest"] for a in dry_run.summary["archs"]}


def test_signature_verifies_with_the_dry_runs_public_key(dry_run: DryRun) -> None:
    result = _cosign(
        "verify",
        "--key",
        str(dry_run.public_key),
        "--insecure-ignore-tlog=true",
        "--allow-insecure-registry",
        dry_run.index,
    )

    assert result.returncode == 0, result.stderr
    (signature,) = json.loads(result.stdout)
    assert (
        signature["critical"]["image"]["docker-manifest-digest"] == dry_run.summary["index_digest"]
    )
    assert signature["optional"]["dry-run"] == "true"


def test_signature_does_not_verify_with_another_key(dry_run: DryRun, tmp_path: Path) -> None:
    subprocess.run(
        ["cosign", "generate-key-pair", "--output-key-prefix", str(tmp_path / "other")],
        env={**os.environ, "COSIGN_PASSWORD": ""},
        capture_output=True,
        check=True,
    )

    result = _cosign(
        "verify",
        "--key",
        str(tmp_path / "other.pub"),
        "--insecure-ignore-tlog=true",
        "--allow-insecure-registry",
        dry_run.index,
    )

    assert result.returncode != 0


def _build_key() -> Path:
    """The public half of the key runtimes are signed with (invoke_in's PDP_BUILD_KEY_DIR)."""
    directory = os.environ.get("PDP_BUILD_KEY_DIR") or ROOT / ".cache" / "release" / "cosign-build"
    return Path(directory) / "cosign.pub"


def test_each_runtime_the_release_sits_on_is_signed_by_the_build_key(dry_run: DryRun) -> None:
    for arch in dry_run.summary["archs"]:
        ref, _, digest = arch["runtime"].partition("@")
        result = _cosign(
            "verify",
            "--key",
            str(_build_key()),
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            trust.pinned(ref, digest),
        )
        assert result.returncode == 0, (arch["platform"], result.stderr)


def test_each_runtime_was_signed_or_verified_before_the_build_used_it(dry_run: DryRun) -> None:
    lines = dry_run.result.stdout.splitlines()
    for arch in dry_run.summary["archs"]:
        ref, _, digest = arch["runtime"].partition("@")
        target = trust.pinned(ref, digest)
        trusted = [
            i
            for i, line in enumerate(lines)
            if line.startswith(f"trust: runtime [{arch['arch']}] {target}")
            and " signed by " in line
            and "NOT signed" not in line
        ]
        used = [
            i for i, line in enumerate(lines) if line.startswith(f"build: [{arch['arch']}] runtime")
        ]
        assert trusted and used, (arch["arch"], [x for x in lines if x.startswith("trust:")])
        assert trusted[-1] < used[0]


def test_each_platform_image_has_an_sbom_attestation_of_itself(dry_run: DryRun) -> None:
    for platform, ref in dry_run.platform_refs().items():
        result = _cosign(
            "verify-attestation",
            "--key",
            str(dry_run.public_key),
            "--insecure-ignore-tlog=true",
            "--allow-insecure-registry",
            "--type",
            "cyclonedx",
            ref,
        )
        assert result.returncode == 0, f"{platform}: {result.stderr}"
        envelope = json.loads(result.stdout.splitlines()[0])
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement["predicateType"] == "https://cyclonedx.org/bom"
        bom = statement["predicate"]
        assert bom["metadata"]["component"]["version"] == ref.rsplit("@", 1)[1]
        names = {c["name"] for c in bom["components"]}
        assert {"grpcio", "protobuf", "power-device-plugin"} <= names, platform


def test_each_platform_has_max_mode_provenance_in_the_index(dry_run: DryRun) -> None:
    output = subprocess.run(
        [
            "docker",
            "buildx",
            "imagetools",
            "inspect",
            dry_run.index,
            "--format",
            "{{json .Provenance}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    provenance = json.loads(output)
    # One platform: the provenance itself; several: keyed by platform.
    per_platform = {ARCHS[0].platform: provenance} if "SLSA" in provenance else provenance

    assert set(per_platform) == {p.platform for p in ARCHS}
    for platform, attestation in per_platform.items():
        slsa = attestation["SLSA"]
        # mode=max records the full build definition; mode=min does not.
        assert slsa["buildConfig"]["llbDefinition"], platform
        assert slsa["metadata"]["https://mobyproject.org/buildkit@v1#metadata"], platform


def test_images_are_labelled_as_a_dry_run(dry_run: DryRun) -> None:
    for platform, ref in dry_run.platform_refs().items():
        output = subprocess.run(
            ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Image}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        labels = json.loads(output)["config"]["Labels"]
        assert labels["io.github.power-device-plugin.dry-run"] == "true", platform
        assert labels["io.github.power-device-plugin.release"] == f"{TAG}-dryrun", platform
        assert labels["org.opencontainers.image.version"] == TAG.removeprefix("v"), platform


def test_install_yaml_pins_the_released_index(dry_run: DryRun) -> None:
    expected = f"{dry_run.summary['refs'][0]}@{dry_run.summary['index_digest']}"
    for variant in ("openshift", "kubernetes"):
        documents = list(yaml.safe_load_all((dry_run.out / f"install-{variant}.yaml").read_text()))
        (daemonset,) = [d for d in documents if d and d.get("kind") == "DaemonSet"]
        containers = daemonset["spec"]["template"]["spec"]["containers"]
        assert [c["image"] for c in containers] == [expected], variant


def test_the_checkout_is_left_clean(dry_run: DryRun) -> None:
    status = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=dry_run.repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert status == ""


def test_the_candidate_was_built_in_the_candidates_repository(dry_run: DryRun) -> None:
    from pdp_pipeline.release.version import candidate_tag

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dry_run.repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    candidates = f"{dry_run.summary['repository']}-candidates"
    tag = candidate_tag(commit, dry_run=True)
    assert (
        registry.tag_digest(f"{candidates}:{tag}", log=lambda _: None)
        == (dry_run.summary["index_digest"])
    )
    assert "copying it into" in dry_run.result.stdout
