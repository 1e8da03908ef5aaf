"""Read what the rendered manifests say, for the node end-to-end suite.

Finds the plugin's DaemonSet, its container and the sample ConfigMap among the
rendered objects, and reads the values the suite needs from them: probe
targets and Kubernetes quantities. Refuses, with `ManifestShapeError`, shapes
the suite cannot run as asked. Callers pass in the parsed objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class ManifestShapeError(ValueError):
    """The rendered manifests hold something the suite cannot run as asked."""


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
        if obj and obj.get("kind") == "ConfigMap" and object_name(obj) == name:
            data = obj.get("data") or {}
            if key not in data:
                raise ManifestShapeError(
                    f"ConfigMap {name} has no key {key!r} (keys: {', '.join(sorted(data))})"
                )
            return str(data[key])
    raise ManifestShapeError(f"the rendered manifests hold no ConfigMap named {name!r}")


def plugin_container(daemonset: Mapping[str, Any], name: str | None = None) -> Mapping[str, Any]:
    """The plugin's container of the DaemonSet: the one named, or the only one."""
    containers: list[Mapping[str, Any]] = list(pod_spec(daemonset).get("containers") or [])
    if name is not None:
        for container in containers:
            if container.get("name") == name:
                return container
        raise ManifestShapeError(
            f"DaemonSet {object_name(daemonset)}: no container named {name!r} "
            f"(it has {', '.join(str(c.get('name')) for c in containers) or 'none'})"
        )
    if len(containers) != 1:
        raise ManifestShapeError(
            f"DaemonSet {object_name(daemonset)} has {len(containers)} containers;"
            " name the plugin's"
        )
    return containers[0]


def pod_spec(daemonset: Mapping[str, Any]) -> Mapping[str, Any]:
    """The DaemonSet's pod template spec; empty if it has none."""
    spec: Mapping[str, Any] = daemonset.get("spec", {}).get("template", {}).get("spec", {})
    return spec


def object_name(obj: Mapping[str, Any]) -> str:
    """`metadata.name` of a rendered object, for messages; `?` if it has none."""
    return str(obj.get("metadata", {}).get("name", "?"))


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
