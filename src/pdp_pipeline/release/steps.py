"""The real side effects of a release, wired into `release.Steps`.

buildx and the registry build and push, cosign signs (a throwaway key for a dry
run, a given key, or keyless in CI), and kustomize renders the install YAML
from manifests pinned to the release image.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pdp_pipeline.images import registry
from pdp_pipeline.images.trust import ImageTrust
from pdp_pipeline.log import Log
from pdp_pipeline.release import build_key, sbom, signing
from pdp_pipeline.release.options import LABEL_RELEASE, ReleaseOptions
from pdp_pipeline.release.run import Steps
from pdp_pipeline.release.version import ReleaseRefused

PROVENANCE = "mode=max"
DRY_RUN_KEY_DIR = Path(".cache") / "release" / "cosign-dryrun"
# The key that signs runtime and wheels images built by builds and dry runs on this host
# lives per machine and user, not per clone: `build_key` (PDP_BUILD_KEY_DIR moves it).
BUILD_KEY_ENV = build_key.KEY_DIR_ENV
DRY_RUN_MANIFESTS_DIR = Path(".cache") / "release" / "manifests-dryrun"
# Set by GitHub Actions when the job may request an OIDC token (`id-token: write`).
OIDC_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"


def check_signing(options: ReleaseOptions, env: Mapping[str, str]) -> None:
    """Refuse, before building, a release that could not be signed."""
    if shutil.which("cosign") is None:
        raise ReleaseRefused(
            "cosign is not installed (`invoke setup` installs it from Debian trixie; in GitHub "
            "Actions use sigstore/cosign-installer). Nothing was built."
        )
    if options.key is not None and not options.key.is_file():
        raise ReleaseRefused(f"--key {options.key}: no such key file. Nothing was built.")
    if not options.dry_run and options.key is None and OIDC_ENV not in env:
        raise ReleaseRefused(
            "keyless signing needs an OIDC token, which only a CI job with `id-token: write` "
            "has; outside CI pass --key cosign.key (COSIGN_PASSWORD in the environment). "
            "Nothing was built."
        )


def make_signer(options: ReleaseOptions, root: Path) -> signing.Signer:
    """Throwaway key for a dry run, the given key, or keyless in CI (checked first)."""
    import os

    check_signing(options, os.environ)
    insecure = registry.is_loopback_registry(options.registry)
    if options.key is not None:
        public = options.key.with_suffix(".pub")
        return signing.Signer(
            key=options.key,
            public_key=public if public.is_file() else None,
            # A dry run stays offline even with a real key.
            transparency_log=not options.dry_run,
            insecure_registry=insecure,
        )
    if options.dry_run:
        return signing.throwaway_signer(root / DRY_RUN_KEY_DIR, insecure_registry=insecure)
    return signing.Signer(
        certificate_identity_regexp=options.certificate_identity_regexp
        or default_identity(os.environ),
        insecure_registry=insecure,
    )


def default_identity(env: Mapping[str, str]) -> str | None:
    """The accepted keyless signers of this repository (GITHUB_REPOSITORY), if it is known:
    its wheels workflow on main and its release workflow on a vX.Y.Z tag."""
    from pdp_pipeline.images import wheels

    try:
        return wheels.workflow_identity(env.get("GITHUB_REPOSITORY"))
    except wheels.WheelsBuildError:
        return None


def build_signer(options: ReleaseOptions, root: Path, env: Mapping[str, str]) -> signing.Signer:
    """Who signs runtime and wheels images: this host's kept key (dry run), else the release's.

    On GitHub that is keyless with the workflow identity (the same regexp verifies the
    wheels workflow's signatures); with --key, that key.
    """
    if options.dry_run and options.key is None:
        return build_key.host_build_signer(options.registry, env)
    return make_signer(options, root)


def image_trust(signer: signing.Signer, *, strict: bool, log: Log = print) -> ImageTrust:
    """`ImageTrust` over cosign: sign when built, verify before reuse."""
    import os

    env = signing.cosign_environment(os.environ, throwaway=signer.throwaway)

    def sign(ref: str) -> None:
        signing.run_cosign(signing.sign_command(signer, ref), what=f"signing {ref}", env=env)

    def verify(ref: str) -> bool:
        try:
            signing.run_cosign(
                signing.verify_command(signer, ref), what=f"verifying {ref}", env=env
            )
        except signing.SigningError as error:
            log(f"trust: {error}")
            return False
        return True

    return ImageTrust(sign=sign, verify=verify, strict=strict, signer=signer.describe())


def pin_and_render(root: Path, pinned: str, out_dir: Path, dry_run: bool) -> list[Path]:
    """Pin the manifests to the release image and render the install YAML of each variant.

    A release pins `manifests/` in place (the commit that records it is the
    maintainers' call); a dry run pins a copy, so the checkout stays untouched.
    """
    from pdp_pipeline import manifests

    tree = root
    if dry_run:
        tree = root / DRY_RUN_MANIFESTS_DIR
        if tree.exists():
            shutil.rmtree(tree)
        shutil.copytree(root / "manifests", tree / "manifests")
    manifests.pin_image(tree / manifests.IMAGE_PIN_DIR, manifests.parse_image_ref(pinned))
    written = []
    for variant in ("openshift", "kubernetes"):
        path = out_dir / f"install-{variant}.yaml"
        path.write_text(manifests.render_text(tree / manifests.VARIANTS[variant]), encoding="utf-8")
        written.append(path)
    return written


def default_steps(options: ReleaseOptions, root: Path, log: Log = print) -> Steps:
    """The steps wired to buildx, the registry, the engine, cosign and kustomize."""
    import os

    from pdp_pipeline.images import build
    from pdp_pipeline.images import record as build_record

    throwaway = options.dry_run and options.key is None

    def run_build(**settings: Any) -> build_record.BuildRecord:
        # Runtimes are verified before reuse; a release refuses an untrusted one (it
        # would have to rebuild, and compile nothing), a dry run rebuilds it.
        trust = image_trust(
            build_signer(options, root, os.environ), strict=not options.dry_run, log=log
        )
        build_options = build.BuildOptions(
            trust=trust,
            archs=options.archs,
            registry=options.registry,
            repository=options.repository,
            base_image=options.base_image,
            builder=options.builder,
            push=True,
            verify=True,
            provenance=PROVENANCE,
            release=True,
            **settings,
        )
        return build.run_build(build_options, log=log, root=root)

    def cosign(command: Sequence[str], *, what: str) -> str:
        log(f"release: {what}")
        env = signing.cosign_environment(os.environ, throwaway=throwaway)
        return signing.run_cosign(command, what=what, env=env)

    def create_index(target: str, sources: Sequence[str], log: Log = log) -> str:
        return registry.create_index(target, sources, log=log)

    return Steps(
        build=run_build,
        index_platforms=lambda ref: registry.index_platforms(ref, log=log),
        raw_manifest=lambda ref: registry.raw_manifest(ref, log=log),
        create_index=create_index,
        collect_inventory=sbom.collect_inventory,
        cosign=cosign,
        make_signer=make_signer,
        pin_and_render=lambda pinned, out, dry: pin_and_render(root, pinned, out, dry),
        tag_digest=lambda ref: registry.tag_digest(ref, log=log),
        release_label=lambda ref: registry.image_labels(ref, log=log).get(LABEL_RELEASE),
        promote=lambda source, target: registry.copy_by_digest(source, target, log=log),
        image_labels=lambda ref: registry.image_labels(ref, log=log),
    )
