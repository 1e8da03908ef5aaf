"""The plugin image: one wheel, staged once, then one buildx build per architecture.

The wheel is built and unpacked on the host (`build_context`); each
architecture's image is then `FROM <runtime>@<digest>` plus two COPYs, which
runs nothing under QEMU (`buildx`). The per-architecture images are pushed
under `<tag>-<arch>` and joined into one OCI index `<tag>`. The record of a
build (tags, digests, what was verified) is written to
`.cache/build/last-build.json` for `verify`, `release` and the summary
(`build_record`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from pdp_pipeline.images import buildx, registry, runtime, tags, wheels
from pdp_pipeline.images import context as build_context
from pdp_pipeline.images.record import (
    BUILD_DIR,
    ROOT,
    ArchResult,
    BuildError,
    BuildRecord,
    record_path,
    save_record,
)
from pdp_pipeline.images.trust import ImageTrust, UntrustedImage
from pdp_pipeline.log import Log
from pdp_pipeline.platforms import Platform

CONTAINERFILE = Path("containers") / "Containerfile"


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
    # Build every layer anew instead of reusing BuildKit's cache (which is keyed by
    # content, not time): the reproducibility test must not pass on a cache hit.
    no_cache: bool = False
    # Whom reused runtime images must be signed by (a release's signer); None: keys alone.
    trust: ImageTrust | None = None
    # Set by `invoke release` only: the one path allowed to push a `v*` tag's build to a
    # registry other than the loopback one (signed, attested, verified).
    release: bool = False
    # Where the plugin images and the index go, when not `repository` (whose name the
    # runtime and wheels images keep): a release builds its candidate into a repository of
    # its own (`<repository>-candidates`), never into the one users pull from.
    image_repository: str | None = None

    @property
    def images_to(self) -> str:
        return self.image_repository or self.repository

    def __post_init__(self) -> None:
        check_base(self.base)
        if not self.archs:
            raise BuildError("--arch selects no architecture; nothing to build")
        if self.tag is not None:
            tags.check_tag(self.tag)


def check_base(base: str) -> str:
    if base not in runtime.BASES:
        raise BuildError(
            f"--base {base!r} is not a base we build on; choose {' or '.join(runtime.BASES)}"
        )
    return base


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
    refuse_release_push(options, identity)
    # The commit's time, not the clock: the same commit builds the same digests.
    created = tags.rfc3339(identity.commit_time)
    log(
        f"build: {', '.join(p.arch for p in options.archs)} as"
        f" {tags.image_ref(options.registry, options.images_to, tag=identity.tag)}"
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
        context = stage_build_context(root, identity, Path(scratch), log)
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
                root=root,
                epoch=identity.commit_time,
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
        repository=options.images_to,
        requested_base=options.base,
        pushed=options.push,
        created=created,
    )
    path = record_file or record_path(root)
    if options.push:
        step = time.monotonic()
        index_ref = tags.image_ref(options.registry, options.images_to, tag=identity.tag)
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
        from pdp_pipeline.images import verify

        step = time.monotonic()
        record = verify.verify_and_record(path, [r.platform.arch for r in results], log=log)
        log(f"build: verification done ({time.monotonic() - step:.1f} s)")
    log(f"build: finished in {time.monotonic() - started:.1f} s")
    return record


def refuse_release_push(options: BuildOptions, identity: tags.Identity) -> None:
    """A `v*` build pushed anywhere but the loopback registry goes through `invoke release`.

    `invoke build` neither signs the index nor attests it, may fall back to debian and may
    skip verification: what it pushes to a shared registry under a release tag would look
    like a release and be none. HEAD on a `v*` tag (or `--tag v…`) counts as a release build.
    """
    if not options.push or options.release or registry.is_loopback_registry(options.registry):
        return
    described = tags.parse_description(identity.description)
    on_release_tag = described.tag is not None and described.distance == 0
    if on_release_tag or (options.tag or "").startswith("v"):
        raise BuildError(
            f"HEAD is the release tag {described.tag or identity.tag} and {options.registry} is "
            "not the loopback registry: a release is pushed by `invoke release` only (signed, "
            "attested, verified, ubi9). Nothing was built. Build it for the local registry "
            "(127.0.0.1:5000), or use `invoke release`."
        )


def stage_build_context(
    root: Path, identity: tags.Identity, scratch: Path, log: Log = print
) -> Path:
    """The plugin image's build context in `scratch`: the wheel and its pure-Python
    dependencies unpacked, every time set to the commit's."""
    step = time.monotonic()
    wheel = build_context.build_wheel(
        root, identity.version, scratch / "wheel", log, epoch=identity.commit_time
    )
    dependencies = build_context.fetch_dependency_wheels(root, scratch / "deps", log)
    context = build_context.stage_context(
        root,
        wheel,
        scratch / "context",
        log,
        epoch=identity.commit_time,
        dependencies=tuple(dependencies),
    )
    log(f"build: wheel {wheel.name} staged in {time.monotonic() - step:.1f} s")
    return context


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
            trust=options.trust,
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
    *,
    root: Path = ROOT,
    epoch: int | None = None,
) -> ArchResult:
    """Build (and push) one architecture's plugin image; pushes are retried."""
    image_ref = tags.image_ref(options.registry, options.images_to, tag=tag, arch=platform.arch)
    step = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pdp-buildx-") as scratch:
        metadata_file = Path(scratch) / "metadata.json"
        archive = Path(scratch) / "image.oci.tar" if options.push else None
        argv = buildx.buildx_command(
            platform=platform,
            containerfile=root / CONTAINERFILE,
            context=context,
            runtime_ref=runtime_pin(image),
            labels=labels,
            image_ref=image_ref,
            metadata_file=metadata_file,
            push=options.push,
            archive=archive,
            builder=options.builder,
            provenance=options.provenance,
            source_date_epoch=epoch,
            no_cache=options.no_cache,
        )
        log(f"build: [{platform.arch}] {'build and push' if options.push else 'build'} {image_ref}")
        buildx.build_then_push(argv, image_ref, platform, archive, log)
        digest = buildx.digest_from_metadata(json.loads(metadata_file.read_text()), image_ref)
    seconds = time.monotonic() - step
    size = _image_size(image_ref, digest, options.push)
    log(f"build: [{platform.arch}] {image_ref}@{digest} in {seconds:.1f} s")
    return ArchResult(platform, image_ref, digest, size, image, None, round(seconds, 1))


def runtime_pin(image: runtime.RuntimeImage) -> str:
    """The runtime pinned by digest, so the FROM cannot drift during a build."""
    return image.ref.split("@", 1)[0] + "@" + image.digest if image.digest else image.ref


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


# What a build or a verification can fail with: each message names what and where.
FAILURES: tuple[type[Exception], ...] = (
    BuildError,
    tags.TagError,
    registry.RegistryError,
    runtime.BaseUnavailable,
    runtime.RuntimeBuildError,
    wheels.WheelsMissing,
    wheels.WheelsBuildError,
    UntrustedImage,
    OSError,
)
