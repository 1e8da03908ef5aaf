"""The plugin's ``config.json``: parse and validate it, with defaults applied.

The format is the IBM power-device-plugin's, as users already have it in their
ConfigMaps (``nx-gzip``, ``permissions``, ``include-devices``, ``exclude-devices``,
``discovery-strategy``, ``scan-interval``, ``upper-limit``), plus ``grant-mode``.
Every key is described in ``docs/configuration.md``.

Parsing is pure (:func:`parse_config`); :func:`load_config` only reads the file,
and a missing file is an error like any other (the plugin fails closed).
Keeping the last good config when a new one is invalid is the watcher's job
(``watch.ConfigWatcher``): here an invalid document is a :class:`ConfigError`
that names the file, the field and the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cdi import (
    CDI_CHOICES,
    CDI_DEFAULT_MODE,
    CDI_OFF,
    DeviceOwner,
    cdi_kind_for,
    grant_env_for,
    parse_device_owner,
    resolve_mode,
)

GRANT_ALL = "all"
GRANT_PER_DEVICE = "per-device"
GRANT_MODES = (GRANT_ALL, GRANT_PER_DEVICE)

STRATEGY_DEFAULT = "default"
STRATEGY_TIME = "time"
DISCOVERY_STRATEGIES = (STRATEGY_DEFAULT, STRATEGY_TIME)

# The node IBM's plugin adds when nx-gzip is enabled (the Power NX GZIP accelerator).
NX_GZIP_HOST_PATH = "/dev/crypto/nx-gzip"

DEFAULT_PERMISSIONS = "rw"
DEFAULT_SCAN_INTERVAL_SECONDS = 60.0
MIN_SCAN_INTERVAL_SECONDS = 1.0
# Every advertised ID is one entry in every ListAndWatch message the kubelet keeps;
# a bound keeps a typo (100000) from flooding the kubelet.
MAX_UPPER_LIMIT = 1000

DOCUMENT_FIELD = "<document>"
HOST_DEV_PREFIX = "/dev/"

# IBM's one resource: what a file without ``resources`` advertises (unless --resource
# names another).
DEFAULT_RESOURCE = "power-dev-plugin/dev"
RESOURCES_KEY = "resources"
# Each resource is one gRPC server, one registration and one stream the kubelet keeps.
MAX_RESOURCES = 64
# Units across every resource: each is an entry in a ListAndWatch list the kubelet
# keeps (one resource alone is capped at devices.MAX_UNITS).
MAX_TOTAL_UNITS = 20_000

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def resource_name(text: str) -> str:
    """A valid extended resource name (`domain/name`, not in kubernetes.io); ValueError says why."""
    domain, sep, name = text.partition("/")
    if not sep or not domain or not name:
        raise ValueError(f"{text!r} must be domain/name, like {DEFAULT_RESOURCE!r}")
    if len(domain) > 253 or not _DNS_SUBDOMAIN.match(domain):
        raise ValueError(f"{text!r}: domain {domain!r} is not a lower-case DNS subdomain")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        raise ValueError(f"{text!r}: the kubernetes.io domain is reserved; use your own domain")
    if domain.startswith("requests."):
        raise ValueError(f"{text!r}: a domain starting with 'requests.' is reserved for quotas")
    if len(name) > 63 or not _NAME.match(name):
        raise ValueError(
            f"{text!r}: name {name!r} must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    try:
        cdi_kind_for(text)
    except ValueError as error:
        raise ValueError(f"{text!r} makes no CDI kind: {error}") from None
    return text


class ConfigError(Exception):
    """An invalid config: which file, which field, and what was wrong with it."""

    def __init__(self, path: str, field: str, reason: str) -> None:
        super().__init__(f"{path}: {field}: {reason}")
        self.path = path
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class PluginConfig:
    """Every key of ``config.json``, defaults applied.

    ``upper_limit`` is ``None`` when the file leaves it out (or sets 0): the grant
    mode then picks its own default (see ``devices.py``).
    """

    nx_gzip: bool = False
    permissions: str = DEFAULT_PERMISSIONS
    include_devices: tuple[str, ...] = ()
    exclude_devices: tuple[str, ...] = ()
    discovery_strategy: str = STRATEGY_DEFAULT
    scan_interval_seconds: float = DEFAULT_SCAN_INTERVAL_SECONDS
    upper_limit: int | None = None
    grant_mode: str = GRANT_ALL
    # How a grant names its devices: DeviceSpecs, CDI names, or both (see cdi.py). Always
    # one of cdi.CDI_MODES: the key's default, "auto", is resolved by parse_config.
    cdi: str = CDI_OFF
    # The owner and mode a granted node gets inside the container (CDI only).
    device_owner: DeviceOwner = field(default_factory=DeviceOwner)


def parse_permissions(value: str) -> str:
    """Normalise a cgroup device permission string to canonical ``rwm`` order.

    IBM's plugin accepted upper case (``RW``); any order of distinct r, w, m is fine.
    Raises ValueError with the reason.
    """
    letters = value.strip().lower()
    if not letters:
        raise ValueError("is empty; use a combination of r, w and m such as 'rw'")
    bad = sorted({c for c in letters if c not in "rwm"})
    if bad:
        raise ValueError(
            f"{value!r} has {', '.join(repr(c) for c in bad)}; only r, w and m are allowed"
        )
    if len(set(letters)) != len(letters):
        raise ValueError(f"{value!r} repeats a letter; each of r, w, m may appear once")
    return "".join(c for c in "rwm" if c in letters)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a Go-style duration such as ``30s``, ``10m``, ``2h`` or ``1m30s``.

    Raises ValueError with the reason.
    """
    text = value.strip()
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration; write a number and a unit (ms, s, m, h), "
                "for example '30s', '10m', '2h' or '1m30s'"
            )
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text:
        raise ValueError("is empty; write a duration such as '30s', '10m' or '2h'")
    return total


def validate_glob(pattern: str) -> str:
    """Check one device glob written in host terms (``/dev/dm-*``); return it stripped.

    Raises ValueError with the reason.
    """
    text = pattern.strip()
    if not text:
        raise ValueError("is an empty pattern")
    if "\x00" in text:
        raise ValueError(f"{pattern!r} contains a NUL byte")
    if not text.startswith(HOST_DEV_PREFIX):
        raise ValueError(f"{pattern!r} must be an absolute path under /dev/, like '/dev/dm-*'")
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
    if depth:
        raise ValueError(f"{pattern!r} has a '[' without its closing ']'")
    return text


def _is_int(value: object) -> bool:
    # bool is a subclass of int in Python; JSON true is not a number here.
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class _Reader:
    """Reads typed values out of the decoded document, raising ConfigError on misuse."""

    def __init__(self, doc: dict[str, Any], source: str) -> None:
        self.doc = doc
        self.source = source

    def error(self, field: str, reason: str) -> ConfigError:
        return ConfigError(self.source, field, reason)

    def bool_(self, key: str, default: bool) -> bool:
        if key not in self.doc:
            return default
        value = self.doc[key]
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_type_name(value)}")
        return value

    def str_(self, key: str, default: str) -> str:
        if key not in self.doc:
            return default
        value = self.doc[key]
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_type_name(value)}")
        return value

    def checked(self, key: str, value: str, check: Callable[[str], Any]) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str_(key, default).strip()
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise self.error(key, f"{value!r} is not one of {allowed}")
        return value

    def globs(self, key: str) -> tuple[str, ...]:
        if key not in self.doc or self.doc[key] is None:
            return ()
        value = self.doc[key]
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of globs, got {_type_name(value)}")
        patterns: list[str] = []
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if not isinstance(item, str):
                raise self.error(where, f"must be a string, got {_type_name(item)}")
            pattern = self.checked(where, item, validate_glob)
            if pattern not in patterns:
                patterns.append(pattern)
        return tuple(patterns)

    def owner(self, key: str) -> DeviceOwner:
        if key not in self.doc or self.doc[key] is None:
            return DeviceOwner()
        try:
            return parse_device_owner(self.doc[key], field=key)
        except ValueError as exc:
            # The text starts with the member ("device-owner.uid: ...").
            field, _, reason = str(exc).partition(": ")
            raise self.error(field or key, reason or str(exc)) from None

    def limit(self, key: str) -> int | None:
        if key not in self.doc or self.doc[key] is None:
            return None
        value = self.doc[key]
        if not _is_int(value):
            raise self.error(key, f"must be a whole number, got {_type_name(value)}")
        if value < 0:
            raise self.error(key, f"must not be negative, got {value}")
        if value > MAX_UPPER_LIMIT:
            raise self.error(key, f"must be at most {MAX_UPPER_LIMIT}, got {value}")
        return None if value == 0 else int(value)


KNOWN_KEYS = (
    "nx-gzip",
    "permissions",
    "include-devices",
    "exclude-devices",
    "discovery-strategy",
    "scan-interval",
    "upper-limit",
    "grant-mode",
    "cdi",
    "device-owner",
)


def _unknown_key_warnings(
    doc: dict[str, Any], source: str, known: tuple[str, ...] = KNOWN_KEYS
) -> list[str]:
    warnings = []
    for key in doc:
        if key in known:
            continue
        import difflib  # only here: an unknown key is rare, and difflib weighs ~1 MiB RSS

        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.append(f"{source}: unknown key {key!r} ignored{hint}")
    return warnings


def _decode(text: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source,
            DOCUMENT_FIELD,
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    if not isinstance(doc, dict):
        raise ConfigError(source, DOCUMENT_FIELD, f"must be a JSON object, got {_type_name(doc)}")
    return doc


def parse_config(text: str, source: str) -> tuple[PluginConfig, list[str]]:
    """Parse a ``config.json`` document. Returns (config, warnings); raises ConfigError."""
    return config_from_doc(_decode(text, source), source)


def config_from_doc(doc: dict[str, Any], source: str) -> tuple[PluginConfig, list[str]]:
    """One resource's config from its decoded keys (IBM's whole file, or one entry of
    ``resources`` with the file-wide keys added). Raises ConfigError."""
    read = _Reader(doc, source)
    permissions = read.checked(
        "permissions", read.str_("permissions", DEFAULT_PERMISSIONS), parse_permissions
    )
    interval = DEFAULT_SCAN_INTERVAL_SECONDS
    if "scan-interval" in doc:
        interval = read.checked("scan-interval", read.str_("scan-interval", ""), parse_duration)
        if interval < MIN_SCAN_INTERVAL_SECONDS:
            raise read.error("scan-interval", f"{doc['scan-interval']!r} is shorter than 1s")
    owner = read.owner("device-owner")
    config = PluginConfig(
        nx_gzip=read.bool_("nx-gzip", False),
        permissions=permissions,
        include_devices=read.globs("include-devices"),
        exclude_devices=read.globs("exclude-devices"),
        discovery_strategy=read.choice(
            "discovery-strategy", STRATEGY_DEFAULT, DISCOVERY_STRATEGIES
        ),
        scan_interval_seconds=interval,
        upper_limit=read.limit("upper-limit"),
        grant_mode=read.choice("grant-mode", GRANT_ALL, GRANT_MODES),
        cdi=resolve_mode(read.choice("cdi", CDI_DEFAULT_MODE, CDI_CHOICES), owner),
        device_owner=owner,
    )
    warnings = _unknown_key_warnings(doc, source)
    if owner.is_set and config.cdi == CDI_OFF:
        warnings.append(
            f"{source}: device-owner is set but cdi is {CDI_OFF!r}: the owner only reaches "
            "a container through a CDI spec, so it is ignored; remove cdi (or set it to "
            "'both' or 'only') to apply it"
        )
    if config.upper_limit is not None and "grant-mode" not in doc:
        warnings.append(upper_limit_without_grant_mode(source, config.upper_limit))
    return config, warnings


def upper_limit_without_grant_mode(source: str, limit: int) -> str:
    """The warning for an ``upper-limit`` whose meaning depends on an unstated grant mode."""
    return (
        f"{source}: upper-limit {limit} is set without grant-mode, so grant-mode "
        f"{GRANT_ALL!r} applies: {limit} units in total, each granting every selected "
        f"device (IBM's per-device limit, as {limit} containers sharing the device set). "
        f"With grant-mode {GRANT_PER_DEVICE!r} it would be {limit} units per device "
        "(each device shared by at most that many containers). Set grant-mode to say which."
    )


def load_config(path: Path) -> tuple[PluginConfig, list[str]]:
    """Read and parse the config file. Raises ConfigError, also for a missing file:
    the plugin fails closed, so no file never means "the defaults" (which would
    advertise every block device)."""
    return parse_config(_read_text(path), str(path))


def _read_text(path: Path) -> str:
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            source,
            DOCUMENT_FIELD,
            "does not exist; nothing is advertised until a valid config is there "
            "(is the ConfigMap mounted, and does it have the key config.json?)",
        ) from None
    except OSError as exc:
        raise ConfigError(source, DOCUMENT_FIELD, f"cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, DOCUMENT_FIELD, f"not UTF-8 text: {exc.reason}") from None
    return text


# Keys that describe one resource's devices: at the top of IBM's form, or in an entry
# of ``resources``. The others are file-wide.
RESOURCE_KEYS = (
    "nx-gzip",
    "permissions",
    "include-devices",
    "exclude-devices",
    "upper-limit",
    "grant-mode",
    "cdi",
    "device-owner",
)
FILE_KEYS = ("discovery-strategy", "scan-interval")


@dataclass(frozen=True)
class ResourceConfig:
    """One resource of the file: its extended resource name and its device keys.

    ``single`` is True for IBM's form (no ``resources`` list): that one resource keeps
    the name, socket and ``PDP_DEVICES`` env it has always had.
    """

    name: str
    config: PluginConfig
    single: bool = False


def _union(parts: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The include globs of every resource, or () when one of them takes every block
    device (then every device is a candidate anyway)."""
    if any(not part for part in parts):
        return ()
    return tuple(dict.fromkeys(p for part in parts for p in part))


@dataclass(frozen=True)
class FileConfig(PluginConfig):
    """A whole ``config.json``: its resources in file order, and the file-wide keys.

    It is a PluginConfig whose device keys are those of every resource together (the
    union of the include globs, nx-gzip if any has it), which is what the watcher
    needs to know which directories to watch; what each resource is granted comes
    from its own entry in ``resources``.
    """

    resources: tuple[ResourceConfig, ...] = ()

    @staticmethod
    def of(resources: tuple[ResourceConfig, ...]) -> FileConfig:
        first = resources[0].config
        return FileConfig(
            nx_gzip=any(r.config.nx_gzip for r in resources),
            include_devices=_union(tuple(r.config.include_devices for r in resources)),
            discovery_strategy=first.discovery_strategy,
            scan_interval_seconds=first.scan_interval_seconds,
            resources=resources,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.resources)


def parse_resources(
    text: str, source: str, default_resource: str = DEFAULT_RESOURCE
) -> tuple[FileConfig, list[str]]:
    """Parse a ``config.json`` that may list several resources. Returns (config,
    warnings); raises ConfigError.

    Without ``resources`` the file is IBM's: one resource, ``default_resource``, with
    every key at the top, parsed exactly as :func:`parse_config` does."""
    doc = _decode(text, source)
    if RESOURCES_KEY not in doc:
        config, warnings = config_from_doc(doc, source)
        resource = ResourceConfig(default_resource, config, single=True)
        return FileConfig.of((resource,)), warnings
    beside = [key for key in RESOURCE_KEYS if key in doc]
    if beside:
        raise ConfigError(
            source,
            RESOURCES_KEY,
            f"cannot stand beside top-level device keys ({', '.join(beside)}): move them "
            f"into an entry of {RESOURCES_KEY}, or drop {RESOURCES_KEY} for the one "
            f"resource {default_resource!r}",
        )
    entries = doc[RESOURCES_KEY]
    if not isinstance(entries, list):
        raise ConfigError(
            source, RESOURCES_KEY, f"must be a list of resources, got {_type_name(entries)}"
        )
    if not entries:
        raise ConfigError(
            source, RESOURCES_KEY, "is empty; list at least one resource, or drop the key"
        )
    if len(entries) > MAX_RESOURCES:
        raise ConfigError(
            source, RESOURCES_KEY, f"lists {len(entries)} resources; at most {MAX_RESOURCES}"
        )
    file_wide = {key: doc[key] for key in FILE_KEYS if key in doc}
    warnings = [
        w
        for w in _unknown_key_warnings(doc, source, (*KNOWN_KEYS, RESOURCES_KEY))
        if "unknown key" in w
    ]
    resources: list[ResourceConfig] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"{RESOURCES_KEY}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(source, where, f"must be an object, got {_type_name(entry)}")
        name = entry.get("name")
        if not isinstance(name, str):
            reason = "is missing" if name is None else f"must be a string, got {_type_name(name)}"
            raise ConfigError(source, f"{where}.name", f"{reason}; give domain/name")
        try:
            resource_name(name)
        except ValueError as error:
            raise ConfigError(source, f"{where}.name", str(error)) from None
        if name in seen:
            raise ConfigError(
                source, f"{where}.name", f"{name!r} is already {RESOURCES_KEY}[{seen[name]}]"
            )
        # Names that differ only in punctuation would share an env var, a socket, a spec.
        twin = next((n for n in seen if grant_env_for(n) == grant_env_for(name)), None)
        if twin is not None:
            raise ConfigError(
                source,
                f"{where}.name",
                f"{name!r} and {twin!r} differ only in case or punctuation: both would "
                f"set {grant_env_for(name)}; rename one",
            )
        seen[name] = index
        wide = [key for key in FILE_KEYS if key in entry]
        if wide:
            raise ConfigError(
                source,
                f"{where}.{wide[0]}",
                "is file-wide: set it once at the top of the file, beside resources",
            )
        keys = {k: v for k, v in entry.items() if k != "name"}
        try:
            config, entry_warnings = config_from_doc({**keys, **file_wide}, source)
        except ConfigError as error:
            raise ConfigError(source, f"{where} ({name}).{error.field}", error.reason) from None
        warnings += [
            w.replace(f"{source}: ", f"{source}: {where} ({name}): ", 1) for w in entry_warnings
        ]
        resources.append(ResourceConfig(name, config))
    return FileConfig.of(tuple(resources)), warnings


def load_resources(
    path: Path, default_resource: str = DEFAULT_RESOURCE
) -> tuple[FileConfig, list[str]]:
    """Read and parse the config file with :func:`parse_resources`. Raises ConfigError,
    also for a missing file (the plugin fails closed)."""
    return parse_resources(_read_text(path), str(path), default_resource)
