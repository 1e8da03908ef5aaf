"""What the OpenShift entry point grants: the use of one SCC made for the
plugin, and that SCC allows hostPath volumes and uid 0, nothing else."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from pdp_pipeline import manifests

Rendered = Callable[[str], list[dict[str, Any]]]


@pytest.fixture
def openshift(rendered: Rendered) -> list[dict[str, Any]]:
    return rendered("openshift")


@pytest.fixture
def scc(openshift: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(manifests.the_object(openshift, "SecurityContextConstraints"))


def test_the_cluster_role_grants_only_use_of_our_scc(
    openshift: list[dict[str, Any]], scc: dict[str, Any]
) -> None:
    role = manifests.the_object(openshift, "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": ["security.openshift.io"],
            "resources": ["securitycontextconstraints"],
            "resourceNames": [scc["metadata"]["name"]],
            "verbs": ["use"],
        }
    ]
    assert "aggregationRule" not in role


def test_the_binding_gives_that_role_to_the_plugin_service_account_only(
    openshift: list[dict[str, Any]],
) -> None:
    binding = manifests.the_object(openshift, "ClusterRoleBinding")
    role = manifests.the_object(openshift, "ClusterRole")
    account = manifests.the_object(openshift, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_scc_is_granted_through_rbac_alone(scc: dict[str, Any]) -> None:
    assert scc["users"] == []
    assert scc["groups"] == []


def test_scc_forbids_privileged_containers_and_host_namespaces(scc: dict[str, Any]) -> None:
    assert scc["allowPrivilegedContainer"] is False
    for field in ("allowHostIPC", "allowHostNetwork", "allowHostPID", "allowHostPorts"):
        assert scc[field] is False, field


def test_scc_forbids_privilege_escalation(scc: dict[str, Any]) -> None:
    assert scc["allowPrivilegeEscalation"] is False
    assert scc["defaultAllowPrivilegeEscalation"] is False


def test_scc_drops_every_capability_and_allows_none(scc: dict[str, Any]) -> None:
    assert scc["requiredDropCapabilities"] == ["ALL"]
    assert scc["allowedCapabilities"] == []
    assert scc["defaultAddCapabilities"] == []


def test_scc_forces_a_read_only_root_and_runtime_default_seccomp(scc: dict[str, Any]) -> None:
    assert scc["readOnlyRootFilesystem"] is True
    assert scc["seccompProfiles"] == ["runtime/default"]


def test_scc_allows_host_paths_and_config_maps_only(scc: dict[str, Any]) -> None:
    assert scc["allowHostDirVolumePlugin"] is True
    assert sorted(scc["volumes"]) == ["configMap", "hostPath"]


def test_scc_pins_uid_0_and_the_device_plugin_selinux_domain(scc: dict[str, Any]) -> None:
    assert scc["runAsUser"] == {"type": "MustRunAs", "uid": 0}
    assert scc["seLinuxContext"] == {
        "type": "MustRunAs",
        "seLinuxOptions": {"type": "container_device_plugin_t"},
    }


def test_daemonset_requires_our_scc_and_fits_inside_it(
    openshift: list[dict[str, Any]], scc: dict[str, Any]
) -> None:
    daemonset = manifests.the_object(openshift, "DaemonSet")
    template = daemonset["spec"]["template"]
    assert (
        template["metadata"]["annotations"]["openshift.io/required-scc"]
        == (scc["metadata"]["name"])
    )
    pod = template["spec"]
    # MustRunAs: the SCC fills in type and MCS level; the pod must not name them.
    assert scc["seLinuxContext"]["type"] == "MustRunAs"
    assert "seLinuxOptions" not in pod["securityContext"]
    assert pod["securityContext"]["runAsUser"] == scc["runAsUser"]["uid"]
    volume_kinds = {next(k for k in v if k != "name") for v in pod["volumes"]}
    assert volume_kinds <= set(scc["volumes"])


def test_project_admits_the_plugin_under_pod_security(openshift: list[dict[str, Any]]) -> None:
    # hostPath volumes and uid 0 are outside "baseline"; the SCC is the real limit.
    project = manifests.the_object(openshift, "Project")
    assert project["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_kubernetes_entry_point_grants_nothing(rendered: Rendered) -> None:
    kinds = {obj["kind"] for obj in rendered("kubernetes")}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
