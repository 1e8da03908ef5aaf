from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pdp_pipeline.images import registry
from pdp_pipeline.images.record import ArchResult, BuildRecord
from pdp_pipeline.images.runtime import RuntimeImage
from pdp_pipeline.platforms import PLATFORMS
from pdp_pipeline.release import options as release_options
from pdp_pipeline.release import provenance, signing
from pdp_pipeline.release import run as release
from pdp_pipeline.release import steps as release_steps
from pdp_pipeline.release import summary as release_summary
from pdp_pipeline.release import version as release_version
from pdp_pipeline.release.published import ReleaseMoved

COMMIT = "0123456789abcdef0123456789abcdef01234567"
V123 = release_version.ReleaseVersion(1, 2, 3)


# --- the version ------------------------------------------------------------


def test_semver_tag_gives_version_and_its_tags() -> None:
    version = release_version.parse_release_tag("v1.2.3")

    assert version == V123
    assert (version.tag, version.minor_tag, version.version) == ("v1.2.3", "v1.2", "1.2.3")


@pytest.mark.parametrize(
    ("tag", "hint"),
    [
        ("1.2.3", "did you mean v1.2.3"),
        ("v1.2", "vMAJOR.MINOR.PATCH"),
        ("v01.2.3", "no leading zeros"),
        ("v1.2.3-rc.1", "pre-release"),
        ("v1.2.3+build5", "pre-release and build suffixes"),
        ("nightly", "vMAJOR.MINOR.PATCH"),
    ],
)
def test_non_semver_tags_are_refused_with_a_reason(tag: str, hint: str) -> None:
    with pytest.raises(release_version.ReleaseRefused) as refused:
        release_version.parse_release_tag(tag)

    message = str(refused.value)
    assert repr(tag) in message
    assert hint in message
    assert "Nothing was built" in message


def test_dirty_tree_is_refused_naming_the_changes() -> None:
    state = release_version.GitState(COMMIT, "v1.2.3", (" M src/a.py", "?? notes.txt"))

    with pytest.raises(
        release_version.ReleaseRefused, match=r"uncommitted changes \(src/a.py, notes.txt\)"
    ):
        release_version.release_version(state)


def test_untagged_head_is_refused_naming_the_commit() -> None:
    with pytest.raises(release_version.ReleaseRefused, match="HEAD \\(0123456789ab\\) has no tag"):
        release_version.release_version(release_version.GitState(COMMIT, None, ()))


def test_clean_tagged_head_is_released() -> None:
    assert release_version.release_version(release_version.GitState(COMMIT, "v1.2.3", ())) == V123


def test_release_tags_are_version_minor_and_commit() -> None:
    assert release_version.release_tags(V123, COMMIT, dry_run=False) == ("v1.2.3", "v1.2", COMMIT)


def test_dry_run_marks_every_tag() -> None:
    tags = release_version.release_tags(V123, COMMIT, dry_run=True)

    assert tags == ("v1.2.3-dryrun", "v1.2-dryrun", COMMIT + "-dryrun")


def test_fix_for_an_older_patch_does_not_move_the_minor_tag() -> None:
    existing = ["v1.2.3", "v1.2.5", "v1.3.0", "v2.0.0", "junk"]

    assert release_version.release_tags(V123, COMMIT, existing, dry_run=False) == ("v1.2.3", COMMIT)
    newest = release_version.ReleaseVersion(1, 2, 5)
    assert "v1.2" in release_version.release_tags(newest, COMMIT, existing, dry_run=False)


def test_candidate_tag_is_never_a_release_tag() -> None:
    for dry_run in (False, True):
        candidate = release_version.candidate_tag(COMMIT, dry_run=dry_run)
        assert candidate.startswith("candidate-0123456789ab")
        assert candidate not in release_version.release_tags(V123, COMMIT, dry_run=dry_run)
    assert release_version.candidate_tag(COMMIT, dry_run=True).endswith("-dryrun")


# --- the git state, from a real repository -----------------------------------


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.fixture
def tagged_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "README.md").write_text("hello\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    _git(repo, "tag", "-a", "v1.2.3", "-m", "v1.2.3")
    return repo


def test_git_state_reads_exact_tag_and_changes(tagged_repo: Path) -> None:
    state = release_version.read_git_state(tagged_repo)

    assert state.exact_tag == "v1.2.3"
    assert state.changes == ()
    assert state.commit == _git(tagged_repo, "rev-parse", "HEAD").strip()

    (tagged_repo / "README.md").write_text("changed\n")
    dirty = release_version.read_git_state(tagged_repo)
    assert [line[3:] for line in dirty.changes] == ["README.md"]


def test_git_state_of_a_commit_after_the_tag_has_no_exact_tag(tagged_repo: Path) -> None:
    (tagged_repo / "more.txt").write_text("x\n")
    _git(tagged_repo, "add", ".")
    _git(tagged_repo, "commit", "-q", "-m", "second")

    assert release_version.read_git_state(tagged_repo).exact_tag is None


# --- options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        (release_options.ReleaseOptions(base="debian"), "--base 'debian'"),
        (
            release_options.ReleaseOptions(
                registry="ghcr.io/owner", base_image="mirror.example/ubi9:9.4"
            ),
            "--base-image",
        ),
        (
            release_options.ReleaseOptions(registry="ghcr.io/owner", archs=PLATFORMS[:1]),
            f"--arch {PLATFORMS[0].arch}: a release to ghcr.io/owner ships every",
        ),
    ],
)
def test_release_refuses_what_only_a_dry_run_may_do(
    options: release_options.ReleaseOptions, flag: str
) -> None:
    with pytest.raises(release_version.ReleaseRefused, match=flag):
        release_options.check_options(options)


@pytest.mark.parametrize("registry", ["127.0.0.1:5000", "127.0.0.1:5001/owner", "localhost:5000"])
def test_a_release_kept_on_this_host_may_take_fewer_architectures_and_a_mirror(
    registry: str,
) -> None:
    release_options.check_options(
        release_options.ReleaseOptions(
            registry=registry,
            archs=PLATFORMS[:1],
            base_image="127.0.0.1:5001/ubi@sha256:" + "a" * 64,
        )
    )
    # ...but never another base: it is still a ubi9 release.
    with pytest.raises(release_version.ReleaseRefused, match="--base 'debian'"):
        release_options.check_options(
            release_options.ReleaseOptions(registry=registry, base="debian")
        )


def test_dry_run_accepts_debian_a_mirror_or_fewer_architectures() -> None:
    release_options.check_options(
        release_options.ReleaseOptions(dry_run=True, base="debian", archs=PLATFORMS[2:])
    )
    release_options.check_options(
        release_options.ReleaseOptions(dry_run=True, base_image="mirror/ubi:9")
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (release_options.ReleaseOptions(), ("ubi9", False)),
        (release_options.ReleaseOptions(dry_run=True), ("ubi9", True)),
        (release_options.ReleaseOptions(dry_run=True, base="debian"), ("debian", False)),
        (release_options.ReleaseOptions(dry_run=True, base_image="mirror/ubi:9"), ("ubi9", False)),
    ],
)
def test_only_a_plain_dry_run_may_fall_back(
    options: release_options.ReleaseOptions, expected: tuple[str, bool]
) -> None:
    assert release_options.build_settings(options) == expected


def test_dry_run_images_are_labelled_as_such() -> None:
    assert release_options.build_labels(V123, dry_run=True) == {
        release_options.LABEL_RELEASE: "v1.2.3-dryrun",
        release_options.LABEL_DRY_RUN: "true",
    }
    assert release_options.LABEL_DRY_RUN not in release_options.build_labels(V123, dry_run=False)


def test_release_needs_a_base_pinned_by_digest() -> None:
    names = {"amd64": "ubi@sha256:" + "1" * 64, "s390x": "registry.access.redhat.com/ubi9/ubi:9.4"}

    with pytest.raises(release.ReleaseFailed, match=r"s390x: registry\.access\.redhat\.com"):
        release.check_base_pinned(names, dry_run=False)
    release.check_base_pinned(names, dry_run=True)


# --- provenance ------------------------------------------------------------------


def _index(platform_digests: dict[str, str], attested: set[str]) -> dict[str, Any]:
    manifests: list[dict[str, Any]] = []
    for platform, digest in platform_digests.items():
        manifests.append({"digest": digest, "platform": {"os": "linux", "architecture": platform}})
        if digest in attested:
            manifests.append(
                {
                    "digest": "sha256:att-" + digest[-4:],
                    "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {
                        "vnd.docker.reference.type": "attestation-manifest",
                        "vnd.docker.reference.digest": digest,
                    },
                }
            )
    return {"manifests": manifests}


def _slsa(_: str) -> dict[str, Any]:
    return {
        "layers": [
            {"annotations": {"in-toto.io/predicate-type": provenance.SLSA_PROVENANCE_TYPES[0]}}
        ]
    }


def test_every_platform_needs_a_provenance_attestation() -> None:
    digests = {"linux/amd64": "sha256:aaaa", "linux/s390x": "sha256:ssss"}
    index = _index({"amd64": "sha256:aaaa", "s390x": "sha256:ssss"}, {"sha256:aaaa"})

    assert provenance.attestation_manifests(index) == {"sha256:aaaa": "sha256:att-aaaa"}
    assert provenance.missing_provenance(digests, index, _slsa) == ["linux/s390x"]


def test_an_attestation_without_slsa_provenance_does_not_count() -> None:
    digests = {"linux/amd64": "sha256:aaaa"}
    index = _index({"amd64": "sha256:aaaa"}, {"sha256:aaaa"})

    def sbom_only(_: str) -> dict[str, Any]:
        return {
            "layers": [{"annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}]
        }

    assert provenance.missing_provenance(digests, index, sbom_only) == ["linux/amd64"]
    assert provenance.missing_provenance(digests, index, _slsa) == []


# --- the whole run, with the side effects replaced ---------------------------------

LISTING = """### os-release
ID=debian
VERSION_ID="12"
### dpkg
libc6\t2.36\tamd64
### python
grpcio\t1.51.1
### end
"""


BASE_NAMES = {
    "ubi9": "registry.access.redhat.com/ubi9/ubi@sha256:" + "7" * 64,
    "debian": "debian:bookworm (mmdebstrap)",
}


class FakeWorld:
    """Records every side effect in order; the registry is a dict."""

    def __init__(self, tmp: Path, *, verified: bool = True) -> None:
        self.tmp = tmp
        self.verified = verified
        self.events: list[str] = []
        self.tags: dict[str, str] = {}  # the registry: ref -> digest
        self.labels: dict[str, str] = {}  # ref -> release label of the image it names
        self.bad_signatures: set[str] = set()  # digests whose signature does not verify
        self.index_digest = "sha256:" + "1" * 64
        self.platform_digests = {
            p.platform: "sha256:" + str(n + 2) * 64 for n, p in enumerate(PLATFORMS)
        }

    def build(self, **settings: Any) -> BuildRecord:
        self.events.append(
            f"build {settings['tag']} base={settings['base']} into {settings['image_repository']}"
        )
        self.settings = settings
        archs = [
            ArchResult(
                platform=p,
                image_ref=f"127.0.0.1:5000/power-dev-plugin:{settings['tag']}-{p.arch}",
                digest="sha256:" + "9" * 64,
                size=None,  # a per-arch index (provenance) has no size of its own
                runtime=RuntimeImage(
                    base=settings["base"],
                    platform=p,
                    ref=f"127.0.0.1:5000/power-dev-plugin-runtime:{settings['base']}-{p.arch}-k",
                    digest="sha256:" + "8" * 64,
                    key="k",
                    reused=True,
                    base_name=BASE_NAMES[settings["base"]],
                ),
                verified=self.verified if p.arch == "s390x" else True,
            )
            for p in PLATFORMS
        ]
        return BuildRecord(
            tag=settings["tag"],
            version="1.2.3",
            revision=COMMIT,
            index_ref="127.0.0.1:5000/power-dev-plugin:" + settings["tag"],
            index_digest=self.index_digest,
            base=settings["base"],
            fell_back=False,
            archs=archs,
        )

    def index_platforms(self, ref: str) -> list[tuple[str, str]]:
        return list(self.platform_digests.items())

    def raw_manifest(self, ref: str) -> Any:
        if ref.endswith(self.index_digest):
            return _index(
                {k.split("/")[1]: v for k, v in self.platform_digests.items()},
                set(self.platform_digests.values()),
            )
        if ref.rsplit("@", 1)[1] in self.platform_digests.values():
            return {"config": {"size": 1_000}, "layers": [{"size": 29_999_000}]}
        return _slsa(ref)

    def create_index(self, target: str, sources: list[str], log: Any = None) -> str:
        self.events.append(f"tag {target.rsplit(':', 1)[1]}")
        self.tags[target] = self.index_digest
        return self.index_digest

    def tag_digest(self, ref: str) -> str | None:
        return self.tags.get(ref)

    def release_label(self, ref: str) -> str | None:
        return self.labels.get(ref)

    def collect_inventory(self, image: str, platform: str) -> str:
        self.events.append(f"inventory {platform}")
        return LISTING

    def cosign(self, command: list[str], *, what: str) -> str:
        digest = command[-1].rsplit("@", 1)[1]
        self.events.append(f"cosign {command[1]} {digest[:10]}")
        if command[1] == "verify" and digest in self.bad_signatures:
            raise signing.SigningError(f"{what} failed (exit 1): no matching signatures")
        if command[1] == "verify-attestation":
            statement = {
                "predicate": {"bomFormat": "CycloneDX", "components": [{"type": "library"}]}
            }
            payload = base64.b64encode(json.dumps(statement).encode()).decode()
            return json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": payload})
        return ""

    def make_signer(self, options: release_options.ReleaseOptions, root: Path) -> signing.Signer:
        public = self.tmp / "cosign.pub"
        public.write_text("PUBLIC KEY\n")
        return signing.Signer(
            key=self.tmp / "cosign.key", public_key=public, transparency_log=False
        )

    def pin_and_render(self, pinned: str, out_dir: Path, dry_run: bool) -> list[Path]:
        self.events.append(f"pin {pinned}")
        path = out_dir / "install-openshift.yaml"
        path.write_text("kind: DaemonSet\n")
        return [path]

    def promote(self, source: str, target: str) -> str:
        self.events.append(f"promote {source.split('@')[0]} -> {target}")
        return f"{target}@{source.split('@', 1)[1]}"

    def steps(self) -> release.Steps:
        return release.Steps(
            promote=self.promote,
            build=self.build,
            index_platforms=self.index_platforms,
            raw_manifest=self.raw_manifest,
            create_index=self.create_index,
            collect_inventory=self.collect_inventory,
            cosign=self.cosign,
            make_signer=self.make_signer,
            pin_and_render=self.pin_and_render,
            tag_digest=self.tag_digest,
            release_label=self.release_label,
        )


def _run(repo: Path, world: FakeWorld, **options: Any) -> release_summary.ReleaseRecord:
    return release.run_release(
        release_options.ReleaseOptions(out_dir=Path("out/release"), **options),
        repo,
        world.steps(),
        log=lambda _line: None,
    )


def test_release_signs_and_verifies_before_any_release_tag(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)

    _run(tagged_repo, world)

    first_tag = next(i for i, e in enumerate(world.events) if e.startswith("tag "))
    before = world.events[:first_tag]
    assert before[0].startswith("build candidate-")
    assert "cosign sign sha256:111" in before
    assert "cosign verify sha256:111" in before
    for digest in world.platform_digests.values():
        assert f"cosign attest {digest[:10]}" in before
        assert f"cosign verify-attestation {digest[:10]}" in before
    head = _git(tagged_repo, "rev-parse", "HEAD").strip()
    tagged = [e for e in world.events if e.startswith("tag ")]
    assert tagged == ["tag v1.2.3", "tag v1.2", f"tag {head}"]
    assert world.events[-1].startswith("pin 127.0.0.1:5000/power-dev-plugin:v1.2.3@sha256:111")


def test_a_rerun_that_built_another_digest_stops_before_signing_or_tagging(
    tagged_repo: Path,
) -> None:
    world = FakeWorld(tagged_repo.parent)
    earlier = "sha256:" + "e" * 64
    world.tags["127.0.0.1:5000/power-dev-plugin:v1.2.3"] = earlier

    with pytest.raises(ReleaseMoved) as refused:
        _run(tagged_repo, world)

    assert earlier in str(refused.value) and world.index_digest in str(refused.value)
    assert not [e for e in world.events if e.startswith(("cosign", "tag ", "pin "))]
    assert world.tags == {"127.0.0.1:5000/power-dev-plugin:v1.2.3": earlier}


def test_a_rerun_of_a_published_release_builds_nothing_and_rewrites_its_files(
    tagged_repo: Path,
) -> None:
    world = FakeWorld(tagged_repo.parent)
    head = _git(tagged_repo, "rev-parse", "HEAD").strip()
    for tag in ("v1.2.3", "v1.2", head):
        world.tags[f"127.0.0.1:5000/power-dev-plugin:{tag}"] = world.index_digest
    lines: list[str] = []

    record = release.run_release(
        release_options.ReleaseOptions(out_dir=Path("out/release")),
        tagged_repo,
        world.steps(),
        log=lines.append,
    )

    assert record.index_digest == world.index_digest and record.already_released
    assert not [e for e in world.events if e.startswith(("build", "promote", "tag "))]
    assert not [e for e in world.events if e.startswith(("cosign sign", "cosign attest"))]
    assert f"cosign verify {world.index_digest[:10]}" in world.events
    assert (
        "release: already released: "
        f"127.0.0.1:5000/power-dev-plugin:v1.2.3@{world.index_digest}" in lines
    )
    out = tagged_repo / "out" / "release"
    summary = json.loads((out / "release-summary.json").read_text())
    assert summary["index_digest"] == world.index_digest and summary["already_released"]
    assert "Already released" in (out / "release-summary.md").read_text()
    assert {p.name for p in out.iterdir()} >= {
        "release-summary.md",
        "release-summary.json",
        "sbom-amd64.cdx.json",
        "cosign.pub",
        "install-openshift.yaml",
    }
    sbom_doc = json.loads((out / "sbom-amd64.cdx.json").read_text())
    assert sbom_doc["bomFormat"] == "CycloneDX"


def test_a_rerun_whose_tags_have_a_bad_signature_is_refused_before_building(
    tagged_repo: Path,
) -> None:
    world = FakeWorld(tagged_repo.parent)
    head = _git(tagged_repo, "rev-parse", "HEAD").strip()
    for tag in ("v1.2.3", "v1.2", head):
        world.tags[f"127.0.0.1:5000/power-dev-plugin:{tag}"] = world.index_digest
    world.bad_signatures.add(world.index_digest)

    with pytest.raises(ReleaseMoved, match="signature does not verify"):
        _run(tagged_repo, world)
    assert not [e for e in world.events if e.startswith(("build", "promote", "tag "))]


def test_a_rerun_whose_tags_disagree_is_refused_before_building(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)
    head = _git(tagged_repo, "rev-parse", "HEAD").strip()
    for tag in ("v1.2.3", "v1.2"):
        world.tags[f"127.0.0.1:5000/power-dev-plugin:{tag}"] = world.index_digest
    world.tags[f"127.0.0.1:5000/power-dev-plugin:{head}"] = "sha256:" + "f" * 64

    with pytest.raises(ReleaseMoved, match="disagree"):
        _run(tagged_repo, world)
    assert world.events == []


def test_a_new_patch_moves_the_minor_tag_forward(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)
    minor = "127.0.0.1:5000/power-dev-plugin:v1.2"
    world.tags[minor] = "sha256:" + "e" * 64
    world.labels[minor] = "v1.2.2"

    _run(tagged_repo, world)

    assert world.tags[minor] == world.index_digest


def test_release_build_is_strict(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)

    _run(tagged_repo, world)

    assert world.settings["base"] == "ubi9"
    assert world.settings["allow_fallback"] is False
    assert world.settings["tag"].startswith("candidate-")


def test_unverified_architecture_stops_before_any_release_tag(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent, verified=False)

    with pytest.raises(release.ReleaseFailed, match="verification did not pass") as failed:
        _run(tagged_repo, world)

    assert "nothing under a release tag" in str(failed.value)
    assert not any(e.startswith(("tag ", "cosign")) for e in world.events)


def test_dirty_checkout_is_refused_before_building(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)
    (tagged_repo / "README.md").write_text("edited\n")

    with pytest.raises(release_version.ReleaseRefused, match="uncommitted changes"):
        _run(tagged_repo, world)

    assert world.events == []


def test_release_writes_markdown_and_json_summaries(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)

    record = _run(tagged_repo, world, dry_run=True, base="debian")

    out = tagged_repo / "out" / "release"
    data = json.loads((out / release_summary.SUMMARY_JSON).read_text())
    assert data["dry_run"] is True
    assert data["tags"] == list(record.tags) and data["tags"][0] == "v1.2.3-dryrun"
    assert data["index_ref"] == f"127.0.0.1:5000/power-dev-plugin@{world.index_digest}"
    assert {a["platform"]: a["digest"] for a in data["archs"]} == world.platform_digests
    assert all(a["verified"] and a["sbom_attested"] and a["provenance"] for a in data["archs"])
    for arch in PLATFORMS:
        sbom = json.loads((out / f"sbom-{arch.arch}.cdx.json").read_text())
        assert sbom["metadata"]["component"]["version"] == world.platform_digests[arch.platform]
    assert "cosign.pub" in data["artifacts"] and (out / "cosign.pub").is_file()
    markdown = (out / release_summary.SUMMARY_MARKDOWN).read_text()
    assert markdown.startswith("> **DRY RUN**")
    for arch in PLATFORMS:
        assert (
            f"| {arch.platform} | `{world.platform_digests[arch.platform]}` | 28.6 MiB" in markdown
        )


def test_summary_of_a_release_has_no_dry_run_banner(tagged_repo: Path) -> None:
    record = _run(tagged_repo, FakeWorld(tagged_repo.parent))

    markdown = release_summary.render_markdown(record)
    assert "DRY RUN" not in markdown
    assert markdown.startswith("# power-device-plugin v1.2.3")
    assert "verification passed" in markdown


@pytest.mark.parametrize(
    ("size", "text"), [(None, "unknown"), (512, "512 B"), (30_000_000, "28.6 MiB")]
)
def test_sizes_read_like_people_write_them(size: int | None, text: str) -> None:
    assert release_summary.human_size(size) == text


def test_keyless_release_outside_ci_is_refused() -> None:
    with pytest.raises(release_version.ReleaseRefused, match="OIDC token"):
        release_steps.check_signing(release_options.ReleaseOptions(), env={})
    release_steps.check_signing(
        release_options.ReleaseOptions(), env={release_steps.OIDC_ENV: "https://x"}
    )
    release_steps.check_signing(release_options.ReleaseOptions(dry_run=True), env={})


def test_clearing_the_output_directory_removes_only_release_artifacts(tmp_path: Path) -> None:
    ours = ["release-summary.md", "release-summary.json", "sbom-s390x.cdx.json", "cosign.pub"]
    theirs = ["notes.txt", "install.sh", "cosign.key"]
    for name in ours + theirs + ["install-openshift.yaml"]:
        (tmp_path / name).write_text("x")

    release.clear_artifacts(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)


def test_the_candidate_is_built_and_verified_outside_the_release_repository(
    tagged_repo: Path,
) -> None:
    world = FakeWorld(tagged_repo.parent)

    _run(tagged_repo, world)

    assert world.settings["image_repository"] == "power-dev-plugin-candidates"
    promoted = next(i for i, e in enumerate(world.events) if e.startswith("promote "))
    assert world.events[promoted] == (
        "promote 127.0.0.1:5000/power-dev-plugin-candidates -> 127.0.0.1:5000/power-dev-plugin"
    )
    # Nothing is signed, attested or tagged before the verified candidate is copied over.
    assert all(e.startswith("build ") for e in world.events[:promoted])


def test_a_candidate_that_fails_verification_never_reaches_the_release_repository(
    tagged_repo: Path,
) -> None:
    world = FakeWorld(tagged_repo.parent, verified=False)

    with pytest.raises(release.ReleaseFailed, match="nothing reached the release repository"):
        _run(tagged_repo, world)

    assert not [e for e in world.events if e.startswith(("promote", "cosign", "tag "))]
    assert world.tags == {}


def test_a_release_refuses_candidates_in_the_release_repository(tagged_repo: Path) -> None:
    world = FakeWorld(tagged_repo.parent)
    with pytest.raises(release_version.ReleaseRefused, match="candidates"):
        _run(tagged_repo, world, candidates="power-dev-plugin")
    assert world.events == []


def test_a_candidate_is_copied_by_digest_and_never_tagged() -> None:
    argv = registry.copy_by_digest_command(
        "127.0.0.1:5000/pdp-candidates@sha256:" + "1" * 64, "ghcr.io/owner/pdp"
    )
    assert argv[-1] == "docker://ghcr.io/owner/pdp@sha256:" + "1" * 64
    assert "--preserve-digests" in argv and "--all" in argv
    assert "--src-tls-verify=false" in argv and "--dest-tls-verify=false" not in argv
