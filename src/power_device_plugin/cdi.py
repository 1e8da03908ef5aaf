"""The CDI spec the plugin writes: what a granted unit becomes inside the container.

Why CDI. A bare ``DeviceSpec`` makes the runtime create the node inside the
container with the host node's owner and mode, usually ``root:disk 0660`` or
``root:root 0600``; the non-root, capability-less workload this plugin exists for
then cannot open it unless the node has a udev rule or CRI-O runs with
``device_ownership_from_security_context``. A CDI device carries ``deviceNodes``
whose ``uid``, ``gid`` and ``fileMode`` the runtime applies when it creates the
node in the container, so the owner/mode set by the config key ``device-owner``
is what the workload sees, on any node whose runtime understands CDI (containerd
>= 1.7 with ``enable_cdi``, CRI-O, Docker >= 25 with its ``cdi`` feature) and whose
kubelet passes CDI names from device plugins (``DevicePluginCDIDevices``: alpha
in 1.28, on by default from 1.29). See ``docs/cdi.md``.

When it is written. Only when a grant needs it: the config key ``cdi`` defaults to
``auto`` (:func:`resolve_mode`), which names CDI devices only when ``device-owner`` is
set; ``both`` or ``only`` chosen explicitly write it too.

What is written. One JSON file per plugin and kind (:func:`spec_file_name`), in
the host's CDI directory (``/var/run/cdi`` by default), holding one CDI device per
advertised unit (its name is the unit ID), each with the unit's device nodes.
The kind is derived from the extended resource (:func:`cdi_kind_for`), so
``Allocate`` can answer ``power-dev-plugin.ibm.com/dev=set-0``
(:func:`qualified_name`).

How the file is kept. :func:`write_spec` replaces it atomically: a temporary
file in the same directory whose name starts with ``.`` and does not end in
``.json``/``.yaml`` (CDI registries only read those, so they never see a
half-written spec), fsync, ``os.replace``, fsync of the directory. An unchanged
spec is not rewritten, so a runtime watching the directory is not woken for
nothing. :func:`remove_spec` removes our file and our stale temporaries, and
nothing else: other vendors' specs live in the same directory.

This module is pure apart from the two file functions; it imports nothing else of
the plugin.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The lowest CDI spec version with every field we emit: ``hostPath`` in
# ``deviceNodes`` arrived in 0.5.0 (``uid``/``gid``/``fileMode``/``type``/``major``/
# ``minor`` are older). We emit no spec or device ``annotations`` and our classes
# have no dot (both 0.6.0 features), so 0.5.0 is enough; and the oldest runtimes
# we support (containerd 1.7.0) parse with a CDI library that knows no version
# above 0.5.0 and refuses a spec that claims one. A class with a dot needs 0.6.0:
# see :func:`cdi_version_for`.
CDI_VERSION = "0.5.0"
CDI_VERSION_DOTTED_CLASS = "0.6.0"

# The config key ``cdi``: what ``Allocate`` returns.
CDI_OFF = "off"  # DeviceSpecs only (the answer before CDI)
CDI_BOTH = "both"  # DeviceSpecs and CDI names: works whether or not the runtime reads CDI
CDI_ONLY = "only"  # CDI names only: the runtime must read CDI or the container gets nothing
CDI_MODES = (CDI_OFF, CDI_BOTH, CDI_ONLY)
# The default (the key absent, or "auto"): ``both`` when ``device-owner`` is set, the one
# thing only a CDI spec can give, else ``off``. A spec on the node is a capability (any
# runtime or NRI plugin that injects CDI devices named in pod annotations hands it to
# whoever names it; see docs/cdi.md), so none is written unless a grant needs it.
CDI_AUTO = "auto"
CDI_CHOICES = (*CDI_MODES, CDI_AUTO)
# What a cluster needs for each mode (logged when the kubelet asks for the options).
CDI_MODE_NEEDS = {
    CDI_OFF: "grants carry DeviceSpecs only: nodes keep the host's owner and mode",
    CDI_BOTH: "grants carry DeviceSpecs and CDI names: the device-owner applies where the "
    "kubelet passes CDI names (1.28 with DevicePluginCDIDevices, default from 1.29) and the "
    "runtime reads CDI specs; elsewhere the DeviceSpecs still grant the devices",
    CDI_ONLY: "grants carry CDI names only: the kubelet must pass CDI names and the runtime "
    "must read CDI specs, or a container gets no device",
}
CDI_DEFAULT_MODE = CDI_AUTO

DEFAULT_CDI_DIR = "/var/run/cdi"

# A resource domain without a dot is not a CDI vendor we can own; this suffix
# makes it one (``power-dev-plugin`` -> ``power-dev-plugin.ibm.com``).
VENDOR_SUFFIX = ".ibm.com"

GRANT_ENV = "PDP_DEVICES"
_ENV_UNSAFE = re.compile(r"[^A-Z0-9]+")
GRANT_ANNOTATION_SUFFIX = "-devices"

SPEC_MODE = 0o644
TEMP_MARKER = ".tmp-"

MAX_ID = 2**32 - 2  # 2**32 - 1 is (uid_t)-1, "no change", to chown and to runtimes
MAX_FILE_MODE = 0o777
_NODE_TYPES = {"block": "b", "char": "c"}

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
# CDI kind segments. The spec asks for alphanumerics at both ends; the reference
# parser (the Go library the runtimes use) also wants a letter first, so we do too.
_CDI_CLASS = re.compile(r"[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_CDI_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_K8S_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_OCTAL_MODE = re.compile(r"(0o|0)?([0-7]+)")
MAX_SUBDOMAIN = 253
MAX_NAME = 63


@dataclass(frozen=True)
class DeviceOwner:
    """Who owns a granted node inside the container; ``None`` keeps the runtime's default."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None  # permission bits, e.g. 0o660

    @property
    def is_set(self) -> bool:
        return self.uid is not None or self.gid is not None or self.mode is not None


def resolve_mode(chosen: str, owner: DeviceOwner) -> str:
    """The mode grants use for the ``cdi`` key's value: ``auto`` is ``both`` with a
    ``device-owner`` set and ``off`` without; the other values are themselves."""
    if chosen != CDI_AUTO:
        return chosen
    return CDI_BOTH if owner.is_set else CDI_OFF


@dataclass(frozen=True)
class CdiNode:
    """One device node of a CDI device: where it appears and what it is."""

    container_path: str
    host_path: str
    kind: str  # "block" | "char"
    major: int
    minor: int
    permissions: str  # cgroup letters, e.g. "rw"


@dataclass(frozen=True)
class CdiDevice:
    """One advertised unit: its ID and the nodes it grants."""

    name: str
    nodes: tuple[CdiNode, ...]


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _parse_id(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: must be a whole number, got {_type_name(value)}")
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"{where}: must be between 0 and {MAX_ID}, got {value}")
    return value


def _parse_mode(value: object, where: str) -> int:
    # A number is refused: JSON has no octal, so 660 would be decimal 660 (0o1224)
    # and 0660 is not JSON at all. The string says what the admin means.
    if not isinstance(value, str):
        raise ValueError(
            f'{where}: must be a string of octal digits such as "0660", got {_type_name(value)}'
        )
    match = _OCTAL_MODE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f'{where}: {value!r} is not an octal mode; write it like "0660"')
    mode = int(match.group(2), 8)
    # Only permission bits: runtimes decode fileMode into Go's os.FileMode, which
    # keeps setuid/setgid/sticky in other bits, so 0o4000 would not mean setuid.
    if mode > MAX_FILE_MODE:
        raise ValueError(f'{where}: {value!r} is more than permission bits; the most is "0777"')
    return mode


def parse_device_owner(value: object, field: str = "device-owner") -> DeviceOwner:
    """Parse the ``device-owner`` object: ``{"uid": 1000, "gid": 1000, "mode": "0660"}``.

    Every member is optional. ``uid`` and ``gid`` are whole numbers 0..2**32-2;
    ``mode`` is a string of octal digits (``"0660"``, ``"660"`` or ``"0o660"``) of
    permission bits only (at most ``"0777"``). Raises ValueError naming the member.
    """
    if not isinstance(value, dict):
        raise ValueError(
            f'{field}: must be an object like {{"uid": 1000}}, got {_type_name(value)}'
        )
    known = ("uid", "gid", "mode")
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        raise ValueError(
            f"{field}: unknown member {', '.join(repr(k) for k in unknown)}; "
            f"known members are {', '.join(known)}"
        )
    uid = value.get("uid")
    gid = value.get("gid")
    mode = value.get("mode")
    return DeviceOwner(
        uid=None if uid is None else _parse_id(uid, f"{field}.uid"),
        gid=None if gid is None else _parse_id(gid, f"{field}.gid"),
        mode=None if mode is None else _parse_mode(mode, f"{field}.mode"),
    )


def _split_kind(kind: str) -> tuple[str, str]:
    vendor, slash, class_ = kind.partition("/")
    if not slash:
        raise ValueError(f"CDI kind {kind!r} has no '/': it must be vendor/class")
    return vendor, class_


def validate_kind(kind: str) -> str:
    """Return ``kind`` if it is a valid CDI kind ``vendor/class``; raise ValueError if not."""
    vendor, class_ = _split_kind(kind)
    if len(vendor) > MAX_SUBDOMAIN or not _DNS_SUBDOMAIN.fullmatch(vendor):
        raise ValueError(
            f"CDI kind {kind!r}: vendor {vendor!r} must be a lower-case DNS subdomain "
            f"of at most {MAX_SUBDOMAIN} characters"
        )
    if not vendor[0].isalpha():
        raise ValueError(f"CDI kind {kind!r}: vendor {vendor!r} must start with a letter")
    if len(class_) > MAX_NAME or not _CDI_CLASS.fullmatch(class_):
        raise ValueError(
            f"CDI kind {kind!r}: class {class_!r} must be at most {MAX_NAME} letters, digits, "
            "'-', '_' or '.', starting with a letter and ending with a letter or digit"
        )
    return kind


def cdi_kind_for(resource: str) -> str:
    """The CDI kind for an extended resource.

    ``power-dev-plugin/dev`` -> ``power-dev-plugin.ibm.com/dev``.

    The vendor is the resource's domain, with ``.ibm.com`` appended when it has no
    dot (a CDI vendor is a domain someone owns); the class is the resource's name.
    Raises ValueError for a resource that cannot make a valid kind.
    """
    domain, slash, name = resource.partition("/")
    if not slash or not domain or not name:
        raise ValueError(f"resource {resource!r} must be domain/name to give a CDI kind")
    vendor = domain if "." in domain else domain + VENDOR_SUFFIX
    try:
        return validate_kind(f"{vendor}/{name}")
    except ValueError as exc:
        raise ValueError(f"resource {resource!r} gives no valid CDI kind: {exc}") from None


def cdi_version_for(kind: str) -> str:
    """The ``cdiVersion`` a spec of this kind needs: a dot in the class needs 0.6.0."""
    _, class_ = _split_kind(kind)
    return CDI_VERSION_DOTTED_CLASS if "." in class_ else CDI_VERSION


def spec_file_name(kind: str) -> str:
    """Our spec's file name, unique to the plugin and kind: ``<vendor>-<class>.json``."""
    vendor, class_ = _split_kind(validate_kind(kind))
    return f"{vendor}-{class_}.json"


def _validate_device_name(name: str) -> str:
    if not _CDI_DEVICE_NAME.fullmatch(name):
        raise ValueError(
            f"CDI device name {name!r} must be letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return name


def qualified_name(kind: str, device_name: str) -> str:
    """The fully qualified CDI device name: ``power-dev-plugin.ibm.com/dev=set-0``."""
    return f"{validate_kind(kind)}={_validate_device_name(device_name)}"


def _device_node(node: CdiNode, owner: DeviceOwner | None, where: str) -> dict[str, Any]:
    node_type = _NODE_TYPES.get(node.kind)
    if node_type is None:
        raise ValueError(f"{where}: kind {node.kind!r} is not one of {', '.join(_NODE_TYPES)}")
    for label, path in (("container path", node.container_path), ("host path", node.host_path)):
        if not path.startswith("/"):
            raise ValueError(f"{where}: {label} {path!r} is not absolute")
    for label, number in (("major", node.major), ("minor", node.minor)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise ValueError(f"{where}: {label} {number!r} is not a device number")
    letters = node.permissions
    if not letters or set(letters) - set("rwm") or len(set(letters)) != len(letters):
        raise ValueError(f"{where}: permissions {letters!r} must be distinct letters of r, w, m")
    entry: dict[str, Any] = {
        "path": node.container_path,
        "hostPath": node.host_path,
        "type": node_type,
        "major": node.major,
        "minor": node.minor,
        "permissions": letters,
    }
    if owner is not None:
        if owner.uid is not None:
            entry["uid"] = owner.uid
        if owner.gid is not None:
            entry["gid"] = owner.gid
        if owner.mode is not None:
            entry["fileMode"] = owner.mode
    return entry


def _validated_devices(
    kind: str, devices: Sequence[CdiDevice], owner: DeviceOwner | None
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each device's name and node entries, after every check :func:`build_spec` names.

    One entry per distinct node: all mode's ``all`` device repeats every device's node,
    and the entries are only read (rendered), never changed."""
    validate_kind(kind)
    if not devices:
        raise ValueError(f"CDI spec {kind!r}: no devices; a CDI spec must list at least one")
    seen: set[str] = set()
    validated: list[tuple[str, list[dict[str, Any]]]] = []
    rendered: dict[CdiNode, dict[str, Any]] = {}
    for device in devices:
        _validate_device_name(device.name)
        if device.name in seen:
            raise ValueError(f"CDI spec {kind!r}: device {device.name!r} is listed twice")
        seen.add(device.name)
        if not device.nodes:
            raise ValueError(f"CDI device {device.name!r} has no device nodes")
        nodes = []
        for i, node in enumerate(device.nodes):
            entry = rendered.get(node)
            if entry is None:
                entry = _device_node(node, owner, f"CDI device {device.name!r} node {i}")
                rendered[node] = entry
            nodes.append(entry)
        validated.append((device.name, nodes))
    return validated


def build_spec(
    kind: str, devices: Sequence[CdiDevice], owner: DeviceOwner | None
) -> dict[str, Any]:
    """The CDI spec for these units: one CDI device per unit, in the order given.

    Each device node has its container path, host path, type (``b``/``c``), major,
    minor and cgroup permissions, and ``uid``/``gid``/``fileMode`` only for the
    members ``owner`` sets. The CDI spec wants at least one device and unique
    names: an empty ``devices`` or a repeated name raises ValueError (with no
    units, remove the spec instead; see :func:`keep_spec`).
    """
    entries = [
        {"name": name, "containerEdits": {"deviceNodes": nodes}}
        for name, nodes in _validated_devices(kind, devices, owner)
    ]
    return {"cdiVersion": cdi_version_for(kind), "kind": kind, "devices": entries}


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_content(kind: str, devices: Sequence[CdiDevice], owner: DeviceOwner | None) -> bytes:
    """``render_spec(build_spec(kind, devices, owner))``, the same bytes, with less memory.

    Each distinct node is encoded once and its text reused (all mode's ``all`` device
    repeats all of them), and each device is joined from those texts: the encoder
    never holds the whole spec's tokens at once (~3 MiB of short-lived strings for
    1000 devices in all mode, which the heap kept as RSS). The keys are written in
    sorted order, as ``render_spec`` sorts them."""
    encoded: dict[int, str] = {}  # id() of a node entry (alive in ``validated``) -> text
    parts = []
    for name, nodes in _validated_devices(kind, devices, owner):
        texts = []
        for node in nodes:
            text = encoded.get(id(node))
            if text is None:
                text = encoded[id(node)] = _compact(node)
            texts.append(text)
        parts.append(
            '{"containerEdits":{"deviceNodes":['
            + ",".join(texts)
            + ']},"name":'
            + _compact(name)
            + "}"
        )
    version = _compact(cdi_version_for(kind))
    body = f'{{"cdiVersion":{version},"devices":[{",".join(parts)}],"kind":{_compact(kind)}}}'
    return (body + "\n").encode("utf-8")


def render_spec(spec: Mapping[str, Any]) -> bytes:
    """The spec as stable JSON bytes: sorted keys, compact, a final newline.

    Compact because json's C encoder only runs without ``indent``: an indented spec
    of 1000 devices in all mode went through the pure-Python encoder, ~4.4 MiB of
    short-lived strings at its peak (a lasting share of the plugin's RSS) and ~30 ms.
    ``jq . <file>`` shows it indented."""
    return (_compact(spec) + "\n").encode("utf-8")


def _temp_prefix(kind: str) -> str:
    return f".{spec_file_name(kind)}{TEMP_MARKER}"


def _os_error(exc: OSError, action: str, path: Path) -> OSError:
    code = exc.errno if exc.errno is not None else errno.EIO
    reason = exc.strerror or str(exc)
    return OSError(code, f"cannot {action} CDI spec: {reason}", str(path))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_spec(directory: Path, kind: str, spec: Mapping[str, Any]) -> Path:
    """Write ``spec`` as our spec file in ``directory``, atomically; return its path.

    Creates the directory if missing. Unchanged content is not rewritten. Never
    touches another file than ours and its temporary. Raises OSError naming the
    path; the previous spec, if any, is then still in place.
    """
    return write_spec_content(directory, kind, render_spec(spec))


def write_spec_content(directory: Path, kind: str, content: bytes) -> Path:
    """:func:`write_spec` for a spec already rendered (:func:`spec_content`)."""
    path = directory / spec_file_name(kind)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if _current_content(path) == content:
            return path
    except OSError as exc:
        raise _os_error(exc, "read", path) from None
    # os.urandom, not secrets: the name only has to differ from a leftover's, and the
    # secrets module brings random, hmac and bisect into the plugin for nothing else.
    temp = directory / f"{_temp_prefix(kind)}{os.urandom(4).hex()}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SPEC_MODE)
        try:
            os.fchmod(fd, SPEC_MODE)  # the umask must not make it unreadable to the runtime
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        _fsync_directory(directory)
    except OSError as exc:
        try:
            temp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # the first error is the one to report
        raise _os_error(exc, "write", path) from None
    return path


def remove_spec(directory: Path, kind: str) -> bool:
    """Remove our spec file and our stale temporaries; True if the spec was there."""
    path = directory / spec_file_name(kind)
    prefix = _temp_prefix(kind)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _os_error(exc, "list the directory of", path) from None
    for name in names:
        if name.startswith(prefix):
            try:
                (directory / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _os_error(exc, "remove a temporary of", path) from None
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _os_error(exc, "remove", path) from None
    return True


def keep_spec(
    directory: Path, kind: str, devices: Sequence[CdiDevice], owner: DeviceOwner | None
) -> Path | None:
    """Bring the spec file in line with ``devices``: write it, or remove it when empty.

    Returns the path written, or None when there is no unit (and so no spec).
    """
    if not devices:
        remove_spec(directory, kind)
        return None
    return write_spec_content(directory, kind, spec_content(kind, devices, owner))


def _unique(paths: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(paths))


def grant_value(container_paths: Sequence[str]) -> str:
    """What the env variable and the annotation hold: the paths in the order given, each
    once, comma-separated (``/dev/dm-0,/dev/dm-3``)."""
    return ",".join(_unique(container_paths))


def grant_env(container_paths: Sequence[str]) -> dict[str, str]:
    """The grant as an environment variable: ``{"PDP_DEVICES": "/dev/dm-0,/dev/dm-3"}``."""
    return {GRANT_ENV: grant_value(container_paths)}


def grant_env_for(resource: str) -> str:
    """The env var a resource of a ``resources`` list sets in a grant, so two resources
    in one container do not overwrite each other: ``example.com/scratch`` ->
    ``PDP_DEVICES_EXAMPLE_COM_SCRATCH``. (IBM's one resource keeps ``PDP_DEVICES``.)"""
    return f"{GRANT_ENV}_{_ENV_UNSAFE.sub('_', resource.upper()).strip('_')}"


def grant_annotation_key(resource: str) -> str:
    """The annotation key for a resource's grant: ``<vendor>/<class>-devices``.

    ``power-dev-plugin/dev`` -> ``power-dev-plugin.ibm.com/dev-devices``. The
    prefix is the CDI vendor (a DNS subdomain of at most 253 characters); the name
    is cut so it stays within Kubernetes' 63 characters.
    """
    vendor, class_ = _split_kind(cdi_kind_for(resource))
    head = class_[: MAX_NAME - len(GRANT_ANNOTATION_SUFFIX)].rstrip("-_.")
    name = head + GRANT_ANNOTATION_SUFFIX
    # The class starts with a letter, so ``head`` is never empty.
    if not _K8S_NAME.fullmatch(name):
        raise ValueError(f"resource {resource!r} gives no valid annotation name: {name!r}")
    return f"{vendor}/{name}"


def grant_annotations(container_paths: Sequence[str], resource: str) -> dict[str, str]:
    """The grant as an annotation: ``{"power-dev-plugin.ibm.com/dev-devices": "/dev/dm-0,..."}``."""
    return {grant_annotation_key(resource): grant_value(container_paths)}
