"""Rendered manifests, shared by the tests of this directory.

Every test here works on what `kustomize build` really produces, so a change
in any overlay, patch or generator is seen the way a cluster would see it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from pdp_pipeline import manifests

ROOT = Path(__file__).resolve().parents[2]

PLUGIN_VARIANTS = ("openshift", "kubernetes")
EXAMPLE_VARIANTS = ("examples-openshift", "examples-kubernetes")

_rendered: dict[str, list[dict[str, Any]]] = {}


def _render(variant: str) -> list[dict[str, Any]]:
    """The objects of one variant, rendered once per test session."""
    if variant not in _rendered:
        _rendered[variant] = manifests.render(ROOT / manifests.VARIANTS[variant])
    return _rendered[variant]


@pytest.fixture(scope="session")
def rendered() -> Callable[[str], list[dict[str, Any]]]:
    """`rendered(variant)`: the objects `kustomize build` makes for that variant."""
    return _render


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(params=PLUGIN_VARIANTS)
def plugin_variant(request: pytest.FixtureRequest) -> str:
    """Each plugin entry point in turn: `openshift`, `kubernetes`."""
    variant: str = request.param
    return variant


@pytest.fixture
def plugin_objects(plugin_variant: str) -> list[dict[str, Any]]:
    """The rendered plugin manifests of the entry point under test."""
    return _render(plugin_variant)


@pytest.fixture
def daemonset(plugin_objects: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(manifests.the_object(plugin_objects, "DaemonSet"))


@pytest.fixture
def pod_spec(daemonset: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


@pytest.fixture
def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    return dict(manifests.plugin_container([daemonset]))
