"""Every entry point renders with the real kustomize, and every object it
renders is valid for the Kubernetes (or OpenShift) API it is sent to."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest

from pdp_pipeline import manifests

Rendered = Callable[[str], list[dict[str, Any]]]

ALL_VARIANTS = tuple(manifests.VARIANTS)
VERSIONS = (manifests.OLDEST_KUBERNETES, manifests.newest_kubernetes())
SCHEMAS = Path(__file__).resolve().parents[2] / manifests.OPENSHIFT_SCHEMA_DIR


def _copy_of(rendered: Rendered, kind: str, variant: str = "openshift") -> dict[str, Any]:
    return copy.deepcopy(dict(manifests.the_object(rendered(variant), kind)))


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_entry_point_renders_with_kustomize(rendered: Rendered, variant: str) -> None:
    assert rendered(variant), f"kustomize build {manifests.VARIANTS[variant]} rendered nothing"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_rendered_object_is_valid_for_the_api(
    rendered: Rendered, variant: str, version: str
) -> None:
    verdicts = manifests.validate_objects(rendered(variant), version, SCHEMAS)
    assert len(verdicts) == len(rendered(variant))
    failures = [str(v) for v in verdicts if not v.ok]
    assert not failures, "\n".join(failures)


def test_openshift_kinds_are_checked_against_openshift_schemas(rendered: Rendered) -> None:
    verdicts = manifests.validate_objects(rendered("openshift"), VERSIONS[0], SCHEMAS)
    by_kind = {v.obj.split("/", 1)[0]: v.schema for v in verdicts}
    assert by_kind["Project"] == "project-project-v1.json"
    assert by_kind["SecurityContextConstraints"] == "securitycontextconstraints-security-v1.json"
    assert by_kind["DaemonSet"].startswith("kubernetes ")


def test_validation_refuses_an_unknown_field(rendered: Rendered) -> None:
    broken = _copy_of(rendered, "DaemonSet")
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    verdict = manifests.validate_object(broken, VERSIONS[0], SCHEMAS)
    assert not verdict.ok
    assert "securityContex" in str(verdict.error)


def test_validation_refuses_a_wrong_type(rendered: Rendered) -> None:
    broken = _copy_of(rendered, "DaemonSet")
    broken["spec"]["template"]["spec"]["hostPID"] = "no"
    assert not manifests.validate_object(broken, VERSIONS[0], SCHEMAS).ok


def test_openshift_schema_refuses_an_unknown_scc_field(rendered: Rendered) -> None:
    scc = _copy_of(rendered, "SecurityContextConstraints")
    scc["allowHostDirVolumePlugins"] = True
    verdict = manifests.validate_object(scc, VERSIONS[0], SCHEMAS)
    assert not verdict.ok
    assert "allowHostDirVolumePlugins" in str(verdict.error)


def test_openshift_schema_refuses_an_unknown_volume_type(rendered: Rendered) -> None:
    scc = _copy_of(rendered, "SecurityContextConstraints")
    scc["volumes"] = ["hostpath"]
    assert not manifests.validate_object(scc, VERSIONS[0], SCHEMAS).ok


def test_openshift_schema_refuses_a_project_without_a_name(rendered: Rendered) -> None:
    project = _copy_of(rendered, "Project")
    del project["metadata"]["name"]
    assert not manifests.validate_object(project, VERSIONS[0], SCHEMAS).ok


def test_an_openshift_kind_without_a_schema_is_an_error_not_a_pass() -> None:
    route = {"apiVersion": "route.openshift.io/v1", "kind": "Route", "metadata": {"name": "r"}}
    verdict = manifests.validate_object(route, VERSIONS[0], SCHEMAS)
    assert not verdict.ok
    assert "no schema" in str(verdict.error)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_the_namespace_object_comes_first_so_apply_creates_it_before_its_contents(
    rendered: Rendered, variant: str
) -> None:
    first = rendered(variant)[0]
    assert first["kind"] in ("Project", "Namespace")
    namespaced = [obj for obj in rendered(variant) if obj["metadata"].get("namespace")]
    assert namespaced, "expected namespaced objects"
    assert {obj["metadata"]["namespace"] for obj in namespaced} == {first["metadata"]["name"]}


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_cluster_scoped_objects_carry_no_namespace(rendered: Rendered, variant: str) -> None:
    cluster_scoped = {
        "Project",
        "Namespace",
        "SecurityContextConstraints",
        "ClusterRole",
        "ClusterRoleBinding",
    }
    wrong = [
        manifests.object_name(obj)
        for obj in rendered(variant)
        if obj["kind"] in cluster_scoped and "namespace" in obj["metadata"]
    ]
    assert not wrong


def test_openshift_entry_point_creates_what_an_openshift_admin_expects(
    rendered: Rendered,
) -> None:
    kinds = sorted(obj["kind"] for obj in rendered("openshift"))
    assert kinds == sorted(
        [
            "Project",
            "SecurityContextConstraints",
            "ClusterRole",
            "ClusterRoleBinding",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet",
        ]
    )


def test_kubernetes_entry_point_has_a_namespace_and_no_openshift_objects(
    rendered: Rendered,
) -> None:
    kinds = sorted(obj["kind"] for obj in rendered("kubernetes"))
    assert kinds == sorted(["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"])


def test_both_entry_points_deploy_the_same_daemonset_apart_from_what_the_scc_sets(
    rendered: Rendered,
) -> None:
    openshift = _copy_of(rendered, "DaemonSet", "openshift")
    kubernetes = _copy_of(rendered, "DaemonSet", "kubernetes")
    annotations = openshift["spec"]["template"]["metadata"].pop("annotations")
    assert annotations == {"openshift.io/required-scc": "power-device-plugin"}
    assert "annotations" not in kubernetes["spec"]["template"]["metadata"]
    selinux = kubernetes["spec"]["template"]["spec"]["securityContext"].pop("seLinuxOptions")
    assert selinux == {"type": "container_device_plugin_t"}
    assert openshift == kubernetes


def test_missing_kustomize_is_reported_with_the_command_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(manifests.KustomizeMissingError, match="invoke setup"):
        manifests.render(tmp_path)


def test_a_kustomize_failure_names_the_directory_and_kustomize_s_reason(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    with pytest.raises(manifests.ManifestError, match=r"missing\.yaml") as caught:
        manifests.render(tmp_path)
    assert str(tmp_path) in str(caught.value)
