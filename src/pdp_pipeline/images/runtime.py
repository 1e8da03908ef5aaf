"""Runtime images: base OS + Python 3 + grpcio + protobuf, per architecture.

grpcio has no wheels for ppc64le or s390x and compiling it under QEMU takes hours,
so this layer is built once per content key and reused from the registry by every
later build. The key covers everything that decides the image's content: the base
(image digest or package set), the producer definition, the dependency list and the
architecture. Two producers: `debian` (offline, mmdebstrap) and `ubi9` (release base
pinned in `containers/base-images.json`, Python 3.12, `containers/runtime-ubi9.Containerfile`,
its compiled dependencies from a wheels image: `wheels.py`; nothing is compiled here).
With an `ImageTrust` (a release) a runtime is reused only when its signature checks
out, and signed when built.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pdp_pipeline.host import probe as host
from pdp_pipeline.images import bases, registry, wheels
from pdp_pipeline.images.trust import ImageTrust, may_reuse, sign_built
from pdp_pipeline.log import Log
from pdp_pipeline.platforms import Platform

# `registry` is also the name of ensure_runtime_image's parameter (kept for the callers).
_registry = registry

ROOT = Path(__file__).resolve().parents[3]
# PDP_RUNTIME_CACHE moves it (the release suite shares one across snapshot checkouts).
CACHE = Path(os.environ.get("PDP_RUNTIME_CACHE") or ROOT / ".cache" / "runtime")
UBI9_CONTAINERFILE = ROOT / "containers" / "runtime-ubi9.Containerfile"
UBI9_REQUIREMENTS = ROOT / "containers" / "runtime-requirements.txt"
PROVENANCE = "mode=max"
BASES = ("ubi9", "debian")
RESOLVE_TIMEOUT = 10.0  # seconds: an unreachable base must fail fast, not stall a build

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR_FALLBACK = "http://deb.debian.org/debian"
# What the plugin image needs from the runtime: the interpreter and the three imports.
DEBIAN_PACKAGES = ("python3", "python3-grpcio", "python3-protobuf")
# Package-manager state and docs are not part of the contract; they only add size.
DEBIAN_CLEANUP = (
    "var/lib/apt/lists/*",
    "var/cache/apt/*",
    "var/cache/debconf/*-old",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
)
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RuntimeImage:
    base: str  # "debian" | "ubi9"
    platform: Platform
    ref: str  # <registry>/<repository>-runtime:<base>-<arch>-<key12>
    digest: str  # sha256:… of that manifest
    key: str  # the full content key (hex sha256)
    reused: bool  # found in the registry, not built by this call
    base_name: str  # what the image was made from, for the OCI base.name label


class BaseUnavailable(Exception):
    """The requested base cannot be resolved; the message says what, why and what to do."""


class RuntimeBuildError(Exception):
    """A producer step (mmdebstrap, import, build) failed; the message has its last lines."""


# --- keys and names (pure) -----------------------------------------------------


def content_key(
    base: str, arch: str, base_identity: str, definition: str, dependencies: tuple[str, ...]
) -> str:
    """sha256 over everything that decides a runtime image's content."""
    material = json.dumps(
        {
            "base": base,
            "arch": arch,
            "base_identity": base_identity,
            "definition": definition,
            "dependencies": list(dependencies),
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def runtime_ref(registry_addr: str, repository: str, base: str, arch: str, key: str) -> str:
    return f"{registry_addr}/{repository}-runtime:{base}-{arch}-{key[:12]}"


def mmdebstrap_command(platform: Platform, mirror: str, output: Path) -> list[str]:
    """The mmdebstrap run that makes the debian runtime root file system as a tar."""
    cleanup = " ".join(f'"$1"/{pattern}' for pattern in DEBIAN_CLEANUP)
    return [
        "mmdebstrap",
        f"--arch={platform.debian_arch}",
        "--variant=apt",
        "--include=" + ",".join(DEBIAN_PACKAGES),
        "--aptopt=Acquire::Retries 3",
        f"--customize-hook=rm -rf {cleanup}",
        DEBIAN_SUITE,
        str(output),
        f"deb {mirror} {DEBIAN_SUITE} main",
    ]


def debian_definition(platform: Platform) -> str:
    """The debian producer as text, for the key: the mmdebstrap run (mirror left out).

    The mirror is left out on purpose: the same suite from another mirror is the same
    content, and the key must not change between a laptop and CI.
    """
    return json.dumps(
        {
            "mmdebstrap": mmdebstrap_command(platform, "MIRROR", Path("OUT")),
            "changes": import_changes("debian", "KEY"),
        }
    )


def import_changes(base: str, key: str) -> list[str]:
    """Dockerfile instructions applied by `docker import` (an imported tar has no config)."""
    return [
        f"ENV PATH={IMAGE_PATH}",
        'CMD ["/usr/bin/python3"]',
        f"LABEL io.power-dev-plugin.runtime.base={base}",
        f"LABEL io.power-dev-plugin.runtime.key={key}",
    ]


def ubi9_definition() -> str:
    """The ubi9 producer as text: its Containerfile and requirements."""
    return json.dumps(
        {
            "containerfile": UBI9_CONTAINERFILE.read_text(),
            "requirements": UBI9_REQUIREMENTS.read_text(),
        }
    )


def debian_mirror() -> str:
    try:
        return host.bookworm_stanza(host.DEBIAN_SOURCES.read_text())["URIs"].split()[0]
    except (OSError, host.HostError):
        return DEBIAN_MIRROR_FALLBACK


# --- choosing the base -------------------------------------------------------------


def ubi9_pin(base_image: str | None = None) -> bases.BasePin:
    """The ubi9 base pin; with `base_image` (a dry run's mirror) the mirror, same Python."""
    pin = bases.load_pin("ubi9")
    if base_image:
        image, _, digest = base_image.partition("@")
        return bases.BasePin("ubi9", image, digest or resolve_digest(image), pin.python)
    try:
        return bases.require_real_digest(pin)
    except bases.BasePinError as error:
        raise BaseUnavailable(str(error)) from None


def resolve_digest(image: str, log: Log = print) -> str:
    """The digest `image` names in its registry, or BaseUnavailable within RESOLVE_TIMEOUT."""
    started = time.monotonic()
    try:
        digest = bases.current_digest(image, timeout=RESOLVE_TIMEOUT)
    except bases.BasePinError as error:
        raise BaseUnavailable(
            f"base image {image} cannot be resolved ({time.monotonic() - started:.1f} s): "
            f"{error}. Use --base-image with a mirror of it that this host can reach,"
            " or --base debian to build from Debian packages without any registry."
        ) from None
    return digest


def check_reachable(pin: bases.BasePin, log: Log = print) -> None:
    """BaseUnavailable unless the pinned base can be read from its registry."""
    started = time.monotonic()
    try:
        bases.current_digest(pin.ref, timeout=RESOLVE_TIMEOUT)
    except bases.BasePinError as error:
        raise BaseUnavailable(
            f"base image {pin.ref} cannot be reached ({time.monotonic() - started:.1f} s): "
            f"{error}. Use --base-image with a mirror of it that this host can reach,"
            " or --base debian to build from Debian packages without any registry."
        ) from None
    log(f"runtime: ubi9 base {pin.ref} reachable ({time.monotonic() - started:.1f} s)")


def choose_base(
    requested: str, base_image: str | None, allow_fallback: bool, log: Log = print
) -> tuple[str, bool]:
    """(base to build on, whether that is a fallback from the requested one)."""
    if requested not in BASES:
        raise BaseUnavailable(f"unknown base {requested!r}; choose one of {', '.join(BASES)}")
    if requested == "debian":
        return "debian", False
    try:
        check_reachable(ubi9_pin(base_image), log)
    except BaseUnavailable as error:
        if not allow_fallback:
            raise
        banner = "!" * 78
        log(banner)
        log(f"WARNING: FALLING BACK TO THE DEBIAN BASE. {error}")
        log("WARNING: these images are NOT on the release base (ubi9); a release refuses them.")
        log(banner)
        return "debian", True
    return "ubi9", False


# --- producing -----------------------------------------------------------------


def ensure_runtime_image(
    base: str,
    platform: Platform,
    registry: str,
    repository: str,
    *,
    base_image: str | None = None,
    base_pin: bases.BasePin | None = None,
    builder: str | None = None,
    trust: ImageTrust | None = None,
    log: Log = print,
) -> RuntimeImage:
    """The runtime image for (base, platform): reused from the registry if its key exists
    (and, with `trust`, its signature checks out), else built, pushed and signed.

    `base_pin` replaces the ubi9 pin of containers/base-images.json (the engine test's
    base made of Debian packages goes through this same path).
    """
    wheels_image: wheels.WheelsImage | None = None
    if base == "debian":
        base_name = f"debian:{DEBIAN_SUITE}"
        key = content_key(
            base, platform.arch, base_name, debian_definition(platform), DEBIAN_PACKAGES
        )
    elif base == "ubi9":
        pin = base_pin or ubi9_pin(base_image)
        base_name = pin.ref
        # Refuses (WheelsMissing) before anything is built: no compile in this path.
        wheels_image = wheels.find_wheels_image(
            pin, platform, registry, repository, trust=trust, log=log
        )
        key = content_key(
            base,
            platform.arch,
            base_name,
            ubi9_definition(),
            (*ubi9_requirements(), pin.python, wheels_image.pinned),
        )
    else:
        raise BaseUnavailable(f"unknown base {base!r}; choose one of {', '.join(BASES)}")
    ref = runtime_ref(registry, repository, base, platform.arch, key)
    what = f"runtime [{platform.arch}]"
    if _registry.tag_exists(ref, log, absent_if_denied=True):
        digest = _registry.manifest_digest(ref, log)
        if may_reuse(trust, ref, digest, what, log):
            log(f"runtime: [{platform.arch}] reused {ref}")
            return RuntimeImage(base, platform, ref, digest, key, True, base_name)
    started = time.monotonic()
    if wheels_image is None:
        _produce_debian(platform, key, ref, log)
        digest = _registry.manifest_digest(ref, log)
    else:
        digest = _produce_ubi9(
            platform, key, ref, base_pin or ubi9_pin(base_image), wheels_image, builder, log
        )
    sign_built(trust, ref, digest, what, log)
    log(f"runtime: [{platform.arch}] built {ref}@{digest} in {time.monotonic() - started:.0f} s")
    return RuntimeImage(base, platform, ref, digest, key, False, base_name)


def ubi9_requirements() -> tuple[str, ...]:
    return wheels.requirements(UBI9_REQUIREMENTS)


def _check(argv: list[str], what: str, log: Log) -> None:
    """Run argv once (a producer step is never retried); a failure is a RuntimeBuildError."""
    log("  $ " + " ".join(argv))
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
    raise RuntimeBuildError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _produce_debian(platform: Platform, key: str, ref: str, log: Log) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"debian-{platform.arch}-{key[:12]}.tar"
    if tar.exists():
        log(f"runtime: [{platform.arch}] root file system from cache {tar}")
    else:
        partial = tar.with_suffix(".partial.tar")
        partial.unlink(missing_ok=True)
        log(f"runtime: [{platform.arch}] mmdebstrap {DEBIAN_SUITE} (minutes under QEMU)")
        _check(mmdebstrap_command(platform, debian_mirror(), partial), "mmdebstrap", log)
        partial.rename(tar)  # only a complete tar is ever reused
    changes = [arg for change in import_changes("debian", key) for arg in ("--change", change)]
    _check(
        ["docker", "import", "--platform", platform.platform, *changes, str(tar), ref],
        f"docker import of {tar}",
        log,
    )
    _push(ref, platform, log)


def _push(ref: str, platform: Platform, log: Log) -> None:
    def push() -> None:
        result = subprocess.run(
            ["docker", "push", ref], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            answer = (result.stderr or result.stdout).strip()
            raise registry.RegistryError(
                f"push of {ref} ({platform.arch}) failed; the registry answered: {answer}",
                image=ref,
                arch=platform.arch,
                answer=answer,
            )

    registry.with_retries(push, what=f"push of {ref}", log=log)


def ubi9_build_command(
    platform: Platform,
    key: str,
    ref: str,
    pin: bases.BasePin,
    wheels_image: str,
    builder: str | None,
    archive: Path,
    metadata: Path,
) -> list[str]:
    """The buildx run of the ubi9 runtime for one platform, to an OCI archive.

    `--network host` only on this engine (its containers have no bridge); a remote
    builder (native nodes) refuses it without the network.host entitlement, and needs
    no such thing: its build containers have their own network.
    """
    argv = ["docker", "buildx", "build"]
    if builder:
        argv += ["--builder", builder]
    argv += ["-f", str(UBI9_CONTAINERFILE), "--platform", platform.platform]
    if not builder:
        argv += ["--network", "host"]
    argv += ["--build-arg", f"BASE_IMAGE={pin.ref}"]
    argv += ["--build-arg", f"WHEELS_IMAGE={wheels_image}"]
    argv += ["--build-arg", f"PYTHON={pin.python_command}"]
    argv += ["--label", "io.power-dev-plugin.runtime.base=ubi9"]
    argv += ["--label", f"io.power-dev-plugin.runtime.key={key}"]
    argv += ["-t", ref, "--output", wheels.ARCHIVE_OUTPUT.format(archive=archive)]
    argv += ["--metadata-file", str(metadata), f"--provenance={PROVENANCE}"]
    return [*argv, "--progress", "plain", str(UBI9_CONTAINERFILE.parent)]


def _produce_ubi9(
    platform: Platform,
    key: str,
    ref: str,
    pin: bases.BasePin,
    wheels_image: wheels.WheelsImage,
    builder: str | None,
    log: Log,
) -> str:
    """Build once (no compiler: the wheels come from the wheels image), push with retries."""
    with tempfile.TemporaryDirectory(prefix="pdp-runtime-") as scratch:
        archive, metadata = Path(scratch) / "runtime.oci.tar", Path(scratch) / "metadata.json"
        argv = ubi9_build_command(
            platform, key, ref, pin, wheels_image.pinned, builder, archive, metadata
        )
        where = f"on builder {builder}" if builder else "on this engine"
        log(f"runtime: [{platform.arch}] ubi9 build {where} with {wheels_image.pinned}")
        _check(argv, f"buildx build of {ref}", log)
        digest = wheels.archive_digest(json.loads(metadata.read_text()), ref)
        registry.with_retries(
            lambda: registry.push_archive(archive, ref, platform.arch),
            what=f"push of {ref}",
            log=log,
        )
    return digest
