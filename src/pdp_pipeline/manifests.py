"""The deployment manifests: render them with kustomize, validate them, pin the image.

`manifests/` (OpenShift) and `manifests/kubernetes/` (plain Kubernetes) are two
kustomize entry points over `manifests/base/`, which holds the one `images:`
entry naming the plugin image; `examples/` is laid out the same way. This
module is what the `manifests.*` tasks, the release and the tests call.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# The image name the manifests use as a placeholder and kustomize rewrites;
# also the repository name the pipeline pushes (`build.BuildOptions.repository`).
PLUGIN_IMAGE_NAME = "power-dev-plugin"

# Oldest Kubernetes we support (OpenShift 4.15); validation also runs against
# the newest schema kubernetes-validate ships.
OLDEST_KUBERNETES = "1.28"

KUSTOMIZE_INSTALL_COMMAND = "invoke setup"

# Where each variant's kustomization lives, relative to the repository root.
VARIANTS: Mapping[str, Path] = {
    "openshift": Path("manifests"),
    "kubernetes": Path("manifests") / "kubernetes",
    "examples-openshift": Path("examples"),
    "examples-kubernetes": Path("examples") / "kubernetes",
}
IMAGE_PIN_DIR = Path("manifests") / "base"
OPENSHIFT_SCHEMA_DIR = Path("manifests") / "schemas" / "openshift"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ManifestError(Exception):
    """Rendering, validating or pinning the manifests failed; the message says where and why."""


class KustomizeMissingError(ManifestError):
    """No kustomize on PATH."""


@dataclass(frozen=True)
class ImageRef:
    """`NAME:TAG@sha256:DIGEST`, the form a release pins."""

    name: str  # registry and repository path, e.g. 127.0.0.1:5000/power-dev-plugin
    tag: str
    digest: str

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}@{self.digest}"

    @property
    def repository(self) -> str:
        """The last path component: what the pipeline calls the repository name."""
        return self.name.rsplit("/", 1)[-1]


def parse_image_ref(text: str) -> ImageRef:
    """Split `NAME:TAG@sha256:DIGEST`; both tag and digest are required."""
    ref = text.strip()
    if "@" not in ref:
        raise ManifestError(
            f"image {text!r} has no digest: pin with NAME:TAG@sha256:DIGEST "
            "so every node runs the same bytes"
        )
    name_tag, digest = ref.split("@", 1)
    if not _DIGEST.match(digest):
        raise ManifestError(f"image {text!r}: digest {digest!r} is not sha256: and 64 hex digits")
    slash = name_tag.rfind("/")
    colon = name_tag.rfind(":")
    if colon <= slash:
        raise ManifestError(
            f"image {text!r} has no tag: pin with NAME:TAG@sha256:DIGEST "
            "so the version stays readable"
        )
    name, tag = name_tag[:colon], name_tag[colon + 1 :]
    if not name or not _TAG.match(tag):
        raise ManifestError(f"image {text!r}: {tag!r} is not a valid tag")
    return ImageRef(name=name, tag=tag, digest=digest)


def find_kustomize() -> str:
    """The kustomize executable, or an error naming the command that installs it."""
    found = shutil.which("kustomize")
    if found is None:
        raise KustomizeMissingError(
            f"kustomize is not on PATH; install it with `{KUSTOMIZE_INSTALL_COMMAND}` "
            "(Debian trixie's kustomize package)"
        )
    return found


def _run_kustomize(args: Sequence[str], cwd: Path | None, kustomize: str | None) -> str:
    argv = [kustomize or find_kustomize(), *args]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise ManifestError(f"cannot run {argv[0]}: {error.strerror}") from None
    if done.returncode != 0:
        where = f" in {cwd}" if cwd else ""
        raise ManifestError(
            f"`{' '.join(argv)}`{where} failed (exit {done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


def render_text(directory: Path, kustomize: str | None = None) -> str:
    """`kustomize build DIRECTORY`: the YAML to apply."""
    return _run_kustomize(["build", str(directory)], None, kustomize)


def parse_documents(text: str, source: str = "<rendered>") -> list[dict[str, Any]]:
    """The objects of a multi-document YAML stream; empty documents are dropped."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        raise ManifestError(f"{source}: not valid YAML: {error}") from None
    objects: list[dict[str, Any]] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(f"{source}: document {index} is not a mapping")
        objects.append(document)
    return objects


def render(directory: Path, kustomize: str | None = None) -> list[dict[str, Any]]:
    """`kustomize build DIRECTORY`, parsed into objects."""
    return parse_documents(render_text(directory, kustomize), str(directory))


def object_name(obj: Mapping[str, Any]) -> str:
    """`Kind/namespace/name` (or `Kind/name` for cluster-scoped objects), for messages."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    parts = [str(obj.get("kind")), *([namespace] if namespace else []), str(meta.get("name"))]
    return "/".join(parts)


def objects_of_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def the_object(objects: Iterable[Mapping[str, Any]], kind: str) -> Mapping[str, Any]:
    """The single object of a kind; anything but exactly one is an error."""
    found = objects_of_kind(objects, kind)
    if len(found) != 1:
        names = ", ".join(object_name(obj) for obj in found) or "none"
        raise ManifestError(f"expected exactly one {kind}, found {len(found)}: {names}")
    return found[0]


# --- validation ----------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The validation of one rendered object against one schema."""

    obj: str  # object_name()
    schema: str  # e.g. "kubernetes 1.28 (strict)" or the OpenShift schema file
    error: str | None = None  # None: valid

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.obj} against {self.schema}" + (
            f": {self.error}" if self.error else ""
        )


def openshift_schema_file(schema_dir: Path, obj: Mapping[str, Any]) -> Path:
    """`kind-group-version.json`, the same naming kubernetes-validate uses."""
    api_version = str(obj.get("apiVersion", ""))
    group, _, version = api_version.rpartition("/")
    group_short = group.split(".", 1)[0]
    return schema_dir / f"{str(obj.get('kind', '')).lower()}-{group_short}-{version}.json"


def _is_openshift(obj: Mapping[str, Any]) -> bool:
    return str(obj.get("apiVersion", "")).split("/", 1)[0].endswith(".openshift.io")


def validate_object(
    obj: Mapping[str, Any], kubernetes_version: str, openshift_schema_dir: Path
) -> Verdict:
    """Strict schema validation: Kubernetes kinds with kubernetes-validate (offline),
    OpenShift kinds with our schemas written from the OpenShift API."""
    name = object_name(obj)
    if _is_openshift(obj):
        path = openshift_schema_file(openshift_schema_dir, obj)
        if not path.is_file():
            return Verdict(
                name, str(path), f"no schema for {obj.get('apiVersion')} {obj.get('kind')}"
            )
        schema = json.loads(path.read_text(encoding="utf-8"))
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path)
        )
        message = "; ".join(f"{_path(e.path)}: {e.message}" for e in errors) or None
        return Verdict(name, path.name, message)

    import kubernetes_validate  # imported here: loading it costs ~0.5 s

    label = f"kubernetes {kubernetes_version} (strict)"
    try:
        kubernetes_validate.validate(dict(obj), kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return Verdict(name, label, f"{_path(error.path)}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError as error:
        return Verdict(name, label, str(error.message))
    return Verdict(name, label)


def _path(parts: Iterable[Any]) -> str:
    return ".".join(str(part) for part in parts) or "<object>"


def validate_objects(
    objects: Iterable[Mapping[str, Any]], kubernetes_version: str, openshift_schema_dir: Path
) -> list[Verdict]:
    return [validate_object(obj, kubernetes_version, openshift_schema_dir) for obj in objects]


def newest_kubernetes() -> str:
    """The newest Kubernetes version kubernetes-validate has schemas for."""
    import kubernetes_validate.utils

    return str(kubernetes_validate.utils.latest_version())


# --- the plugin container ------------------------------------------------------


def plugin_container(objects: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The DaemonSet's container that runs the plugin image."""
    daemonset = the_object(objects, "DaemonSet")
    containers = daemonset["spec"]["template"]["spec"].get("containers", [])
    for container in containers:
        if image_repository(str(container.get("image", ""))) == PLUGIN_IMAGE_NAME:
            return dict(container)
    raise ManifestError(
        f"{object_name(daemonset)} has no container running a {PLUGIN_IMAGE_NAME} image"
    )


def image_repository(image: str) -> str:
    """The repository name of an image reference (`reg:5000/a/b:t@sha256:..` -> `b`)."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def flags_used(args: Sequence[str]) -> list[str]:
    """The long flags in a container's args (`--dev-root=/x` and `--dev-root /x` alike)."""
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def help_flags(help_text: str) -> set[str]:
    """Every long flag a `--help` text mentions."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


# --- pinning the image ---------------------------------------------------------


def current_pin(pin_dir: Path, name: str = PLUGIN_IMAGE_NAME) -> ImageRef:
    """The image the `images:` entry for NAME in PIN_DIR/kustomization.yaml pins."""
    path = pin_dir / "kustomization.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = [entry for entry in data.get("images") or [] if entry.get("name") == name]
    if len(entries) != 1:
        raise ManifestError(
            f"{path}: expected one images: entry named {name!r}, found {len(entries)}"
        )
    entry = entries[0]
    try:
        return parse_image_ref(f"{entry.get('newName', name)}:{entry['newTag']}@{entry['digest']}")
    except KeyError as missing:
        raise ManifestError(f"{path}: images: entry {name!r} has no {missing.args[0]}") from None


def pin_image(
    pin_dir: Path, ref: ImageRef, kustomize: str | None = None, name: str = PLUGIN_IMAGE_NAME
) -> ImageRef:
    """Point the manifests at REF (`kustomize edit set image`); returns the previous pin.

    The repository name must stay the one the pipeline pushes, so a typo cannot
    send every node to pull an image that was never built.
    """
    if ref.repository != name:
        raise ManifestError(
            f"image {ref} is not a {name} image (repository {ref.repository!r}); "
            f"the manifests were left unchanged"
        )
    previous = current_pin(pin_dir, name)
    _run_kustomize(["edit", "set", "image", f"{name}={ref}"], pin_dir, kustomize)
    pinned = current_pin(pin_dir, name)
    if pinned != ref:
        raise ManifestError(f"{pin_dir}/kustomization.yaml pins {pinned} after the edit, not {ref}")
    return previous


def ref_from_build_record(record_path: Path) -> ImageRef:
    """The index a build pushed (`.cache/build/last-build.json`), as a pin."""
    from pdp_pipeline.images import record as build_record

    try:
        record = build_record.load_record(record_path)
    except FileNotFoundError:
        raise ManifestError(
            f"{record_path}: no build record; run `invoke build` first, or pin with --image"
        ) from None
    if not record.index_ref or not record.index_digest:
        raise ManifestError(
            f"{record_path}: the build pushed no index (pushed={record.pushed}); nothing to pin"
        )
    return parse_image_ref(f"{record.index_ref}@{record.index_digest}")
