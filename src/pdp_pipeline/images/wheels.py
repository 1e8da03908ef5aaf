"""Wheels images: the runtime's compiled Python dependencies, built once per key, outside releases.

grpcio has no PyPI wheel for ppc64le or s390x and compiling it takes hours under QEMU,
so no release job compiles it. A wheels image (`FROM scratch`, `/wheels/*.whl`) is
made once per (package versions, Python version, architecture, base digest) — by the
wheels workflow (one job per architecture, `invoke wheels --arch ARCH --compile`) or
from PyPI's binary wheels where they exist (`invoke wheels --arch amd64`) — signed,
and pushed. The ubi9 runtime mounts it by digest; a build that finds none refuses and
says how to make it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pdp_pipeline.images import registry
from pdp_pipeline.images.bases import BasePin
from pdp_pipeline.images.trust import ImageTrust, may_reuse, sign_built
from pdp_pipeline.log import Log
from pdp_pipeline.platforms import Platform

ROOT = Path(__file__).resolve().parents[3]
REQUIREMENTS = ROOT / "containers" / "runtime-requirements.txt"
PACKAGE_CONTAINERFILE = ROOT / "containers" / "wheels.Containerfile"
COMPILE_CONTAINERFILE = ROOT / "containers" / "wheels-compile.Containerfile"
# The compiler cache the compile runs every object through (copied into its context).
OBJCACHE = ROOT / "containers" / "objcache"
# The named build context that seeds the compile's object cache.
SEED_CONTEXT = "objcache-seed"
COMPILE_CACHE_ENV = "PDP_COMPILE_CACHE"
SOURCES = ("pypi", "compile")
PROVENANCE = "mode=max"
WORKFLOW = ".github/workflows/wheels.yml"


# Who may have signed a wheels or runtime image keyless: the wheels workflow on the main
# branch, and the release workflow or the wheels workflow it calls (workflow_call: the
# called workflow's ref is the tag) on a vX.Y.Z tag of one repository, nothing else (no
# other branch's workflow_dispatch, no other workflow). `{repository}` is inserted escaped.
IDENTITY_TEMPLATE = (
    r"^https://github\.com/{repository}/\.github/workflows/"
    r"(wheels\.yml@refs/heads/main|(release|wheels)\.yml@refs/tags/v[0-9]+\.[0-9]+\.[0-9]+)$"
)


# The OCI archive output of every image build here (buildx.ARCHIVE_OUTPUT; that module
# is imported late: it imports the build record, which imports the runtimes, which import this).
ARCHIVE_OUTPUT = "type=oci,dest={archive},rewrite-timestamp=true"


class WheelsBuildError(Exception):
    """Downloading or building a wheels image failed; the message has the last lines."""


class WheelsMissing(Exception):
    """No (trusted) wheels image for this key; the message says which and how to make it."""


@dataclass(frozen=True)
class WheelsImage:
    ref: str  # <registry>/<repository>-wheels:py<python>-<arch>-<key12>
    digest: str
    key: str
    built: bool  # made by this call, not found in the registry

    @property
    def pinned(self) -> str:
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"


def requirements(path: Path = REQUIREMENTS) -> tuple[str, ...]:
    """The requirement lines of a pip requirements file, continuations joined, comments
    dropped: `grpcio==1.76.0 --hash=sha256:… --hash=sha256:…` is one requirement."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0] if not raw.lstrip().startswith("#") else ""
        line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            logical.append(line)
    if pending.strip():
        logical.append(pending.strip())
    return tuple(logical)


def pins(path: Path = REQUIREMENTS) -> tuple[str, ...]:
    """`name==version` of each requirement (hashes and markers left out)."""
    return tuple(line.split()[0].split(";")[0] for line in requirements(path))


def workflow_identity(repository: str | None) -> str:
    """The keyless identity regexp of `repository`'s (owner/name) wheels and release workflows."""
    if not repository or not re.fullmatch(r"[\w.-]+/[\w.-]+", repository):
        raise WheelsBuildError(
            f"keyless verification needs the signer's identity, and the repository {repository!r}"
            " (GITHUB_REPOSITORY) does not give one: pass --identity REGEXP (the workflow"
            " identity, e.g. " + IDENTITY_TEMPLATE.format(repository="OWNER/REPO") + ") or --key"
        )
    return IDENTITY_TEMPLATE.format(repository=re.escape(repository))


def wheels_key(
    packages: tuple[str, ...],
    python: str,
    arch: str,
    base_digest: str,
    containerfiles: tuple[str, ...] = (),
) -> str:
    """sha256 over what decides the wheels: package versions (hashes included), Python,
    architecture, base, and the text of the Containerfiles that build them."""
    material = json.dumps(
        {
            "packages": sorted(packages),
            "python": python,
            "arch": arch,
            "base": base_digest,
            "containerfiles": list(containerfiles),
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def containerfile_texts() -> tuple[str, ...]:
    """The Containerfiles that make a wheels image: part of its key, so a change makes a new one."""
    paths = (PACKAGE_CONTAINERFILE, COMPILE_CONTAINERFILE, OBJCACHE)
    return tuple(path.read_text(encoding="utf-8") for path in paths)


def wheels_ref(registry_addr: str, repository: str, python: str, arch: str, key: str) -> str:
    return f"{registry_addr}/{repository}-wheels:py{python}-{arch}-{key[:12]}"


def key_for(pin: BasePin, platform: Platform, path: Path = REQUIREMENTS) -> str:
    return wheels_key(
        requirements(path), pin.python, platform.arch, pin.digest, containerfile_texts()
    )


def missing_message(ref: str, pin: BasePin, platform: Platform, why: str) -> str:
    return (
        f"no wheels image {ref} ({why}) for {platform.arch}, Python {pin.python}, base "
        f"{pin.ref}, {REQUIREMENTS.name} as committed. A release compiles nothing: make it "
        f"first with `invoke wheels --arch {platform.arch}"
        f"{'' if platform.pypi_wheels else ' --compile'}` (a native builder: "
        f"--builder NAME) or run the wheels workflow ({WORKFLOW}), then release again."
    )


def find_wheels_image(
    pin: BasePin,
    platform: Platform,
    registry_addr: str,
    repository: str,
    *,
    trust: ImageTrust | None = None,
    log: Log = print,
) -> WheelsImage:
    """The wheels image of this key, trusted; WheelsMissing otherwise (never a build)."""
    key = key_for(pin, platform)
    ref = wheels_ref(registry_addr, repository, pin.python, platform.arch, key)
    if not registry.tag_exists(ref, log, absent_if_denied=True):
        raise WheelsMissing(missing_message(ref, pin, platform, "not in the registry"))
    digest = registry.manifest_digest(ref, log)
    if trust is not None and not trust.verify(f"{ref.rsplit(':', 1)[0]}@{digest}"):
        raise WheelsMissing(
            missing_message(ref, pin, platform, f"present but not signed by {trust.signer}")
        )
    log(f"wheels: [{platform.arch}] {ref}@{digest}")
    return WheelsImage(ref, digest, key, False)


# --- making one ------------------------------------------------------------------


def pypi_platform_tags(platform: Platform) -> list[str]:
    """manylinux tags a PyPI binary wheel for this machine may carry (glibc 2.17 and 2.28)."""
    machine = platform.machine
    return [
        f"manylinux2014_{machine}",
        f"manylinux_2_17_{machine}",
        f"manylinux_2_28_{machine}",
        "any",
    ]


def download_command(pin: BasePin, platform: Platform, dest: Path, path: Path) -> list[str]:
    """`pip download` of PyPI's binary wheels for the target Python and machine (no compile)."""
    cp = "cp" + pin.python.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    # Every file checked against the sha256 pinned in the requirements file.
    argv += [
        "--require-hashes",
        "--only-binary=:all:",
        "--python-version",
        pin.python,
        "--implementation",
        "cp",
    ]
    argv += ["--abi", cp, "--abi", "abi3", "--abi", "none"]
    for tag in pypi_platform_tags(platform):
        argv += ["--platform", tag]
    return [*argv, "--dest", str(dest), "-r", str(path)]


def build_command(
    source: str,
    pin: BasePin,
    platform: Platform,
    context: Path,
    ref: str,
    archive: Path,
    metadata: Path,
    builder: str | None,
    compile_cache: Path | None = None,
) -> list[str]:
    """The buildx run of a wheels image, written to an OCI archive (pushed separately).

    A compile seeds its object cache from `compile_cache` (a directory kept between
    attempts and runs: `export_cache_command` fills it)."""
    containerfile = PACKAGE_CONTAINERFILE if source == "pypi" else COMPILE_CONTAINERFILE
    argv = ["docker", "buildx", "build"]
    if builder:
        argv += ["--builder", builder]
    argv += ["-f", str(containerfile), "--platform", platform.platform]
    if source == "compile":
        argv += compile_args(pin, builder)
        argv += ["--target", "wheels"]
        if compile_cache is not None:
            argv += ["--build-context", f"{SEED_CONTEXT}={compile_cache}"]
    argv += ["--label", f"io.power-dev-plugin.wheels.python={pin.python}"]
    argv += ["--label", f"io.power-dev-plugin.wheels.base={pin.ref}"]
    argv += ["-t", ref, "--output", ARCHIVE_OUTPUT.format(archive=archive)]
    argv += ["--metadata-file", str(metadata), f"--provenance={PROVENANCE}", "--progress", "plain"]
    return [*argv, str(context)]


def compile_args(pin: BasePin, builder: str | None) -> list[str]:
    argv = ["--build-arg", f"BASE_IMAGE={pin.ref}", "--build-arg", f"PYTHON={pin.python_command}"]
    if not builder:
        argv += ["--network", "host"]  # this engine runs with no bridge
    return argv


def default_compile_cache(platform: Platform) -> Path:
    """Where the compile's objects are kept between attempts (PDP_COMPILE_CACHE moves it)."""
    import os

    base = os.environ.get(COMPILE_CACHE_ENV)
    return (Path(base) if base else ROOT / ".cache" / "compile-cache") / platform.arch


def export_cache_command(
    pin: BasePin, platform: Platform, dest: Path, builder: str | None
) -> list[str]:
    """The buildx run that copies the compile's cache mount out to `dest` (a directory)."""
    argv = ["docker", "buildx", "build"]
    if builder:
        argv += ["--builder", builder]
    argv += ["-f", str(COMPILE_CONTAINERFILE), "--platform", platform.platform]
    argv += compile_args(pin, builder)
    argv += ["--target", "objcache-export", "--output", f"type=local,dest={dest}"]
    return [*argv, "--progress", "plain", str(COMPILE_CONTAINERFILE.parent)]


def export_compile_cache(
    pin: BasePin, platform: Platform, cache: Path, builder: str | None, log: Log
) -> int:
    """Copy the compile's objects out to `cache` (after every attempt); how many it holds.

    A failure here is logged, never raised: it must not hide the compile's own result.
    """
    fresh = cache.with_name(cache.name + ".export")
    shutil.rmtree(fresh, ignore_errors=True)
    try:
        _run(
            export_cache_command(pin, platform, fresh, builder), "export of the compile cache", log
        )
    except WheelsBuildError as error:
        log(f"wheels: [{platform.arch}] compile cache NOT exported: {error}")
        shutil.rmtree(fresh, ignore_errors=True)
        return -1
    shutil.rmtree(cache, ignore_errors=True)
    fresh.rename(cache)
    objects = sum(1 for _ in cache.rglob("*.o"))
    log(f"wheels: [{platform.arch}] compile cache: {objects} objects kept in {cache}")
    return objects


def make_wheels_image(
    pin: BasePin,
    platform: Platform,
    registry_addr: str,
    repository: str,
    *,
    source: str = "pypi",
    builder: str | None = None,
    trust: ImageTrust | None = None,
    log: Log = print,
    compile_cache: Path | None = None,
    attempts: int = 1,
    attempt_timeout: float | None = None,
) -> WheelsImage:
    """Reuse the trusted wheels image of this key, or build, push (retried) and sign one.

    A compile runs up to `attempts` times, each bounded by `attempt_timeout` seconds; after
    each (failed or not) its objects are exported to `compile_cache`, and the next attempt,
    or the next job given the same directory, resumes from them instead of starting again.
    """
    if source not in SOURCES:
        raise WheelsBuildError(f"wheels source {source!r}: choose {' or '.join(SOURCES)}")
    key = key_for(pin, platform)
    ref = wheels_ref(registry_addr, repository, pin.python, platform.arch, key)
    if registry.tag_exists(ref, log, absent_if_denied=True):
        digest = registry.manifest_digest(ref, log)
        if may_reuse(trust, ref, digest, f"wheels image [{platform.arch}]", log):
            return WheelsImage(ref, digest, key, False)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pdp-wheels-") as scratch:
        context = Path(scratch) / "context"
        context.mkdir()
        if source == "pypi":
            _run(
                download_command(pin, platform, context / "wheels", REQUIREMENTS),
                "pip download",
                log,
            )
        else:
            shutil.copy(REQUIREMENTS, context / REQUIREMENTS.name)
            shutil.copy(OBJCACHE, context / OBJCACHE.name)
        archive, metadata = Path(scratch) / "wheels.oci.tar", Path(scratch) / "metadata.json"
        cache = None
        if source == "compile":
            cache = compile_cache or default_compile_cache(platform)
            cache.mkdir(parents=True, exist_ok=True)
        argv = build_command(source, pin, platform, context, ref, archive, metadata, builder, cache)
        where = f"builder {builder}" if builder else "this engine"
        log(f"wheels: [{platform.arch}] {source} build on {where}: {ref}")
        if cache is None:
            _run(argv, f"buildx build of {ref}", log)
        else:
            _compile(argv, ref, pin, platform, cache, builder, attempts, attempt_timeout, log)
        digest = archive_digest(json.loads(metadata.read_text()), ref)
        registry.with_retries(
            lambda: registry.push_archive(archive, ref, platform.arch),
            what=f"push of {ref}",
            log=log,
        )
    sign_built(trust, ref, digest, f"wheels image [{platform.arch}]", log)
    log(f"wheels: [{platform.arch}] {ref}@{digest} in {time.monotonic() - started:.0f} s")
    return WheelsImage(ref, digest, key, True)


def _compile(
    argv: list[str],
    ref: str,
    pin: BasePin,
    platform: Platform,
    cache: Path,
    builder: str | None,
    attempts: int,
    attempt_timeout: float | None,
    log: Log,
) -> None:
    """The compile, retried up to `attempts` times; each attempt resumes from the objects
    the earlier ones kept (exported to `cache` after each)."""
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            _run(argv, f"buildx build of {ref} (attempt {attempt})", log, timeout=attempt_timeout)
        except WheelsBuildError as error:
            kept = export_compile_cache(pin, platform, cache, builder, log)
            if attempt >= attempts:
                raise WheelsBuildError(
                    f"{error}\n{kept if kept >= 0 else 'no'} compiled objects kept in {cache}: "
                    "run the same command again (with that directory) to resume"
                ) from None
            log(f"wheels: [{platform.arch}] attempt {attempt} failed; resuming ({kept} objects)")
            continue
        export_compile_cache(pin, platform, cache, builder, log)
        return


def archive_digest(metadata: dict[str, object], ref: str) -> str:
    """The digest buildx reports in its metadata file for what it wrote."""
    digest = metadata.get("containerimage.digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise WheelsBuildError(f"buildx wrote no image digest for {ref} ({sorted(metadata)})")
    return digest


def _run(argv: list[str], what: str, log: Log, timeout: float | None = None) -> None:
    log("  $ " + " ".join(argv))
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise WheelsBuildError(
            f"{what} stopped after {timeout:.0f} s (--attempt-timeout)"
        ) from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise WheelsBuildError(f"{what} failed (exit {result.returncode}); last lines:\n{tail}")
