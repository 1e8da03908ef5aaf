"""The plugin image: one wheel, staged once, then one buildx build per architecture.

The plugin is pure Python, so its wheel is built once on the build platform and
unpacked on the host (`pip install --no-deps --target`); each architecture's
image is then `FROM <runtime>@<digest>` plus two COPYs, which runs nothing under
QEMU. The per-architecture images are pushed under `<tag>-<arch>` and joined
into one OCI index `<tag>`. The record of a build (tags, digests, what was
verified) is written to `.cache/build/last-build.json` for `verify`, `release`
and the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from pdp_pipeline import registry, runtime, tags
from pdp_pipeline.platforms import Platform, by_arch, select

Log = Callable[[str], None]

ROOT = Path(__file__).resolve().parents[2]
BASES = ("ubi9", "debian")
CONTAINERFILE = Path("containers") / "Containerfile"
LAUNCHER = Path("containers") / "power-device-plugin"
BUILD_DIR = Path(".cache") / "build"
RECORD_NAME = "last-build.json"
# Where the image expects the unpacked plugin (ENV PYTHONPATH in the Containerfile).
SITE_PACKAGES = "site-packages"
RECORD_FORMAT = 1


class BuildError(Exception):
    """A build step failed; the message names the step, the architecture and the cause."""


@dataclass(frozen=True)
class BuildOptions:
    """What `invoke build` (and the release) asks for."""

    archs: tuple[Platform, ...]
    registry: str = "127.0.0.1:5000"
    repository: str = "power-dev-plugin"
    tag: str | None = None
    base: str = "ubi9"
    base_image: str | None = None
    builder: str | None = None
    push: bool = True
    verify: bool = True
    allow_fallback: bool = True
    provenance: str | None = None  # None: --provenance=false (one manifest per arch)
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_base(self.base)
        if not self.archs:
            raise BuildError("--arch selects no architecture; nothing to build")
        if self.tag is not None:
            tags.check_tag(self.tag)


def is_local_registry(registry_addr: str) -> bool:
    """True for this host's registry, which `invoke setup` brings up."""
    return registry_addr.split("/", 1)[0].rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")


def archs_to_verify(record: BuildRecord, spec: str) -> list[str]:
    """`--arch` of `verify`: `all` means every architecture the record built."""
    if spec.strip() == "all":
        return [r.platform.arch for r in record.archs]
    wanted = [p.arch for p in select(spec)]
    for arch in wanted:
        record.result_for(arch)  # refuses one the record lacks, naming what it has
    return wanted


def check_base(base: str) -> str:
    if base not in BASES:
        raise BuildError(f"--base {base!r} is not a base we build on; choose {' or '.join(BASES)}")
    return base


@dataclass
class ArchResult:
    """One architecture's plugin image."""

    platform: Platform
    image_ref: str  # <registry>/<repository>:<tag>-<arch>
    digest: str  # of what was pushed (or loaded) under image_ref
    size: int | None  # bytes: compressed in the registry, or unpacked in the local engine
    runtime: runtime.RuntimeImage
    verified: bool | None = None  # None: verification did not run
    seconds: float = 0.0  # the buildx build (and push) of this image

    def digest_ref(self) -> str:
        """`<registry>/<repository>@<digest>`: how verification pulls it."""
        return self.image_ref.rsplit(":", 1)[0] + "@" + self.digest


@dataclass
class BuildRecord:
    """Everything a later step needs to know about one build."""

    tag: str
    version: str
    revision: str
    index_ref: str | None  # None when nothing was pushed
    index_digest: str | None
    base: str  # the base actually used
    fell_back: bool  # ubi9 was asked for and debian was used
    archs: list[ArchResult]
    registry: str = ""
    repository: str = ""
    requested_base: str = ""
    pushed: bool = True
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(_record_to_dict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BuildRecord:
        return _record_from_dict(json.loads(text))

    def result_for(self, arch: str) -> ArchResult:
        for result in self.archs:
            if result.platform.arch == arch:
                return result
        built = ", ".join(r.platform.arch for r in self.archs) or "none"
        raise BuildError(f"the build record has no {arch} image (built: {built})")


def record_path(root: Path = ROOT) -> Path:
    return root / BUILD_DIR / RECORD_NAME


def save_record(record: BuildRecord, path: Path) -> None:
    """Write atomically, so a reader never sees half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(record.to_json())
    temporary.replace(path)


def load_record(path: Path) -> BuildRecord:
    try:
        return BuildRecord.from_json(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"no build record at {path}: run `invoke build` first") from None
    except (ValueError, KeyError, TypeError) as error:
        raise BuildError(f"the build record {path} is unreadable ({error!r})") from None


# --- the wheel and the staged build context -----------------------------------


def wheel_command(python: str, root: Path, outdir: Path) -> list[str]:
    # No isolation: the build backend comes from the project's own environment, so
    # a build needs no package index (air-gapped hosts) and spends no time on one.
    return [python, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir), str(root)]


def wheel_env(version: str, env: Mapping[str, str]) -> dict[str, str]:
    """The environment that makes setuptools-scm use our version, not its own guess."""
    return {
        **env,
        "SETUPTOOLS_SCM_PRETEND_VERSION": version,
        "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_POWER_DEVICE_PLUGIN": version,
    }


def stage_command(python: str, wheel: Path, site_packages: Path) -> list[str]:
    """Unpack the wheel for the image: no dependencies, no index, no bytecode."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--target",
        str(site_packages),
        str(wheel),
    ]


def build_wheel(root: Path, version: str, outdir: Path, log: Log = print) -> Path:
    """Build the plugin wheel once, with `version` as its version."""
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    argv = wheel_command(sys.executable, root, outdir)
    _run_step(argv, "the plugin wheel", env=wheel_env(version, os.environ), log=log)
    wheels = sorted(outdir.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {outdir} after `{' '.join(argv)}`, found {wheels}")
    return wheels[0]


def stage_context(root: Path, wheel: Path, context: Path, log: Log = print) -> Path:
    """The build context of containers/Containerfile: site-packages/ and the launcher."""
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    site_packages = context / SITE_PACKAGES
    _run_step(stage_command(sys.executable, wheel, site_packages), "staging the wheel", log=log)
    # The console script pip writes points at this host's Python; the image has its own launcher.
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
    launcher = context / LAUNCHER.name
    shutil.copyfile(root / LAUNCHER, launcher)
    launcher.chmod(0o755)
    return context


# --- buildx --------------------------------------------------------------------


def buildx_command(
    *,
    platform: Platform,
    containerfile: Path,
    context: Path,
    runtime_ref: str,
    labels: Mapping[str, str],
    image_ref: str,
    metadata_file: Path,
    push: bool,
    builder: str | None = None,
    provenance: str | None = None,
) -> list[str]:
    """The `docker buildx build` of one architecture's plugin image."""
    argv = [
        "docker",
        "buildx",
        "build",
        "--platform",
        platform.platform,
        # buildx 0.13 only looks for a file named Dockerfile by itself.
        "-f",
        str(containerfile),
        "--build-arg",
        f"RUNTIME_IMAGE={runtime_ref}",
    ]
    for key in sorted(labels):
        argv += ["--label", f"{key}={labels[key]}"]
    argv += ["-t", image_ref, "--push" if push else "--load"]
    argv += ["--metadata-file", str(metadata_file)]
    if builder:
        argv += ["--builder", builder]
    # buildx's default (min provenance) would turn every per-arch push into an index.
    argv.append(f"--provenance={provenance}" if provenance else "--provenance=false")
    argv += ["--progress", "plain", str(context)]
    return argv


def digest_from_metadata(metadata: Mapping[str, Any], image_ref: str) -> str:
    """The digest buildx reports for what it pushed or loaded."""
    digest = metadata.get("containerimage.digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise BuildError(
            f"buildx wrote no image digest for {image_ref} (metadata keys: {sorted(metadata)})"
        )
    return digest


# Words buildx prints when the build succeeded and sending it to the registry did not.
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
    """True when buildx output says the push failed (worth a retry), not the build."""
    lowered = output.lower()
    tail = lowered[lowered.rfind("error:") :] if "error:" in lowered else lowered[-2000:]
    return "push" in lowered and any(marker in tail for marker in _PUSH_FAILURE_MARKERS)


def last_lines(text: str, count: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


# --- the whole build ------------------------------------------------------------


def run_build(
    options: BuildOptions,
    log: Log = print,
    root: Path = ROOT,
    record_file: Path | None = None,
) -> BuildRecord:
    """Wheel → runtimes → one image per architecture → index → verification → record.

    The record goes to `record_file` (default `.cache/build/last-build.json`).
    """
    started = time.monotonic()
    identity = tags.resolve_identity(root, options.tag)
    created = tags.created_now()
    log(
        f"build: {', '.join(p.arch for p in options.archs)} as"
        f" {tags.image_ref(options.registry, options.repository, tag=identity.tag)}"
        f" (version {identity.version}, git {identity.description})"
    )
    base, fell_back = runtime.choose_base(
        options.base, options.base_image, options.allow_fallback, log
    )
    if fell_back:
        log(
            f"build: WARNING: base {options.base!r} cannot be used here; building on {base!r}"
            " instead. The images say so in their labels and the summary says so too."
        )

    # A directory per run: builds started side by side (a release, a test) never share one.
    (root / BUILD_DIR).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / BUILD_DIR, prefix="run-") as scratch:
        step = time.monotonic()
        wheel = build_wheel(root, identity.version, Path(scratch) / "wheel", log)
        context = stage_context(root, wheel, Path(scratch) / "context", log)
        log(f"build: wheel {wheel.name} staged in {time.monotonic() - step:.1f} s")
        runtimes = ensure_runtimes(options, base, log)
        results = [
            build_arch_image(
                options,
                identity.tag,
                platform,
                runtimes[platform.arch],
                tags.oci_labels(
                    identity,
                    created=created,
                    base=base,
                    base_name=runtimes[platform.arch].base_name,
                    fell_back=fell_back,
                    runtime_ref=runtime_pin(runtimes[platform.arch]),
                    extra=options.extra_labels,
                ),
                context,
                log,
            )
            for platform in options.archs
        ]

    record = BuildRecord(
        tag=identity.tag,
        version=identity.version,
        revision=identity.revision,
        index_ref=None,
        index_digest=None,
        base=base,
        fell_back=fell_back,
        archs=results,
        registry=options.registry,
        repository=options.repository,
        requested_base=options.base,
        pushed=options.push,
        created=created,
    )
    path = record_file or record_path(root)
    if options.push:
        step = time.monotonic()
        index_ref = tags.image_ref(options.registry, options.repository, tag=identity.tag)
        index_digest = registry.create_index(index_ref, [r.digest_ref() for r in results], log=log)
        record = replace(record, index_ref=index_ref, index_digest=index_digest)
        log(f"build: index {index_ref}@{index_digest} ({time.monotonic() - step:.1f} s)")
    else:
        log(
            "build: --no-push: images are in the local engine only; no index was made and"
            " nothing was verified (verification pulls from the registry)"
        )
    save_record(record, path)
    log(f"build: record written to {path} ({time.monotonic() - started:.1f} s so far)")

    if options.push and options.verify:
        from pdp_pipeline import verify

        step = time.monotonic()
        record = verify.verify_and_record(path, [r.platform.arch for r in results], log=log)
        log(f"build: verification done ({time.monotonic() - step:.1f} s)")
    log(f"build: finished in {time.monotonic() - started:.1f} s")
    return record


def ensure_runtimes(
    options: BuildOptions, base: str, log: Log = print
) -> dict[str, runtime.RuntimeImage]:
    """The runtime image of every architecture: reused when its key exists, else built."""
    runtimes: dict[str, runtime.RuntimeImage] = {}
    for platform in options.archs:
        step = time.monotonic()
        image = runtime.ensure_runtime_image(
            base,
            platform,
            options.registry,
            options.repository,
            base_image=options.base_image,
            builder=options.builder,
            log=log,
        )
        runtimes[platform.arch] = image
        how = "reused" if image.reused else "built"
        log(
            f"build: [{platform.arch}] runtime {how}: {image.ref}@{image.digest}"
            f" ({time.monotonic() - step:.1f} s)"
        )
    return runtimes


def build_arch_image(
    options: BuildOptions,
    tag: str,
    platform: Platform,
    image: runtime.RuntimeImage,
    labels: Mapping[str, str],
    context: Path,
    log: Log = print,
) -> ArchResult:
    """Build (and push) one architecture's plugin image; pushes are retried."""
    image_ref = tags.image_ref(options.registry, options.repository, tag=tag, arch=platform.arch)
    step = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pdp-buildx-") as scratch:
        metadata_file = Path(scratch) / "metadata.json"
        argv = buildx_command(
            platform=platform,
            containerfile=ROOT / CONTAINERFILE,
            context=context,
            runtime_ref=runtime_pin(image),
            labels=labels,
            image_ref=image_ref,
            metadata_file=metadata_file,
            push=options.push,
            builder=options.builder,
            provenance=options.provenance,
        )
        log(f"build: [{platform.arch}] {'build and push' if options.push else 'build'} {image_ref}")

        def attempt() -> None:
            _run_buildx(argv, image_ref, platform, options.registry)

        if options.push:
            registry.with_retries(attempt, what=f"push of {image_ref} ({platform.arch})", log=log)
        else:
            attempt()
        digest = digest_from_metadata(json.loads(metadata_file.read_text()), image_ref)
    seconds = time.monotonic() - step
    size = _image_size(image_ref, digest, options.push)
    log(f"build: [{platform.arch}] {image_ref}@{digest} in {seconds:.1f} s")
    return ArchResult(platform, image_ref, digest, size, image, None, round(seconds, 1))


def runtime_pin(image: runtime.RuntimeImage) -> str:
    """The runtime pinned by digest, so the FROM cannot drift during a build."""
    return image.ref.split("@", 1)[0] + "@" + image.digest if image.digest else image.ref


def _run_buildx(
    argv: Sequence[str], image_ref: str, platform: Platform, registry_addr: str
) -> None:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode == 0:
        return
    output = result.stdout + result.stderr
    if is_push_failure(output):
        answer = last_lines(output, 8)
        raise registry.RegistryError(
            f"push of {image_ref} ({platform.arch}) to {registry_addr} failed; the registry"
            f" answered:\n{answer}",
            image=image_ref,
            arch=platform.arch,
            answer=answer,
        )
    raise BuildError(
        f"buildx build of {image_ref} ({platform.arch}) failed (exit {result.returncode});"
        f" last lines:\n{last_lines(output)}"
    )


def _image_size(image_ref: str, digest: str, pushed: bool) -> int | None:
    """Compressed size in the registry when pushed, else the local engine's size."""
    if pushed:
        return registry.image_size(image_ref.rsplit(":", 1)[0] + "@" + digest, log=lambda _: None)
    try:
        import docker

        client = docker.from_env()
        try:
            size = client.images.get(image_ref).attrs.get("Size")
        finally:
            client.close()
    except Exception:  # the size is informative; a missing figure must not fail a build
        return None
    return int(size) if isinstance(size, int) else None


def _run_step(
    argv: list[str], what: str, *, env: Mapping[str, str] | None = None, log: Log = print
) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=dict(env) if env else None
    )
    if result.returncode != 0:
        raise BuildError(
            f"{what}: `{' '.join(argv)}` exited with {result.returncode}; last lines:\n"
            + last_lines(result.stdout + result.stderr)
        )


# --- the record's JSON -----------------------------------------------------------


def _record_to_dict(record: BuildRecord) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "tag": record.tag,
        "version": record.version,
        "revision": record.revision,
        "index_ref": record.index_ref,
        "index_digest": record.index_digest,
        "base": record.base,
        "requested_base": record.requested_base,
        "fell_back": record.fell_back,
        "registry": record.registry,
        "repository": record.repository,
        "pushed": record.pushed,
        "created": record.created,
        "archs": [
            {
                "arch": r.platform.arch,
                "platform": r.platform.platform,
                "image_ref": r.image_ref,
                "digest": r.digest,
                "size": r.size,
                "verified": r.verified,
                "seconds": r.seconds,
                "runtime": _runtime_to_dict(r.runtime),
            }
            for r in record.archs
        ],
    }


def _record_from_dict(data: Mapping[str, Any]) -> BuildRecord:
    if data.get("format") != RECORD_FORMAT:
        raise ValueError(f"record format {data.get('format')!r}, expected {RECORD_FORMAT}")
    return BuildRecord(
        tag=data["tag"],
        version=data["version"],
        revision=data["revision"],
        index_ref=data["index_ref"],
        index_digest=data["index_digest"],
        base=data["base"],
        fell_back=bool(data["fell_back"]),
        archs=[
            ArchResult(
                platform=by_arch(item["arch"]),
                image_ref=item["image_ref"],
                digest=item["digest"],
                size=item["size"],
                runtime=_runtime_from_dict(item["runtime"]),
                verified=item["verified"],
                seconds=float(item.get("seconds", 0.0)),
            )
            for item in data["archs"]
        ],
        registry=data.get("registry", ""),
        repository=data.get("repository", ""),
        requested_base=data.get("requested_base", ""),
        pushed=bool(data.get("pushed", True)),
        created=data.get("created", ""),
    )


def _runtime_to_dict(image: runtime.RuntimeImage) -> dict[str, Any]:
    return {
        "base": image.base,
        "arch": image.platform.arch,
        "ref": image.ref,
        "digest": image.digest,
        "key": image.key,
        "reused": image.reused,
        "base_name": image.base_name,
    }


def _runtime_from_dict(data: Mapping[str, Any]) -> runtime.RuntimeImage:
    return runtime.RuntimeImage(
        base=data["base"],
        platform=by_arch(data["arch"]),
        ref=data["ref"],
        digest=data["digest"],
        key=data["key"],
        reused=bool(data["reused"]),
        base_name=data["base_name"],
    )


# What a build or a verification can fail with: each message names what and where.
FAILURES: tuple[type[Exception], ...] = (
    BuildError,
    tags.TagError,
    registry.RegistryError,
    runtime.BaseUnavailable,
    runtime.RuntimeBuildError,
    OSError,
)
