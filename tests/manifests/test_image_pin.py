"""The manifests run the image the pipeline builds, pinned by tag and digest
in one place, and a release re-pins it with one command."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from pdp_pipeline import manifests
from pdp_pipeline.images import build

Rendered = Callable[[str], list[dict[str, Any]]]

NEW = "127.0.0.1:5000/power-dev-plugin:v9.8.7@sha256:" + "ab" * 32


def _pipeline_repository() -> str:
    fields = {f.name: f for f in dataclasses.fields(build.BuildOptions)}
    default: str = fields["repository"].default  # type: ignore[assignment]
    return default


def test_the_manifests_use_the_repository_name_the_pipeline_pushes() -> None:
    assert _pipeline_repository() == manifests.PLUGIN_IMAGE_NAME


def test_the_daemonset_image_is_the_pinned_one_by_tag_and_digest(
    container: dict[str, Any], root: Path
) -> None:
    pinned = manifests.current_pin(root / manifests.IMAGE_PIN_DIR)
    assert container["image"] == str(pinned)
    ref = manifests.parse_image_ref(container["image"])
    assert ref.repository == _pipeline_repository()


def test_the_image_is_named_in_one_place_only(root: Path) -> None:
    holders = [
        path.relative_to(root)
        for path in sorted((root / "manifests").rglob("*.yaml"))
        if "power-dev-plugin:" in path.read_text() or "newName:" in path.read_text()
    ]
    assert holders == [manifests.IMAGE_PIN_DIR / "kustomization.yaml"]


@pytest.fixture
def manifests_copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "manifests"
    shutil.copytree(root / "manifests", copy)
    return copy


def test_pin_rewrites_the_image_of_both_entry_points(manifests_copy: Path) -> None:
    before = manifests.current_pin(manifests_copy / "base")
    previous = manifests.pin_image(manifests_copy / "base", manifests.parse_image_ref(NEW))
    assert previous == before
    for entry in (manifests_copy, manifests_copy / "kubernetes"):
        objects = manifests.render(entry)
        assert manifests.plugin_container(objects)["image"] == NEW, entry


def test_pin_changes_only_the_image_lines(manifests_copy: Path) -> None:
    path = manifests_copy / "base" / "kustomization.yaml"
    before = path.read_text().splitlines()
    manifests.pin_image(manifests_copy / "base", manifests.parse_image_ref(NEW))
    after = path.read_text().splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert {b.split(":", 1)[0].strip(" -") for _, b in changed} <= {"digest", "newName", "newTag"}
    assert changed


def test_pin_refuses_another_repository_and_leaves_the_manifests_unchanged(
    manifests_copy: Path,
) -> None:
    path = manifests_copy / "base" / "kustomization.yaml"
    before = path.read_text()
    wrong = manifests.parse_image_ref("127.0.0.1:5000/power-dev-plugn:v1.0.0@sha256:" + "0" * 64)
    with pytest.raises(manifests.ManifestError, match="power-dev-plugn"):
        manifests.pin_image(manifests_copy / "base", wrong)
    assert path.read_text() == before


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1:5000/power-dev-plugin:v1.0.0", "no digest"),
        ("127.0.0.1:5000/power-dev-plugin@sha256:" + "0" * 64, "no tag"),
        ("127.0.0.1:5000/power-dev-plugin:v1@sha256:1234", "64 hex"),
        ("power-dev-plugin:v1@md5:" + "0" * 64, "sha256"),
    ],
)
def test_a_pin_needs_both_tag_and_digest(text: str, reason: str) -> None:
    with pytest.raises(manifests.ManifestError, match=reason):
        manifests.parse_image_ref(text)


def test_an_image_reference_splits_into_registry_path_tag_and_digest() -> None:
    ref = manifests.parse_image_ref(NEW)
    assert ref.name == "127.0.0.1:5000/power-dev-plugin"
    assert ref.tag == "v9.8.7"
    assert ref.digest == "sha256:" + "ab" * 32
    assert ref.repository == "power-dev-plugin"
    assert str(ref) == NEW
