"""The node suite's translations: DaemonSet and Allocate answers → `docker run` settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pdp_pipeline.e2e.container import BindMount, ContainerRun
from pdp_pipeline.e2e.manifest import (
    ManifestShapeError,
    config_map_value,
    cpu_nanos,
    find_daemonset,
    http_probe_target,
    memory_bytes,
    plugin_container,
)
from pdp_pipeline.e2e.plugin_run import expand_kube_vars, plugin_run, plugin_setting
from pdp_pipeline.e2e.workload import (
    ContainerGrantView,
    GrantedDevice,
    device_groups,
    device_option,
    workload_run,
)

PLUGIN_DIR = "/var/lib/kubelet/device-plugins"


def daemonset() -> dict[str, Any]:
    """A DaemonSet shaped like ours: host /dev and /sys read-only, config from a ConfigMap."""
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "power-device-plugin"},
        "spec": {
            "template": {
                "spec": {
                    "securityContext": {
                        "runAsUser": 0,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "plugin",
                            "image": "power-dev-plugin:v1",
                            "args": ["serve", "--dev-root=/host/dev", "--sys-root", "/host/sys"],
                            "env": [
                                {"name": "PDP_LOG_FORMAT", "value": "json"},
                                {
                                    "name": "NODE",
                                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                                },
                                {
                                    "name": "PDP_CONFIG",
                                    "value": "/etc/power-device-plugin/config.json",
                                },
                            ],
                            "ports": [{"name": "health", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                                "privileged": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "device-plugins", "mountPath": PLUGIN_DIR},
                                {"name": "host-dev", "mountPath": "/host/dev", "readOnly": True},
                                {"name": "host-sys", "mountPath": "/host/sys", "readOnly": True},
                                {"name": "config", "mountPath": "/etc/power-device-plugin"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "device-plugins", "hostPath": {"path": PLUGIN_DIR}},
                        {"name": "host-dev", "hostPath": {"path": "/dev"}},
                        {"name": "host-sys", "hostPath": {"path": "/sys"}},
                        {"name": "config", "configMap": {"name": "power-device-plugin-config"}},
                    ],
                }
            }
        },
    }


def run_of(ds: dict[str, Any]) -> ContainerRun:
    return plugin_run(
        ds,
        "reg/power-dev-plugin:t-amd64",
        host_paths={PLUGIN_DIR: "/tmp/plugins"},
        config_maps={"power-device-plugin-config": "/tmp/config"},
        field_values={"spec.nodeName": "node-a"},
    )


def test_plugin_run_keeps_the_daemonset_security_settings() -> None:
    run = run_of(daemonset())

    assert run.read_only is True
    assert run.privileged is False
    assert run.cap_drop == ("ALL",)
    assert run.cap_add == ()
    assert "no-new-privileges" in run.security_opt
    assert run.user == "0"
    assert run.network_mode == "none"


def test_plugin_run_passes_args_as_command_and_leaves_the_image_entrypoint() -> None:
    run = run_of(daemonset())

    assert run.entrypoint is None
    assert run.command == ("serve", "--dev-root=/host/dev", "--sys-root", "/host/sys")


def test_plugin_run_maps_volumes_to_stand_ins_and_host_paths() -> None:
    run = run_of(daemonset())

    assert run.binds == (
        BindMount("/tmp/plugins", PLUGIN_DIR, read_only=False),
        BindMount("/dev", "/host/dev", read_only=True),
        BindMount("/sys", "/host/sys", read_only=True),
        BindMount("/tmp/config", "/etc/power-device-plugin", read_only=True),
    )


def test_plugin_run_fills_env_values_and_field_refs() -> None:
    run = run_of(daemonset())

    assert run.environment == {
        "PDP_LOG_FORMAT": "json",
        "NODE": "node-a",
        "PDP_CONFIG": "/etc/power-device-plugin/config.json",
    }


def test_a_changed_manifest_changes_the_run() -> None:
    ds = daemonset()
    container = ds["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["securityContext"]["capabilities"] = {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}
    ds["spec"]["template"]["spec"]["volumes"][1]["hostPath"]["path"] = "/srv/dev"

    run = run_of(ds)

    assert run.read_only is False
    assert run.cap_drop == ("NET_RAW",)
    assert run.cap_add == ("SYS_ADMIN",)
    assert BindMount("/srv/dev", "/host/dev", read_only=True) in run.binds


def test_plugin_settings_come_from_flags_then_env_twins_then_defaults() -> None:
    run = run_of(daemonset())

    assert plugin_setting(run, "--dev-root") == "/host/dev"
    assert plugin_setting(run, "--sys-root") == "/host/sys"
    assert plugin_setting(run, "--config") == "/etc/power-device-plugin/config.json"
    assert plugin_setting(run, "--plugin-dir") == PLUGIN_DIR
    assert plugin_setting(run, "--socket-name") == "power-dev.csi.ibm.com-reg.sock"


def test_container_paths_map_back_to_host_paths_through_the_deepest_bind() -> None:
    run = run_of(daemonset())

    assert run.host_path_of(PLUGIN_DIR + "/kubelet.sock") == "/tmp/plugins/kubelet.sock"
    assert run.host_path_of("/etc/power-device-plugin/config.json") == "/tmp/config/config.json"
    assert run.host_path_of("/host/devices") is None
    assert run.host_path_of("/usr/bin/python3") is None


def test_config_map_mounts_are_read_only_even_when_the_manifest_says_nothing() -> None:
    run = run_of(daemonset())

    config = [b for b in run.binds if b.container_path == "/etc/power-device-plugin"]
    assert config[0].read_only is True


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda c, p: c["volumeMounts"][3].update(subPath="config.json"), "subPath"),
        (lambda c, p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda c, p: p.update(hostPID=True), "hostPID"),
        (lambda c, p: p["volumes"][0].update(hostPath=None, emptyDir={}), "emptyDir"),
        (lambda c, p: c["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {}}}), "X"),
        (lambda c, p: c["volumeMounts"].append({"name": "nope", "mountPath": "/x"}), "nope"),
    ],
)
def test_shapes_the_suite_cannot_run_are_refused_by_name(change: Any, words: str) -> None:
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    change(pod["containers"][0], pod)
    if pod["volumes"][0].get("hostPath", "") is None:
        del pod["volumes"][0]["hostPath"]

    with pytest.raises(ManifestShapeError, match=words):
        run_of(ds)


def test_a_config_map_without_stand_in_is_refused() -> None:
    with pytest.raises(ManifestShapeError, match="power-device-plugin-config"):
        plugin_run(
            daemonset(), "img", host_paths={}, config_maps={}, field_values={"spec.nodeName": "n"}
        )


def test_find_daemonset_wants_exactly_one() -> None:
    ds = daemonset()
    others: list[dict[str, Any]] = [{"kind": "ConfigMap", "metadata": {"name": "c"}}]

    assert find_daemonset([*others, ds]) is ds
    with pytest.raises(ManifestShapeError, match="0 DaemonSets"):
        find_daemonset(others)
    with pytest.raises(ManifestShapeError, match="2 DaemonSets"):
        find_daemonset([ds, copy.deepcopy(ds)])


def test_plugin_container_is_found_by_name_when_there_are_several() -> None:
    ds = daemonset()
    containers = ds["spec"]["template"]["spec"]["containers"]
    containers.append({"name": "sidecar"})

    assert plugin_container(ds, "plugin")["name"] == "plugin"
    with pytest.raises(ManifestShapeError, match="2 containers"):
        plugin_container(ds)
    with pytest.raises(ManifestShapeError, match="sidecar"):
        plugin_container(ds, "missing")


def test_probe_targets_resolve_named_ports() -> None:
    container = plugin_container(daemonset())

    assert http_probe_target(container, "readinessProbe") == ("/readyz", 8080)
    assert http_probe_target(container, "livenessProbe") == ("/healthz", 8080)
    with pytest.raises(ManifestShapeError, match="startupProbe"):
        http_probe_target(container, "startupProbe")


def test_kube_var_expansion_follows_the_kubelet() -> None:
    env = {"ROOT": "/host", "N": "3"}

    assert expand_kube_vars("$(ROOT)/dev", env) == "/host/dev"
    assert expand_kube_vars("$$(ROOT) costs $$5", env) == "$(ROOT) costs $5"
    assert expand_kube_vars("$(MISSING)-$(N)", env) == "$(MISSING)-3"


def test_args_are_expanded_from_the_container_env() -> None:
    ds = daemonset()
    container = ds["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "ROOT", "value": "/host"})
    container["args"] = ["serve", "--dev-root", "$(ROOT)/dev"]

    assert plugin_setting(run_of(ds), "--dev-root") == "/host/dev"


def test_device_option_is_what_docker_run_device_takes() -> None:
    device = GrantedDevice("/dev/loop241", "/dev/loop241", "r")

    assert device_option(device) == "/dev/loop241:/dev/loop241:r"
    assert device_option(GrantedDevice("/dev/b", "/dev/a", "")) == "/dev/a:/dev/b:rwm"
    for bad in ("x", "rr", "rwmr"):
        with pytest.raises(ValueError, match="permission"):
            device_option(GrantedDevice("/dev/a", "/dev/a", bad))


def test_device_groups_are_the_nodes_groups_without_root() -> None:
    groups = {"/dev/a": 6, "/dev/b": 6, "/dev/c": 0, "/dev/d": 27}

    assert device_groups(groups, groups.__getitem__) == ("6", "27")
    assert device_groups(["/dev/c"], groups.__getitem__) == ()


def test_workload_run_applies_the_grant_with_least_privilege() -> None:
    grant = ContainerGrantView(
        devices=(GrantedDevice("/dev/loop241", "/dev/loop241", "rw"),),
        envs={"PDP_DEVICES": "/dev/loop241"},
        mounts=(BindMount("/opt/lib", "/usr/local/lib/x", read_only=True),),
        annotations={"power-dev-plugin/devices": "loop241"},
    )

    run = workload_run(
        grant,
        "img",
        user="1000:1000",
        group_add=("6",),
        entrypoint=("python3", "-c"),
        command=("print(1)",),
        labels={"suite": "e2e"},
    )

    kwargs = run.docker_kwargs()
    assert kwargs["devices"] == ["/dev/loop241:/dev/loop241:rw"]
    assert kwargs["environment"] == {"PDP_DEVICES": "/dev/loop241"}
    assert kwargs["volumes"] == ["/opt/lib:/usr/local/lib/x:ro"]
    assert kwargs["labels"] == {"power-dev-plugin/devices": "loop241", "suite": "e2e"}
    assert kwargs["user"] == "1000:1000"
    assert kwargs["group_add"] == ["6"]
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["read_only"] is True
    assert kwargs["privileged"] is False
    assert kwargs["entrypoint"] == ["python3", "-c"]
    assert kwargs["network_mode"] == "none"


def test_docker_kwargs_leave_out_what_the_image_decides() -> None:
    kwargs = ContainerRun(image="img").docker_kwargs()

    assert "entrypoint" not in kwargs
    assert "command" not in kwargs
    assert "user" not in kwargs


def test_resource_limits_and_grace_period_reach_the_run() -> None:
    ds = daemonset()
    ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 15
    ds["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"memory": "64Mi", "cpu": "20m"},
        "limits": {"memory": "128Mi", "cpu": "200m"},
    }

    run = run_of(ds)

    assert run.memory_limit_bytes == 128 * 2**20
    assert run.nano_cpus == 200_000_000
    assert run.stop_grace_seconds == 15
    assert run.docker_kwargs()["mem_limit"] == 128 * 2**20
    assert run.docker_kwargs()["nano_cpus"] == 200_000_000


def test_no_limits_means_no_limit_settings() -> None:
    kwargs = run_of(daemonset()).docker_kwargs()

    assert "mem_limit" not in kwargs
    assert "nano_cpus" not in kwargs


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("128Mi", 128 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("500k", 500_000), (1024, 1024)],
)
def test_memory_quantities(quantity: str | int, expected: int) -> None:
    assert memory_bytes(quantity) == expected


@pytest.mark.parametrize(
    ("quantity", "expected"), [("200m", 200_000_000), ("0.5", 500_000_000), (2, 2_000_000_000)]
)
def test_cpu_quantities(quantity: str | int, expected: int) -> None:
    assert cpu_nanos(quantity) == expected


def test_unreadable_quantities_are_refused_by_value() -> None:
    with pytest.raises(ManifestShapeError, match="12parsecs"):
        memory_bytes("12parsecs")
    with pytest.raises(ManifestShapeError, match="lots"):
        cpu_nanos("lots")


def test_config_map_value_reads_one_key_of_the_named_config_map() -> None:
    objects: list[dict[str, Any]] = [
        {"kind": "ConfigMap", "metadata": {"name": "other"}, "data": {"config.json": "{}"}},
        {"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"config.json": '{"a": 1}'}},
    ]

    assert config_map_value(objects, "cfg", "config.json") == '{"a": 1}'
    with pytest.raises(ManifestShapeError, match="no key 'x'"):
        config_map_value(objects, "cfg", "x")
    with pytest.raises(ManifestShapeError, match="missing"):
        config_map_value(objects, "missing", "config.json")
