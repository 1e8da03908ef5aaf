"""Talk to an OCI registry: tags, digests, sizes and the multi-architecture index.

Reading and indexing go through `docker buildx imagetools` so they work with any
registry the docker CLI can reach (credentials, mirrors, TLS settings of the CLI
apply), not only the local one; a built image's OCI archive is pushed unchanged
with `skopeo copy --preserve-digests` (skopeo reads the docker CLI's credentials).
Registries have transient failures (the local one once
answered 500 to a push), so network operations retry with backoff.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, TypeVar

from pdp_pipeline.log import Log
from pdp_pipeline.platforms import PLATFORMS

T = TypeVar("T")

INSPECT_TIMEOUT = 60.0  # seconds; a registry that does not answer in a minute is not answering
CREATE_TIMEOUT = 300.0
# Phrases with which registries and buildx say "that tag does not exist" (not a failure).
NOT_FOUND_ANSWERS = ("not found", "manifest unknown", "name unknown", "404")
# ghcr.io answers DENIED, not 404, for a package that does not exist yet (it cannot tell
# "no such package" from "no access to it"). Where we probe for one of our own packages
# that may not exist yet (runtime and wheels images), that answer means absent.
DENIED_ANSWERS = ("denied: requested access to the resource is denied", "denied: denied")
ATTESTATION_REFERENCE_TYPE = "attestation-manifest"


class RegistryError(Exception):
    """A registry operation failed; the message names the image, the architecture and the answer."""

    def __init__(self, message: str, *, image: str = "", arch: str = "", answer: str = "") -> None:
        super().__init__(message)
        self.image = image
        self.arch = arch
        self.answer = answer


class NotFound(RegistryError):
    """The registry answered, and the reference does not exist there."""


def with_retries(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int = 4,
    first_delay: float = 2.0,
    log: Log = print,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """Run action; on RegistryError (not NotFound) or OSError retry with doubling delays.

    The last error is raised as it was, so its message still names image, arch and answer.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except NotFound:
            raise
        except (RegistryError, OSError) as error:
            if attempt == attempts:
                raise
            log(f"registry: {what} failed (attempt {attempt} of {attempts}): {error}")
            log(f"registry: retrying {what} in {delay:.0f} s")
            (sleep or time.sleep)(delay)
            delay *= 2
    raise AssertionError("unreachable: the loop returns or raises")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def registry_host(ref: str) -> str:
    """The host part of a registry address or image reference, without port or brackets.

    `[::1]:5000/p:v1` -> `::1`, `127.0.0.1:5000` -> `127.0.0.1`, `quay.io/x` -> `quay.io`.
    """
    authority = ref.split("/", 1)[0]
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.partition(":")[0]


def is_loopback_registry(ref: str) -> bool:
    """True for this host's registry (`invoke setup` brings it up; it speaks plain HTTP)."""
    return registry_host(ref) in LOOPBACK_HOSTS


# Words buildx and docker print when the build succeeded and sending it to the registry
# did not: such a failure is worth a retry, any other is not.
_PUSH_FAILURE_MARKERS = (
    "failed to push",
    "failed commit on ref",
    "failed to do request",
    "unexpected status",
    "500 internal server error",
    "connection refused",
    "connection reset",
    "i/o timeout",
    "eof",
)


def is_push_failure(output: str) -> bool:
    """True when a command's output says the push failed (worth a retry), not the build."""
    lowered = output.lower()
    tail = lowered[lowered.rfind("error:") :] if "error:" in lowered else lowered[-2000:]
    return "push" in lowered and any(marker in tail for marker in _PUSH_FAILURE_MARKERS)


def arch_of(ref: str) -> str:
    """The architecture a reference is for, read from its tag; `all` for an index tag."""
    tag = ref.rsplit("/", 1)[-1].partition("@")[0].partition(":")[2]
    words = tag.replace("_", "-").split("-")
    return next((p.arch for p in PLATFORMS if p.arch in words), "all")


def _imagetools(args: Sequence[str], ref: str, *, timeout: float = INSPECT_TIMEOUT) -> str:
    argv = ["docker", "buildx", "imagetools", *args]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise RegistryError(
            f"{ref} ({arch_of(ref)}): no answer from the registry within {timeout:.0f} s"
            f" (`{' '.join(argv)}`)",
            image=ref,
            arch=arch_of(ref),
            answer="timeout",
        ) from None
    if result.returncode == 0:
        return result.stdout
    answer = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
    error_type = NotFound if is_not_found(answer) else RegistryError
    raise error_type(
        f"{ref} ({arch_of(ref)}): the registry answered: {answer}",
        image=ref,
        arch=arch_of(ref),
        answer=answer,
    )


def is_not_found(answer: str) -> bool:
    lowered = answer.lower()
    return any(phrase in lowered for phrase in NOT_FOUND_ANSWERS)


def is_denied(answer: str) -> bool:
    """True for a registry's DENIED answer (ghcr.io's for a package that does not exist)."""
    lowered = answer.lower()
    return any(phrase in lowered for phrase in DENIED_ANSWERS)


def raw_manifest(ref: str, log: Log = print) -> dict[str, Any]:
    """The manifest or index `ref` points to, as the registry stores it."""
    text = with_retries(
        lambda: _imagetools(["inspect", "--raw", ref], ref), what=f"inspect {ref}", log=log
    )
    document = json.loads(text)
    if not isinstance(document, dict):
        raise RegistryError(
            f"{ref}: the registry returned a manifest that is not a JSON object",
            image=ref,
            arch=arch_of(ref),
            answer=text[:200],
        )
    return document


def tag_exists(ref: str, log: Log = print, *, absent_if_denied: bool = False) -> bool:
    """True if the registry has `ref`; False if it answers "not found"; raises otherwise.

    With `absent_if_denied` (a probe of our own package, which may not exist yet) a
    DENIED answer is "absent" too, at once, without retries; a push that is denied
    later still fails, with the registry's words.
    """

    def probe() -> str:
        try:
            return _imagetools(["inspect", "--raw", ref], ref)
        except RegistryError as error:
            if absent_if_denied and is_denied(error.answer):
                log(f"registry: {ref}: the registry answered DENIED; taken as absent")
                raise NotFound(
                    str(error), image=ref, arch=arch_of(ref), answer=error.answer
                ) from None
            raise

    try:
        with_retries(probe, what=f"inspect {ref}", log=log)
    except NotFound:
        return False
    return True


def manifest_digest(ref: str, log: Log = print) -> str:
    """The `sha256:…` digest of the manifest or index `ref` points to."""

    def inspect() -> str:
        text = _imagetools(["inspect", "--format", "{{json .Manifest}}", ref], ref)
        return str(json.loads(text)["digest"])

    return with_retries(inspect, what=f"digest of {ref}", log=log)


def tag_digest(ref: str, log: Log = print) -> str | None:
    """The digest `ref` names, or None if the registry answers that it has no such tag."""
    try:
        return manifest_digest(ref, log)
    except NotFound:
        return None


def image_labels(ref: str, log: Log = print) -> dict[str, str]:
    """The labels of the image `ref` names (of its first platform, for an index)."""

    def inspect() -> str:
        return _imagetools(["inspect", "--format", "{{json .Image}}", ref], ref)

    document = json.loads(with_retries(inspect, what=f"config of {ref}", log=log))
    if isinstance(document, dict) and "config" not in document and document:
        document = document[sorted(document)[0]]  # an index: platform -> config
    labels = (document or {}).get("config", {}).get("Labels") or {}
    return {str(key): str(value) for key, value in labels.items()}


def push_archive_command(archive: Path, ref: str) -> list[str]:
    """`skopeo copy` of an OCI archive to `ref`, byte for byte (the digest buildx reported)."""
    argv = ["skopeo", "copy", "--quiet", "--all", "--preserve-digests"]
    if is_loopback_registry(ref):
        argv.append("--dest-tls-verify=false")  # this host's registry speaks plain HTTP
    return [*argv, f"oci-archive:{archive}", f"docker://{ref}"]


def push_archive(archive: Path, ref: str, arch: str) -> None:
    """Push an OCI archive to `ref` unchanged; a failure is a RegistryError (retried by callers)."""
    argv = push_archive_command(archive, ref)
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=CREATE_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RegistryError(
            f"push of {ref} ({arch}) failed: `{' '.join(argv)}`: {error}",
            image=ref,
            arch=arch,
            answer=str(error),
        ) from None
    if result.returncode != 0:
        answer = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
        raise RegistryError(
            f"push of {ref} ({arch}) failed; the registry answered: {answer}",
            image=ref,
            arch=arch,
            answer=answer,
        )


def copy_by_digest_command(source: str, target_repository: str) -> list[str]:
    """`skopeo copy` of `source` (REPO@sha256:…, an index and all it names) into
    `target_repository` under the same digest and no tag."""
    if "@sha256:" not in source:
        raise RegistryError(f"{source}: copy by digest (REF@sha256:…)", image=source, arch="all")
    digest = source.split("@", 1)[1]
    argv = ["skopeo", "copy", "--quiet", "--all", "--preserve-digests"]
    if is_loopback_registry(source):
        argv.append("--src-tls-verify=false")
    if is_loopback_registry(target_repository):
        argv.append("--dest-tls-verify=false")
    return [*argv, f"docker://{source}", f"docker://{target_repository}@{digest}"]


def copy_by_digest(source: str, target_repository: str, log: Log = print) -> str:
    """Copy a verified candidate into the release repository by digest (no tag); retried.

    Returns TARGET@digest. Nothing in the target repository is tagged by this: a tag comes
    only after signing, from the release."""
    argv = copy_by_digest_command(source, target_repository)
    target = f"{target_repository}@{source.split('@', 1)[1]}"
    log(f"registry: copy {source} -> {target}")

    def copy() -> None:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=CREATE_TIMEOUT, check=False
        )
        if result.returncode != 0:
            answer = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            raise RegistryError(
                f"copy of {source} to {target_repository} failed; the registry answered: {answer}",
                image=target,
                arch="all",
                answer=answer,
            )

    with_retries(copy, what=f"copy of {source}", log=log)
    return target


def create_index(target: str, sources: Sequence[str], log: Log = print) -> str:
    """Make `target` an OCI index of `sources` (per-architecture images); return its digest."""
    if not sources:
        raise RegistryError(f"{target}: no images to put in the index", image=target, arch="all")
    log(f"registry: index {target} <- {', '.join(sources)}")
    with_retries(
        lambda: _imagetools(["create", "-t", target, *sources], target, timeout=CREATE_TIMEOUT),
        what=f"index {target}",
        log=log,
    )
    return manifest_digest(target, log)


def platforms_of_index(index: dict[str, Any]) -> list[tuple[str, str]]:
    """[(\"linux/ppc64le\", digest), …] of an index, attestation manifests left out."""
    entries: list[tuple[str, str]] = []
    for entry in index.get("manifests", []):
        annotations = entry.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == ATTESTATION_REFERENCE_TYPE:
            continue
        platform = entry.get("platform") or {}
        os_name, architecture = (
            platform.get("os", "unknown"),
            platform.get("architecture", "unknown"),
        )
        if os_name == "unknown" or architecture == "unknown":
            continue
        name = f"{os_name}/{architecture}"
        if platform.get("variant"):
            name += f"/{platform['variant']}"
        entries.append((name, str(entry["digest"])))
    return entries


def index_platforms(ref: str, log: Log = print) -> list[tuple[str, str]]:
    """The platforms of the index `ref` with their manifest digests."""
    document = raw_manifest(ref, log)
    if "manifests" not in document:
        raise RegistryError(
            f"{ref}: is a single-platform manifest ({document.get('mediaType', 'no media type')}),"
            " not an index",
            image=ref,
            arch=arch_of(ref),
            answer=str(document.get("mediaType")),
        )
    return platforms_of_index(document)


def manifest_size(manifest: dict[str, Any]) -> int:
    """Bytes an image occupies in the registry: config plus compressed layers."""
    layers = manifest.get("layers", [])
    return int(manifest.get("config", {}).get("size", 0)) + sum(
        int(x.get("size", 0)) for x in layers
    )


def image_size(ref: str, log: Log = print) -> int | None:
    """Compressed size of a single-platform image; None for an index (it has no one size)."""
    document = raw_manifest(ref, log)
    if "layers" not in document:
        return None
    return manifest_size(document)
