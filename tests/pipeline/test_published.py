"""A release never moves: release tags that already name another digest stop the release."""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from pdp_pipeline.images import registry
from pdp_pipeline.release.options import LABEL_RELEASE
from pdp_pipeline.release.published import ReleaseMoved, TagPlan, plan_tags
from pdp_pipeline.release.version import ReleaseVersion

REPO = "127.0.0.1:5000/power-dev-plugin"
OURS = "sha256:" + "1" * 64
THEIRS = "sha256:" + "2" * 64
COMMIT = "c" * 40
V = ReleaseVersion(1, 2, 3)
TAGS = ("v1.2.3", "v1.2", COMMIT)


def plan(
    tags: dict[str, str], labels: dict[str, str] | None = None, *, dry_run: bool = False
) -> TagPlan:
    """plan_tags with the registry answered from dicts keyed by tag (absent: not in `tags`)."""
    return plan_tags(
        REPO,
        TAGS,
        V,
        OURS,
        tag_digest=lambda ref: tags.get(ref.rsplit(":", 1)[1]),
        release_label=lambda ref: (labels or {}).get(ref.rsplit(":", 1)[1]),
        dry_run=dry_run,
    )


def test_a_first_release_pushes_every_tag() -> None:
    assert plan({}) == TagPlan(push=TAGS, unchanged=())


def test_tags_that_already_name_this_digest_are_left_alone() -> None:
    assert plan({"v1.2.3": OURS, COMMIT: OURS}) == TagPlan(
        push=("v1.2",), unchanged=("v1.2.3", COMMIT)
    )


def test_a_rerun_of_the_same_digest_pushes_nothing() -> None:
    assert plan(dict.fromkeys(TAGS, OURS)) == TagPlan(push=(), unchanged=TAGS)


@pytest.mark.parametrize("tag", ["v1.2.3", COMMIT])
def test_a_version_or_commit_tag_naming_another_digest_stops_the_release(tag: str) -> None:
    with pytest.raises(ReleaseMoved) as refused:
        plan({tag: THEIRS})
    message = str(refused.value)
    assert f"{REPO}:{tag} already names {THEIRS}" in message
    assert f"this run built {OURS}" in message
    assert "Nothing was signed and no tag was repointed" in message


def test_the_minor_tag_moves_forward_from_an_older_patch() -> None:
    assert plan({"v1.2": THEIRS}, {"v1.2": "v1.2.2"}).push == TAGS


@pytest.mark.parametrize("label", ["v1.2.4", "v1.3.0", "v1.2.3", None, "not-a-version"])
def test_the_minor_tag_does_not_move_back_or_from_the_unknown(label: str | None) -> None:
    labels = {} if label is None else {"v1.2": label}
    with pytest.raises(ReleaseMoved, match=f"{REPO}:v1.2 already names {THEIRS}"):
        plan({"v1.2": THEIRS}, labels)


def test_a_dry_run_repoints_its_scratch_tags_and_says_which_a_release_would_refuse() -> None:
    result = plan({"v1.2.3": THEIRS, COMMIT: OURS}, dry_run=True)
    assert result.moved == ("v1.2.3",)
    assert result.push == ("v1.2.3", "v1.2")
    assert result.unchanged == (COMMIT,)


# --- against the real local registry (engine) ---------------------------------------------


def push_labelled_image(ref: str, content: str, release: str) -> str:
    """A one-file amd64 image with a release label, pushed to ref; its digest."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = content.encode()
        info = tarfile.TarInfo("content.txt")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    subprocess.run(
        [
            "docker",
            "import",
            "--platform",
            "linux/amd64",
            "--change",
            f"LABEL {LABEL_RELEASE}={release}",
            "-",
            ref,
        ],
        input=data.getvalue(),
        check=True,
        capture_output=True,
    )
    subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True)
    return registry.manifest_digest(ref)


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    root = Path(__file__).resolve().parents[2]
    host_setup.setup(host_setup.HostPaths(cache=root / ".cache"), log=lambda _: None)
    return "127.0.0.1:5000"


@pytest.mark.engine
def test_the_real_registry_refuses_to_move_a_published_version(local_registry: str) -> None:
    repository = f"{local_registry}/pdp-test-published-{uuid.uuid4().hex[:8]}"
    published = push_labelled_image(f"{repository}:v9.9.9", "first build", "v9.9.9")
    older_patch = push_labelled_image(f"{repository}:v9.9", "older patch", "v9.9.8")
    rebuilt = push_labelled_image(f"{repository}:candidate", "second build", "v9.9.9")
    assert len({published, older_patch, rebuilt}) == 3
    tags = ("v9.9.9", "v9.9", "d" * 40)

    def real_plan(digest: str) -> TagPlan:
        return plan_tags(
            repository,
            tags,
            ReleaseVersion(9, 9, 9),
            digest,
            tag_digest=registry.tag_digest,
            release_label=lambda ref: registry.image_labels(ref).get(LABEL_RELEASE),
            dry_run=False,
        )

    with pytest.raises(ReleaseMoved) as refused:
        real_plan(rebuilt)
    assert published in str(refused.value) and rebuilt in str(refused.value)
    assert registry.manifest_digest(f"{repository}:v9.9.9") == published  # not repointed

    again = real_plan(published)
    assert again == TagPlan(push=("v9.9", "d" * 40), unchanged=("v9.9.9",))
