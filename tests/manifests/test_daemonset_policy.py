"""Least privilege, asserted on the rendered DaemonSet of both entry points.

Each property is its own test, so a regression names exactly what was lost.
The plugin needs the device plugin directory (read-write), the host's /dev,
/sys and /proc (read-only) and its config; nothing else.
"""

from __future__ import annotations

from typing import Any

from pdp_pipeline import manifests
from pdp_pipeline.platforms import PLATFORMS


def _effective(pod_spec: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A security setting as the kubelet applies it: the container's, else the pod's."""
    container_context = container.get("securityContext") or {}
    if key in container_context:
        return container_context[key]
    return (pod_spec.get("securityContext") or {}).get(key)


def test_container_is_not_privileged(container: dict[str, Any]) -> None:
    assert container["securityContext"]["privileged"] is False


def test_no_host_namespaces(pod_spec: dict[str, Any]) -> None:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert pod_spec.get(field, False) is False, field


def test_no_host_ports(container: dict[str, Any]) -> None:
    assert all("hostPort" not in port for port in container.get("ports", []))


def test_root_file_system_is_read_only(container: dict[str, Any]) -> None:
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_privilege_escalation_is_not_allowed(container: dict[str, Any]) -> None:
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_every_capability_is_dropped_and_none_added(container: dict[str, Any]) -> None:
    capabilities = container["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    assert not capabilities.get("add")


def test_seccomp_is_runtime_default(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    assert _effective(pod_spec, container, "seccompProfile") == {"type": "RuntimeDefault"}
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_runs_as_root_only_to_own_the_device_plugin_directory(
    pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    # uid 0 with no capabilities: what the root-owned 0755 plugin directory needs.
    assert _effective(pod_spec, container, "runAsUser") == 0
    assert _effective(pod_spec, container, "runAsNonRoot") is False


def test_selinux_domain_is_the_device_plugin_one(
    daemonset: dict[str, Any], pod_spec: dict[str, Any], plugin_objects: list[Any]
) -> None:
    sccs = manifests.objects_of_kind(plugin_objects, "SecurityContextConstraints")
    if sccs:
        # OpenShift: the SCC assigns the type along with the project's MCS
        # level; a pod naming the type without that level would be refused.
        assert "seLinuxOptions" not in pod_spec["securityContext"]
        (scc,) = sccs
        options = scc["seLinuxContext"]["seLinuxOptions"]
    else:
        options = pod_spec["securityContext"]["seLinuxOptions"]
    assert options == {"type": "container_device_plugin_t"}
    for container in pod_spec["containers"]:
        assert "seLinuxOptions" not in container["securityContext"]


def test_requests_and_limits_are_set(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound


def test_no_kubernetes_api_access(pod_spec: dict[str, Any], plugin_objects: list[Any]) -> None:
    assert pod_spec["automountServiceAccountToken"] is False
    account = manifests.the_object(plugin_objects, "ServiceAccount")
    assert pod_spec["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert not manifests.objects_of_kind(plugin_objects, "Role")
    assert not manifests.objects_of_kind(plugin_objects, "RoleBinding")


def test_host_paths_are_only_the_plugin_directory_dev_sys_proc_and_the_cdi_directory(
    pod_spec: dict[str, Any],
) -> None:
    host_paths = sorted(
        volume["hostPath"]["path"] for volume in pod_spec["volumes"] if "hostPath" in volume
    )
    assert host_paths == [
        "/dev",
        "/proc",
        "/sys",
        "/var/lib/kubelet/device-plugins",
        "/var/run/cdi",
    ]


def test_the_host_proc_is_mounted_read_only_once_without_host_pid(
    pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    proc_mounts = [
        mount
        for mount in container["volumeMounts"]
        if volumes[mount["name"]].get("hostPath", {}).get("path") == "/proc"
    ]
    assert len(proc_mounts) == 1
    (mount,) = proc_mounts
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    assert mount.get("mountPropagation", "None") == "None"
    assert pod_spec.get("hostPID", False) is False


def test_only_the_device_plugin_and_cdi_directories_are_mounted_writable(
    pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    writable = [
        volumes[mount["name"]].get("hostPath", {}).get("path", mount["name"])
        for mount in container["volumeMounts"]
        if not mount.get("readOnly", False)
    ]
    assert writable == ["/var/lib/kubelet/device-plugins", "/var/run/cdi"]


def test_the_cdi_directory_is_where_the_plugin_is_told_to_keep_its_spec(
    pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    (mount,) = [
        mount
        for mount in container["volumeMounts"]
        if volumes[mount["name"]].get("hostPath", {}).get("path") == "/var/run/cdi"
    ]
    assert "subPath" not in mount
    assert mount.get("mountPropagation", "None") == "None"
    assert f"--cdi-dir={mount['mountPath']}" in container["args"]


def test_volumes_are_host_paths_and_the_config_map_only(pod_spec: dict[str, Any]) -> None:
    kinds = {next(k for k in volume if k != "name") for volume in pod_spec["volumes"]}
    assert kinds == {"hostPath", "configMap"}


def test_runs_only_on_workers_of_the_architectures_we_build(pod_spec: dict[str, Any]) -> None:
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    # One term: its expressions are ANDed (several terms would be ORed).
    assert len(terms) == 1
    expressions = {e["key"]: e for e in terms[0]["matchExpressions"]}
    assert expressions["node-role.kubernetes.io/worker"]["operator"] == "Exists"
    arch = expressions["kubernetes.io/arch"]
    assert arch["operator"] == "In"
    assert sorted(arch["values"]) == sorted(p.arch for p in PLATFORMS)
    assert "nodeSelector" not in pod_spec or not pod_spec["nodeSelector"]


def test_probes_use_the_plugin_health_endpoints(container: dict[str, Any]) -> None:
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_priority_is_system_node_critical(pod_spec: dict[str, Any]) -> None:
    assert pod_spec["priorityClassName"] == "system-node-critical"


def test_updates_roll(daemonset: dict[str, Any]) -> None:
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"


def test_config_is_a_directory_mount_so_updates_reach_the_running_plugin(
    pod_spec: dict[str, Any], container: dict[str, Any], plugin_objects: list[Any]
) -> None:
    config_map = manifests.the_object(plugin_objects, "ConfigMap")
    volume = next(v for v in pod_spec["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    # A subPath mount is a copy taken at start: ConfigMap edits never reach it.
    assert "subPath" not in mount
    assert "subPathExpr" not in mount
    assert mount["readOnly"] is True
