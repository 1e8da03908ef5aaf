"""A second release of a tag on the same commit is a no-op, decided before any build."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pdp_pipeline.images.tags import LABEL_REVISION
from pdp_pipeline.release.options import LABEL_RELEASE
from pdp_pipeline.release.published import ReleaseMoved
from pdp_pipeline.release.released import already_released

REPO = "127.0.0.1:5000/power-dev-plugin"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "f" * 40
TAGS = ("v1.2.3", "v1.2", COMMIT)
INDEX = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64
LABELS = {LABEL_REVISION: COMMIT, LABEL_RELEASE: "v1.2.3"}


class FakeRegistry:
    """Registry answers: which digest each tag names, the index's labels, good signatures."""

    def __init__(
        self,
        tags: Mapping[str, str],
        labels: Mapping[str, str] = LABELS,
        signed: frozenset[str] = frozenset({INDEX}),
    ) -> None:
        self.tags = {f"{REPO}:{tag}": digest for tag, digest in tags.items()}
        self.labels = dict(labels)
        self.signed = signed
        self.verified: list[str] = []
        self.labelled: list[str] = []

    def tag_digest(self, ref: str) -> str | None:
        return self.tags.get(ref)

    def image_labels(self, ref: str) -> Mapping[str, str]:
        self.labelled.append(ref)
        return self.labels

    def verify(self, ref: str) -> bool:
        self.verified.append(ref)
        return ref.rsplit("@", 1)[1] in self.signed

    def decide(self, *, can_verify: bool = True, labels: bool = True) -> str | None:
        return already_released(
            REPO,
            TAGS,
            COMMIT,
            "v1.2.3",
            tag_digest=self.tag_digest,
            labels=self.image_labels if labels else None,
            verify=self.verify if can_verify else None,
        )


def test_every_tag_on_one_signed_index_of_this_commit_is_already_released() -> None:
    registry = FakeRegistry(dict.fromkeys(TAGS, INDEX))

    assert registry.decide() == INDEX
    assert registry.verified == [f"{REPO}@{INDEX}"]
    assert registry.labelled == [f"{REPO}@{INDEX}"]


def test_without_labels_the_commit_tag_marks_the_commit() -> None:
    assert FakeRegistry(dict.fromkeys(TAGS, INDEX)).decide(labels=False) == INDEX


def test_an_index_without_the_labels_is_judged_by_its_commit_tag() -> None:
    assert FakeRegistry(dict.fromkeys(TAGS, INDEX), labels={}).decide() == INDEX


def test_no_tag_yet_is_a_release_to_make() -> None:
    registry = FakeRegistry({})

    assert registry.decide() is None
    assert registry.verified == []


@pytest.mark.parametrize(
    "present",
    [("v1.2",), ("v1.2.3",), ("v1.2.3", "v1.2"), ("v1.2.3", COMMIT)],
    ids=["only-the-minor-tag", "only-the-version", "no-commit-tag", "no-minor-tag"],
)
def test_some_tags_missing_is_not_a_no_op(present: tuple[str, ...]) -> None:
    # Not done: the run goes on, and the tag plan after the build decides as before.
    registry = FakeRegistry(dict.fromkeys(present, INDEX))

    assert registry.decide() is None
    assert registry.verified == []


def test_tags_on_different_indexes_are_refused_naming_each() -> None:
    registry = FakeRegistry({"v1.2.3": INDEX, "v1.2": INDEX, COMMIT: OTHER})

    with pytest.raises(ReleaseMoved, match="disagree") as refused:
        registry.decide()
    assert OTHER in str(refused.value) and INDEX in str(refused.value)
    assert registry.verified == []


def test_every_tag_on_another_digest_is_refused_when_it_does_not_verify() -> None:
    # Another index under every tag, signed by someone else: not this release.
    registry = FakeRegistry(dict.fromkeys(TAGS, OTHER))

    with pytest.raises(ReleaseMoved, match="does not verify"):
        registry.decide()


def test_an_index_of_another_commit_is_refused() -> None:
    registry = FakeRegistry(
        dict.fromkeys(TAGS, INDEX), labels={LABEL_REVISION: OTHER_COMMIT, LABEL_RELEASE: "v1.2.3"}
    )

    with pytest.raises(ReleaseMoved, match=OTHER_COMMIT):
        registry.decide()
    assert registry.verified == []


def test_an_index_of_another_release_is_refused() -> None:
    registry = FakeRegistry(
        dict.fromkeys(TAGS, INDEX), labels={LABEL_REVISION: COMMIT, LABEL_RELEASE: "v1.2.2"}
    )

    with pytest.raises(ReleaseMoved, match=r"v1\.2\.2"):
        registry.decide()


def test_a_missing_or_bad_signature_is_refused() -> None:
    registry = FakeRegistry(dict.fromkeys(TAGS, INDEX), signed=frozenset())

    with pytest.raises(ReleaseMoved, match="signature does not verify"):
        registry.decide()
    assert registry.verified == [f"{REPO}@{INDEX}"]


def test_a_signer_that_cannot_verify_cannot_prove_the_release_done() -> None:
    with pytest.raises(ReleaseMoved, match="cannot verify"):
        FakeRegistry(dict.fromkeys(TAGS, INDEX)).decide(can_verify=False)
