"""The plugin's DaemonSet container → the settings of one `docker run`.

What a container runtime does on a real node, written out so the node suite
(`tests/e2e/`) runs the plugin exactly as the rendered manifests say (args,
env, securityContext, volume mounts, resource limits), and a manifest change
that breaks the plugin breaks the suite. Callers pass in the parsed
DaemonSet; nothing here touches the engine or the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from pdp_pipeline.e2e.container import BindMount, ContainerRun
from pdp_pipeline.e2e.manifest import (
    ManifestShapeError,
    cpu_nanos,
    memory_bytes,
    object_name,
    plugin_container,
    pod_spec,
)

# The plugin's flags the suite reads, with their environment twins and the
# defaults of its CLI (docs/architecture.md, issue 2).
PLUGIN_SETTINGS: Mapping[str, tuple[str, str]] = {
    "--config": ("PDP_CONFIG", "/etc/power-device-plugin/config.json"),
    "--plugin-dir": ("PDP_PLUGIN_DIR", "/var/lib/kubelet/device-plugins"),
    "--dev-root": ("PDP_DEV_ROOT", "/dev"),
    "--sys-root": ("PDP_SYS_ROOT", "/sys"),
    "--host-proc": ("PDP_HOST_PROC", "/proc"),
    "--cdi-dir": ("PDP_CDI_DIR", "/var/run/cdi"),
    "--socket-name": ("PDP_SOCKET_NAME", "power-dev.csi.ibm.com-reg.sock"),
    "--resource": ("PDP_RESOURCE", "power-dev-plugin/dev"),
    "--listen": ("PDP_LISTEN", ":8080"),
}


def container_environment(
    container: Mapping[str, Any], field_values: Mapping[str, str]
) -> dict[str, str]:
    """The container's `env`, with `fieldRef`s filled from `field_values`.

    `field_values` maps a fieldPath (`spec.nodeName`) to the value the kubelet
    would put there. Secrets and resource references are refused by name:
    the plugin's DaemonSet is not supposed to need them.
    """
    environment: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = str(entry["name"])
        if "value" in entry:
            environment[name] = expand_kube_vars(str(entry["value"]), environment)
            continue
        source = entry.get("valueFrom") or {}
        field_path = (source.get("fieldRef") or {}).get("fieldPath")
        if field_path is None:
            raise ManifestShapeError(
                f"container {container.get('name')!r} env {name}: only value and fieldRef "
                f"are supported here, found {sorted(source) or 'nothing'}"
            )
        if field_path not in field_values:
            raise ManifestShapeError(
                f"container {container.get('name')!r} env {name}: fieldRef {field_path} has "
                f"no stand-in value (known: {', '.join(sorted(field_values)) or 'none'})"
            )
        environment[name] = field_values[field_path]
    if container.get("envFrom"):
        raise ManifestShapeError(
            f"container {container.get('name')!r}: envFrom is not supported by the node suite"
        )
    return environment


_KUBE_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_kube_vars(text: str, environment: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values.

    `$$` is a literal `$`; a reference to an unknown variable stays as written,
    as the kubelet leaves it.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return environment.get(match.group(1), match.group(0))

    return _KUBE_VAR.sub(replace, text)


def container_binds(
    daemonset: Mapping[str, Any],
    container: Mapping[str, Any],
    host_paths: Mapping[str, str],
    config_maps: Mapping[str, str],
) -> tuple[BindMount, ...]:
    """The container's volume mounts as binds, with node paths stood in for.

    `host_paths` maps a hostPath volume's path to the directory used instead
    (a temp device plugin directory); paths not in it are used as they are
    (the host's `/dev`, `/sys`). `config_maps` maps a ConfigMap's name to a
    directory holding its keys as files.
    """
    volumes = {str(v["name"]): v for v in pod_spec(daemonset).get("volumes") or []}
    binds: list[BindMount] = []
    for mount in container.get("volumeMounts") or []:
        volume_name = str(mount["name"])
        where = f"container {container.get('name')!r} volumeMount {volume_name!r}"
        if mount.get("subPath") or mount.get("subPathExpr"):
            # A subPath mount never sees ConfigMap updates: the plugin's live
            # config reload would silently stop working on a real node.
            raise ManifestShapeError(f"{where}: subPath is not supported")
        volume = volumes.get(volume_name)
        if volume is None:
            raise ManifestShapeError(f"{where}: no volume of that name in the pod")
        read_only = bool(mount.get("readOnly", False))
        if "hostPath" in volume:
            path = str(volume["hostPath"]["path"])
            host = host_paths.get(path, path)
        elif "configMap" in volume:
            config_name = str(volume["configMap"]["name"])
            if config_name not in config_maps:
                raise ManifestShapeError(
                    f"{where}: ConfigMap {config_name!r} has no stand-in directory"
                )
            host = config_maps[config_name]
            # The kubelet always mounts ConfigMap volumes read-only.
            read_only = True
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise ManifestShapeError(f"{where}: volume kind {kinds} is not supported")
        binds.append(BindMount(host, str(mount["mountPath"]), read_only))
    return tuple(binds)


def _effective_security(
    daemonset: Mapping[str, Any], container: Mapping[str, Any]
) -> dict[str, Any]:
    """Container securityContext over the pod's, as the kubelet merges them."""
    pod_security = dict(pod_spec(daemonset).get("securityContext") or {})
    merged = {k: v for k, v in pod_security.items() if k in ("runAsUser", "runAsGroup")}
    merged.update(container.get("securityContext") or {})
    merged["supplementalGroups"] = list(pod_security.get("supplementalGroups") or [])
    return merged


def security_settings(daemonset: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, Any]:
    """The DaemonSet's security settings in `docker run` terms (ContainerRun fields)."""
    security = _effective_security(daemonset, container)
    capabilities = security.get("capabilities") or {}
    user: str | None = None
    if "runAsUser" in security:
        user = str(security["runAsUser"])
        if "runAsGroup" in security:
            user += f":{security['runAsGroup']}"
    security_opt: list[str] = []
    if security.get("allowPrivilegeEscalation") is False:
        security_opt.append("no-new-privileges")
    seccomp = (security.get("seccompProfile") or {}).get("type")
    if seccomp == "Unconfined":
        security_opt.append("seccomp=unconfined")
    # RuntimeDefault is the engine's default profile: nothing to add.
    return {
        "user": user,
        "group_add": tuple(str(g) for g in security["supplementalGroups"]),
        "read_only": bool(security.get("readOnlyRootFilesystem", False)),
        "privileged": bool(security.get("privileged", False)),
        "cap_drop": tuple(str(c) for c in capabilities.get("drop") or ()),
        "cap_add": tuple(str(c) for c in capabilities.get("add") or ()),
        "security_opt": tuple(security_opt),
    }


def plugin_run(
    daemonset: Mapping[str, Any],
    image: str,
    *,
    host_paths: Mapping[str, str],
    config_maps: Mapping[str, str],
    field_values: Mapping[str, str],
    container_name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> ContainerRun:
    """The `docker run` that runs the plugin container as the DaemonSet says.

    The pod's network stays its own (`none`): the plugin talks to the kubelet
    over unix sockets only, and its health port then cannot collide with
    anything on the host.
    """
    pod = pod_spec(daemonset)
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host_namespace):
            raise ManifestShapeError(
                f"DaemonSet {object_name(daemonset)} asks for {host_namespace}; "
                "the node suite runs the plugin without host namespaces"
            )
    container = plugin_container(daemonset, container_name)
    environment = container_environment(container, field_values)
    command = container.get("command")
    args = container.get("args")
    return ContainerRun(
        image=image,
        entrypoint=None if command is None else _expanded(command, environment),
        command=None if args is None else _expanded(args, environment),
        environment=environment,
        binds=container_binds(daemonset, container, host_paths, config_maps),
        labels=dict(labels or {}),
        stop_grace_seconds=int(pod.get("terminationGracePeriodSeconds", 30)),
        **resource_limits(container),
        **security_settings(daemonset, container),
    )


def resource_limits(container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's resource limits as ContainerRun fields (requests only schedule)."""
    limits = (container.get("resources") or {}).get("limits") or {}
    return {
        "memory_limit_bytes": memory_bytes(limits["memory"]) if "memory" in limits else None,
        "nano_cpus": cpu_nanos(limits["cpu"]) if "cpu" in limits else None,
    }


def _expanded(words: Sequence[Any], environment: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(expand_kube_vars(str(word), environment) for word in words)


def plugin_setting(run: ContainerRun, flag: str) -> str:
    """The value the plugin sees for one of its flags: the flag, else its env twin, else default.

    Reads the command line the same way the plugin's argparse does
    (`--flag value` or `--flag=value`, last one wins).
    """
    env_name, default = PLUGIN_SETTINGS[flag]
    value: str | None = None
    words = list(run.command or ())
    for index, word in enumerate(words):
        if word == flag and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith(flag + "="):
            value = word[len(flag) + 1 :]
    if value is not None:
        return value
    return run.environment.get(env_name, default)
