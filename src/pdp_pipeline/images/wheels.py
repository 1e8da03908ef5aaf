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
SOURCES = ("pypi", "compile")
PROVENANCE = "mode=max"
WORKFLOW = ".github/workflows/wheels.yml"


# Who may have signed a wheels or runtime image keyless: the wheels and release workflows
# of one repository (any ref: the wheels workflow runs on branches, releases on tags).
IDENTITY_TEMPLATE = "^https://github.com/{repository}/.github/workflows/(wheels|release).yml@"


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
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def workflow_identity(repository: str | None) -> str:
    """The keyless identity regexp of `repository`'s (owner/name) wheels and release workflows."""
    if not repository or not re.fullmatch(r"[\w.-]+/[\w.-]+", repository):
        raise WheelsBuildError(
            f"keyless verification needs the signer's identity, and the repository {repository!r}"
            " (GITHUB_REPOSITORY) does not give one: pass --identity REGEXP (the workflow"
            " identity, e.g. " + IDENTITY_TEMPLATE.format(repository="OWNER/REPO") + ") or --key"
        )
    return IDENTITY_TEMPLATE.format(repository=re.escape(repository))


def wheels_key(packages: tuple[str, ...], python: str, arch: str, base_digest: str) -> str:
    """sha256 over what decides the wheels: package versions, Python, architecture, base."""
    material = json.dumps(
        {"packages": sorted(packages), "python": python, "arch": arch, "base": base_digest},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def wheels_ref(registry_addr: str, repository: str, python: str, arch: str, key: str) -> str:
    return f"{registry_addr}/{repository}-wheels:py{python}-{arch}-{key[:12]}"


def key_for(pin: BasePin, platform: Platform, path: Path = REQUIREMENTS) -> str:
    return wheels_key(requirements(path), pin.python, platform.arch, pin.digest)


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
    argv += ["--only-binary=:all:", "--python-version", pin.python, "--implementation", "cp"]
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
) -> list[str]:
    """The buildx run of a wheels image, written to an OCI archive (pushed separately)."""
    containerfile = PACKAGE_CONTAINERFILE if source == "pypi" else COMPILE_CONTAINERFILE
    argv = ["docker", "buildx", "build"]
    if builder:
        argv += ["--builder", builder]
    argv += ["-f", str(containerfile), "--platform", platform.platform]
    if source == "compile":
        argv += [
            "--build-arg",
            f"BASE_IMAGE={pin.ref}",
            "--build-arg",
            f"PYTHON={pin.python_command}",
        ]
        if not builder:
            argv += ["--network", "host"]  # this engine runs with no bridge
    argv += ["--label", f"io.power-dev-plugin.wheels.python={pin.python}"]
    argv += ["--label", f"io.power-dev-plugin.wheels.base={pin.ref}"]
    argv += ["-t", ref, "--output", ARCHIVE_OUTPUT.format(archive=archive)]
    argv += ["--metadata-file", str(metadata), f"--provenance={PROVENANCE}", "--progress", "plain"]
    return [*argv, str(context)]


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
) -> WheelsImage:
    """Reuse the trusted wheels image of this key, or build, push (retried) and sign one."""
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
        archive, metadata = Path(scratch) / "wheels.oci.tar", Path(scratch) / "metadata.json"
        argv = build_command(source, pin, platform, context, ref, archive, metadata, builder)
        where = f"builder {builder}" if builder else "this engine"
        log(f"wheels: [{platform.arch}] {source} build on {where}: {ref}")
        _run(argv, f"buildx build of {ref}", log)  # once: a compile is never retried
        digest = archive_digest(json.loads(metadata.read_text()), ref)
        registry.with_retries(
            lambda: registry.push_archive(archive, ref, platform.arch),
            what=f"push of {ref}",
            log=log,
        )
    sign_built(trust, ref, digest, f"wheels image [{platform.arch}]", log)
    log(f"wheels: [{platform.arch}] {ref}@{digest} in {time.monotonic() - started:.0f} s")
    return WheelsImage(ref, digest, key, True)


def archive_digest(metadata: dict[str, object], ref: str) -> str:
    """The digest buildx reports in its metadata file for what it wrote."""
    digest = metadata.get("containerimage.digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise WheelsBuildError(f"buildx wrote no image digest for {ref} ({sorted(metadata)})")
    return digest


def _run(argv: list[str], what: str, log: Log) -> None:
    log("  $ " + " ".join(argv))
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise WheelsBuildError(f"{what} failed (exit {result.returncode}); last lines:\n{tail}")
