"""Pure logic of the node end-to-end suite (`tests/e2e/`).

Two translations a container runtime does on a real node, written out so the
suite can do them with the Docker engine instead of a kubelet:

- the plugin's DaemonSet container (args, env, securityContext, volume mounts)
  → the settings of one `docker run`, so the suite runs the plugin exactly as
  the rendered manifests say and a manifest change that breaks the plugin
  breaks the suite;
- an `Allocate` answer (device specs, envs, mounts, annotations) → the
  settings of the workload's `docker run`, the way the kubelet hands it to the
  runtime (`--device HOST:CONTAINER:PERMS`, `-e`, `-v`, labels).

Nothing here touches the engine or the host: callers pass in what they read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

# The plugin's flags the suite reads, with their environment twins and the
# defaults of its CLI (docs/architecture.md, issue 2).
PLUGIN_SETTINGS: Mapping[str, tuple[str, str]] = {
    "--config": ("PDP_CONFIG", "/etc/power-device-plugin/config.json"),
    "--plugin-dir": ("PDP_PLUGIN_DIR", "/var/lib/kubelet/device-plugins"),
    "--dev-root": ("PDP_DEV_ROOT", "/dev"),
    "--sys-root": ("PDP_SYS_ROOT", "/sys"),
    "--socket-name": ("PDP_SOCKET_NAME", "power-dev.csi.ibm.com-reg.sock"),
    "--resource": ("PDP_RESOURCE", "power-dev-plugin/dev"),
    "--listen": ("PDP_LISTEN", ":8080"),
}


class ManifestShapeError(ValueError):
    """The rendered manifests hold something the suite cannot run as asked."""


@dataclass(frozen=True)
class BindMount:
    """One host directory or file made visible inside the container."""

    host_path: str
    container_path: str
    read_only: bool

    def docker_spec(self) -> str:
        """`HOST:CONTAINER:ro|rw`, the form `docker run -v` and the SDK take."""
        return f"{self.host_path}:{self.container_path}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class ContainerRun:
    """The settings of one `docker run`, engine-neutral."""

    image: str
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[BindMount, ...] = ()
    devices: tuple[str, ...] = ()
    user: str | None = None
    group_add: tuple[str, ...] = ()
    read_only: bool = False
    privileged: bool = False
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    network_mode: str = "none"
    memory_limit_bytes: int | None = None
    nano_cpus: int | None = None
    # Not a `docker run` setting: how long `docker stop` waits before SIGKILL,
    # the pod's terminationGracePeriodSeconds.
    stop_grace_seconds: int = 30

    def docker_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `docker.from_env().containers.run(**kwargs)`."""
        kwargs: dict[str, Any] = {
            "image": self.image,
            "environment": dict(self.environment),
            "volumes": [bind.docker_spec() for bind in self.binds],
            "devices": list(self.devices),
            "group_add": list(self.group_add),
            "read_only": self.read_only,
            "privileged": self.privileged,
            "cap_drop": list(self.cap_drop),
            "cap_add": list(self.cap_add),
            "security_opt": list(self.security_opt),
            "labels": dict(self.labels),
            "network_mode": self.network_mode,
        }
        if self.entrypoint is not None:
            kwargs["entrypoint"] = list(self.entrypoint)
        if self.command is not None:
            kwargs["command"] = list(self.command)
        if self.user is not None:
            kwargs["user"] = self.user
        if self.memory_limit_bytes is not None:
            kwargs["mem_limit"] = self.memory_limit_bytes
        if self.nano_cpus is not None:
            kwargs["nano_cpus"] = self.nano_cpus
        return kwargs

    def host_path_of(self, container_path: str) -> str | None:
        """Where a path inside the container lives on the host, through its binds.

        The deepest bind wins, as in the container's mount table; None if no
        bind covers the path (it is then in the image's own file system).
        """
        best: BindMount | None = None
        for bind in self.binds:
            if _is_under(container_path, bind.container_path) and (
                best is None or len(bind.container_path) > len(best.container_path)
            ):
                best = bind
        if best is None:
            return None
        rest = container_path[len(best.container_path.rstrip("/")) :]
        return best.host_path.rstrip("/") + rest


def _is_under(path: str, directory: str) -> bool:
    directory = directory.rstrip("/") or "/"
    return directory == "/" or path == directory or path.startswith(directory + "/")


# --- the DaemonSet side ------------------------------------------------------


def find_daemonset(objects: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The one DaemonSet among rendered objects; refuses none or several."""
    found = [obj for obj in objects if obj and obj.get("kind") == "DaemonSet"]
    if len(found) != 1:
        names = [str(obj.get("metadata", {}).get("name")) for obj in found]
        raise ManifestShapeError(
            f"rendered manifests hold {len(found)} DaemonSets ({', '.join(names) or 'none'}); "
            "the suite runs exactly one plugin DaemonSet"
        )
    return found[0]


def config_map_value(objects: Iterable[Mapping[str, Any]], name: str, key: str) -> str:
    """One key of a rendered ConfigMap (the sample config the manifests ship)."""
    for obj in objects:
        if obj and obj.get("kind") == "ConfigMap" and _name(obj) == name:
            data = obj.get("data") or {}
            if key not in data:
                raise ManifestShapeError(
                    f"ConfigMap {name} has no key {key!r} (keys: {', '.join(sorted(data))})"
                )
            return str(data[key])
    raise ManifestShapeError(f"the rendered manifests hold no ConfigMap named {name!r}")


def plugin_container(daemonset: Mapping[str, Any], name: str | None = None) -> Mapping[str, Any]:
    """The plugin's container of the DaemonSet: the one named, or the only one."""
    containers: list[Mapping[str, Any]] = list(_pod_spec(daemonset).get("containers") or [])
    if name is not None:
        for container in containers:
            if container.get("name") == name:
                return container
        raise ManifestShapeError(
            f"DaemonSet {_name(daemonset)}: no container named {name!r} "
            f"(it has {', '.join(str(c.get('name')) for c in containers) or 'none'})"
        )
    if len(containers) != 1:
        raise ManifestShapeError(
            f"DaemonSet {_name(daemonset)} has {len(containers)} containers; name the plugin's"
        )
    return containers[0]


def _pod_spec(daemonset: Mapping[str, Any]) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = daemonset.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


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
    volumes = {str(v["name"]): v for v in _pod_spec(daemonset).get("volumes") or []}
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
    pod_security = dict(_pod_spec(daemonset).get("securityContext") or {})
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
    pod = _pod_spec(daemonset)
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host_namespace):
            raise ManifestShapeError(
                f"DaemonSet {_name(daemonset)} asks for {host_namespace}; "
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


_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL_SUFFIXES = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity (`128Mi`, `1G`, `1048576`) in bytes."""
    text = str(quantity).strip()
    for suffixes in (_BINARY_SUFFIXES, _DECIMAL_SUFFIXES):
        for suffix, factor in suffixes.items():
            if text.endswith(suffix) and _is_number(text[: -len(suffix)]):
                return int(float(text[: -len(suffix)]) * factor)
    if _is_number(text):
        return int(float(text))
    raise ManifestShapeError(f"memory quantity {quantity!r} is not one the suite understands")


def cpu_nanos(quantity: str | int | float) -> int:
    """A Kubernetes CPU quantity (`200m`, `0.5`, `2`) in billionths of a CPU."""
    text = str(quantity).strip()
    if text.endswith("m") and _is_number(text[:-1]):
        return int(float(text[:-1]) * 10**6)
    if _is_number(text):
        return int(float(text) * 10**9)
    raise ManifestShapeError(f"cpu quantity {quantity!r} is not one the suite understands")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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


def http_probe_target(container: Mapping[str, Any], probe: str) -> tuple[str, int]:
    """(path, port) of an httpGet probe (`readinessProbe`, ...), named ports resolved."""
    spec = container.get(probe) or {}
    http = spec.get("httpGet")
    if not http:
        raise ManifestShapeError(f"container {container.get('name')!r} has no httpGet {probe}")
    port = http["port"]
    if isinstance(port, str) and not port.isdigit():
        named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        if port not in named:
            raise ManifestShapeError(
                f"container {container.get('name')!r} {probe}: port name {port!r} is not declared"
            )
        port = named[port]
    return str(http.get("path", "/")), int(port)


# --- the Allocate side -------------------------------------------------------


@dataclass(frozen=True)
class GrantedDevice:
    """One DeviceSpec of an Allocate answer."""

    container_path: str
    host_path: str
    permissions: str


@dataclass(frozen=True)
class ContainerGrantView:
    """One ContainerAllocateResponse, as plain data."""

    devices: tuple[GrantedDevice, ...]
    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[BindMount, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)


_PERMISSIONS = re.compile(r"^[rwm]{1,3}$")


def device_option(device: GrantedDevice) -> str:
    """`HOST:CONTAINER:PERMS` for `docker run --device`, as the runtime applies a DeviceSpec."""
    permissions = device.permissions or "rwm"  # the runtime's default for an empty field
    if not _PERMISSIONS.match(permissions) or len(set(permissions)) != len(permissions):
        raise ValueError(
            f"DeviceSpec {device.host_path}: permissions {device.permissions!r} "
            "is not a cgroup device permission string (r, w, m)"
        )
    return f"{device.host_path}:{device.container_path}:{permissions}"


def device_groups(host_paths: Iterable[str], group_of: Callable[[str], int]) -> tuple[str, ...]:
    """The groups a non-root workload needs to open the granted nodes.

    The runtime copies each node's owner, group and mode into the container,
    so a process that is neither the owner nor root needs the node's group
    (in Kubernetes: `supplementalGroups`). Group 0 is left out: adding root's
    group to a workload would hand it far more than the devices.
    """
    groups = sorted({group_of(path) for path in host_paths} - {0})
    return tuple(str(g) for g in groups)


def workload_run(
    grant: ContainerGrantView,
    image: str,
    *,
    user: str,
    group_add: Sequence[str],
    entrypoint: Sequence[str],
    command: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> ContainerRun:
    """A least-privilege workload container with the grant applied as a runtime does.

    Devices become `--device`, envs `-e`, mounts binds, annotations labels
    (the Docker engine's nearest thing to CRI annotations).
    """
    all_labels = dict(grant.annotations)
    all_labels.update(labels or {})
    return ContainerRun(
        image=image,
        entrypoint=tuple(entrypoint),
        command=tuple(command),
        environment=dict(grant.envs),
        binds=grant.mounts,
        devices=tuple(device_option(device) for device in grant.devices),
        user=user,
        group_add=tuple(group_add),
        read_only=True,
        privileged=False,
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        labels=all_labels,
    )
