"""Project tasks: `invoke --list` is the menu, `invoke --help TASK` the manual.

Tasks only parse flags and call into tested modules (`src/pdp_pipeline`,
`src/power_device_plugin`); no logic lives here.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from invoke import Context, task

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))

from pdp_pipeline.platforms import PLATFORMS, native  # noqa: E402  (after the path)

# The help texts name the platforms of the one list (src/pdp_pipeline/platforms.py).
ARCHS = ", ".join(p.arch for p in PLATFORMS)
NATIVE = native().arch

# --- plugin tasks (protos) ---------------------------------------------------


@task
def protos(c: Context) -> None:
    """Regenerate src/power_device_plugin/api/ from protos/ with grpcio-tools 1.51.

    protoc runs from its own venv under .cache/protoc-venv (created once):
    grpcio-tools 1.51 pins protobuf<5, which the project venv does not have.
    """
    from pdp_pipeline import protos as generator

    try:
        for path in generator.generate(ROOT, ROOT / "src"):
            print(path.relative_to(ROOT))
    except generator.ProtocError as error:
        raise SystemExit(f"protos: {error}") from None


# --- host tasks (setup) ------------------------------------------------------


@task(
    help={
        "runner": "github: a GitHub-hosted runner (systemd docker-ce, sudo, Ubuntu packages);"
        " default: detected from GITHUB_ACTIONS",
        "registry_data": "directory the local registry keeps its data in (default .cache/registry)",
        "tools_only": "only the tools (skopeo, cosign, …): no engine change, QEMU or registry",
    }
)
def setup(c: Context, runner: str = "", registry_data: str = "", tools_only: bool = False) -> None:
    """Make this host able to build: Docker engine + buildx, QEMU, registry on 127.0.0.1:5000.

    Idempotent: a ready host is only checked. Installs (Debian, root; a GitHub runner
    through sudo) or names the command for each missing piece. Logs and registry data:
    .cache/. See docs/host.md.
    """
    from pdp_pipeline.host import probe as host
    from pdp_pipeline.host import setup as host_setup

    try:
        paths = host_setup.HostPaths(
            cache=ROOT / ".cache",
            registry_storage=Path(registry_data).resolve() if registry_data else None,
        )
        host_setup.setup(
            paths, runner=host.detect_runner(runner, os.environ), tools_only=tools_only
        )
    except host.HostError as error:
        raise SystemExit(f"setup: {error}") from None


# --- image tasks (build, verify) ---------------------------------------------


@task(
    help={
        "arch": f"all (default), one of {ARCHS}, or a comma list of them",
        "registry": "registry to push to (default: the local one, 127.0.0.1:5000)",
        "repository": "image repository name (default power-dev-plugin)",
        "tag": "image tag (default: git describe --tags --match 'v*' --always --dirty)",
        "base": "ubi9 (default; falls back to debian, loudly, if ubi9 cannot be pulled) or debian",
        "base_image": "a mirror of the ubi9 base (default: the pin in containers/base-images.json)",
        "builder": "buildx builder, e.g. one with native nodes instead of QEMU",
        "push": "push images and index (default); --no-push: local engine only, no index/verify",
        "verify": "run the testinfra suite on the pushed images (default); --no-verify skips it",
        "fallback": "fall back to debian when ubi9 is out of reach (default); --no-fallback fails",
        "build_key_dir": "where this host's build key lives (PDP_BUILD_KEY_DIR; default"
        " $XDG_DATA_HOME or ~/.local/share/power-device-plugin/build-key); it signs runtimes",
        "key": "sign/verify runtimes and wheels with this cosign key instead (COSIGN_PASSWORD)",
        "keyless": "sign/verify keyless (a release workflow's OIDC identity) instead",
        "identity": "with --keyless: regexp of the accepted signer (default: this repository's"
        " wheels.yml on main and release.yml on vX.Y.Z tags, from GITHUB_REPOSITORY)",
    }
)
def build(
    c: Context,
    arch: str = "all",
    registry: str = "127.0.0.1:5000",
    repository: str = "power-dev-plugin",
    tag: str = "",
    base: str = "ubi9",
    base_image: str = "",
    builder: str = "",
    push: bool = True,
    verify: bool = True,
    fallback: bool = True,
    build_key_dir: str = "",
    key: str = "",
    keyless: bool = False,
    identity: str = "",
) -> None:
    """Build the plugin image per architecture, push them and one index, verify each image.

    Ends with a table of architecture, digest, size, runtime (reused/built) and
    verification; the record is in .cache/build/last-build.json. See docs/pipeline.md.
    """
    from pdp_pipeline import platforms
    from pdp_pipeline.images import build as building
    from pdp_pipeline.images import record as build_record
    from pdp_pipeline.images import summary
    from pdp_pipeline.images.registry import is_loopback_registry
    from pdp_pipeline.release import build_key, signing, steps

    trust = None
    if push and (is_loopback_registry(registry) or key or keyless):
        if is_loopback_registry(registry):
            setup(c)
        # Runtimes built here are signed with this host's build key (per machine, not per
        # clone) and verified before reuse, by later builds and by the release dry run alike.
        try:
            signer = build_key.image_signer(
                registry,
                os.environ,
                key=Path(key).resolve() if key else None,
                keyless=keyless,
                identity=identity or None,
                key_directory=build_key.key_dir(os.environ, build_key_dir or None),
            )
        except signing.SigningError as error:
            raise SystemExit(f"build: {error}") from None
        trust = steps.image_trust(signer, strict=False)
    try:
        options = building.BuildOptions(
            archs=platforms.select(arch),
            registry=registry,
            repository=repository,
            tag=tag or None,
            base=base,
            base_image=base_image or None,
            builder=builder or None,
            push=push,
            verify=verify,
            allow_fallback=fallback,
            trust=trust,
        )
    except (ValueError, build_record.BuildError) as error:
        raise SystemExit(f"build: {error}") from None
    if not push and is_loopback_registry(registry):
        setup(c)
    try:
        record = building.run_build(options, root=ROOT)
    except building.FAILURES as failure:
        raise SystemExit(f"build failed: {type(failure).__name__}: {failure}") from None
    print(summary.table(record), flush=True)
    failed = [r.platform.arch for r in record.archs if r.verified is False]
    if failed:
        raise SystemExit(f"build: verification FAILED for {', '.join(failed)}")


@task(
    help={
        "arch": "architectures of the build record to verify: all (default), or a comma list",
        "record": "build record to verify (default .cache/build/last-build.json)",
    }
)
def verify(c: Context, arch: str = "all", record: str = "") -> None:
    """Run the testinfra suite (tests/image) against images already pushed by `build`."""
    from pdp_pipeline.images import build as building
    from pdp_pipeline.images import record as build_record
    from pdp_pipeline.images import summary
    from pdp_pipeline.images import verify as verifying
    from pdp_pipeline.images.registry import is_loopback_registry

    path = Path(record).resolve() if record else build_record.record_path(ROOT)
    try:
        built = build_record.load_record(path)
        archs = build_record.archs_to_verify(built, arch)
    except (ValueError, build_record.BuildError) as error:
        raise SystemExit(f"verify: {error}") from None
    if is_loopback_registry(built.registry):
        setup(c)
    try:
        verified = verifying.verify_and_record(path, archs)
    except building.FAILURES as failure:
        raise SystemExit(f"verify failed: {type(failure).__name__}: {failure}") from None
    print(summary.table(verified), flush=True)
    failed = [r.platform.arch for r in verified.archs if r.platform.arch in archs]
    failed = [a for a in failed if not verified.result_for(a).verified]
    if failed:
        raise SystemExit(f"verify: FAILED for {', '.join(failed)}")


@task(
    help={
        "arch": f"architectures whose plugin image runs on the node: {NATIVE} (default: this"
        f" host's), all, or a comma list of {ARCHS}",
        "record": "build record to take the images from (default .cache/build/last-build.json)",
        "manifests": "kustomization whose DaemonSet is run (default: manifests)",
    }
)
def e2e(c: Context, arch: str = NATIVE, record: str = "", manifests: str = "manifests") -> None:
    """Node end-to-end: the plugin image, run as the DaemonSet says, grants loop devices.

    Needs root. Brings the host up (`setup`) and builds the image (debian base)
    when the build record lacks it; see docs/e2e.md.
    """
    from pdp_pipeline import platforms

    try:
        selected = platforms.select(arch)
    except platforms.UnknownArchError as error:
        raise SystemExit(f"e2e: {error}") from None
    setup(c)
    env = {"PDP_E2E_ARCHS": ",".join(p.arch for p in selected), "PDP_E2E_MANIFESTS": manifests}
    if record:
        env["PDP_BUILD_RECORD"] = str(Path(record).resolve())
    c.run(shlex.join([sys.executable, "-m", "pytest", "-v", "tests/e2e"]), env=env, pty=False)


@task(
    help={
        "arch": f"architecture to make the wheels image for: one of {ARCHS}",
        "compile": "compile on the pinned base (the wheels workflow); default: PyPI binary wheels",
        "registry": "registry to push to (default: the local one, 127.0.0.1:5000)",
        "repository": "image repository name (default power-dev-plugin; -wheels is added)",
        "builder": "buildx builder, e.g. a native node of that architecture instead of QEMU",
        "key": "cosign private key that signs it (COSIGN_PASSWORD); default: this host's"
        " build key, the signer `invoke build` verifies",
        "keyless": "sign keyless with the workflow's OIDC identity (the wheels workflow on main)",
        "identity": "with --keyless: regexp of the identity an existing image must be signed by"
        " (default: this repository's wheels.yml on main / release.yml on vX.Y.Z tags)",
        "build_key_dir": "where this host's build key lives (PDP_BUILD_KEY_DIR; default"
        " $XDG_DATA_HOME or ~/.local/share/power-device-plugin/build-key)",
        "compile_cache": "--compile: this ARCH's directory of compiled objects kept between"
        " attempts and runs (default $PDP_COMPILE_CACHE/ARCH or .cache/compile-cache/ARCH)",
        "attempts": "--compile: attempts, each resuming from the objects the last one kept",
        "attempt_timeout": "--compile: seconds one attempt may run (0: no limit), so a job"
        " stops, keeps its objects and can be resumed before the runner's limit",
        "base_image": "a mirror of the pinned ubi9 base, image@digest (as `build --base-image`)",
    }
)
def wheels(
    c: Context,
    arch: str,
    compile: bool = False,
    registry: str = "127.0.0.1:5000",
    repository: str = "power-dev-plugin",
    builder: str = "",
    key: str = "",
    keyless: bool = False,
    identity: str = "",
    build_key_dir: str = "",
    compile_cache: str = "",
    attempts: int = 1,
    attempt_timeout: int = 0,
    base_image: str = "",
) -> None:
    """Make (or reuse) the signed wheels image the ubi9 runtime of ARCH installs from.

    One per (containers/runtime-requirements.txt, the base's Python, ARCH, base digest);
    a release never compiles and refuses when it is missing. See docs/release.md.
    """
    from pdp_pipeline import platforms
    from pdp_pipeline.images import bases, runtime, trust
    from pdp_pipeline.images import wheels as making
    from pdp_pipeline.release import build_key, signing, steps

    try:
        # The key holds the base digest: a build from a mirror needs wheels made for it.
        pin = (
            runtime.ubi9_pin(base_image)
            if base_image
            else bases.require_real_digest(bases.load_pin("ubi9"))
        )
        (platform,) = platforms.select(arch)
        # The same rule as `build`: this host's build key unless a release identity is given.
        signer = build_key.image_signer(
            registry,
            os.environ,
            key=Path(key).resolve() if key else None,
            keyless=keyless,
            identity=identity or None,
            key_directory=build_key.key_dir(os.environ, build_key_dir or None),
        )
        image = making.make_wheels_image(
            pin,
            platform,
            registry,
            repository,
            source="compile" if compile else "pypi",
            builder=builder or None,
            trust=steps.image_trust(signer, strict=False),
            compile_cache=Path(compile_cache).resolve() if compile_cache else None,
            attempts=attempts,
            attempt_timeout=attempt_timeout or None,
        )
    except (
        ValueError,
        bases.BasePinError,
        platforms.UnknownArchError,
        making.WheelsBuildError,
        trust.UntrustedImage,
        signing.SigningError,
        runtime.BaseUnavailable,
    ) as error:
        raise SystemExit(f"wheels: {error}") from None
    print(f"wheels: {image.ref}@{image.digest} ({'built' if image.built else 'reused'})")


@task
def base_pin(c: Context) -> None:
    """Refresh the ubi9 digest in containers/base-images.json from its registry (needs access)."""
    from pdp_pipeline.images import bases

    try:
        bases.refresh_pin("ubi9")
    except bases.BasePinError as error:
        raise SystemExit(f"base-pin: {error}") from None


@task(help={"check": "only say which files are stale (exit 1 if any); write nothing"})
def platform_files(c: Context, check: bool = False) -> None:
    """Rewrite the blocks of docs and manifests that spell out src/pdp_pipeline/platforms.py."""
    from pdp_pipeline import platform_files as writing

    try:
        stale = writing.sync(ROOT, check=check)
    except writing.PlatformFilesError as error:
        raise SystemExit(f"platform-files: {error}") from None
    for name in stale:
        print(f"platform-files: {'stale' if check else 'wrote'} {name}")
    if check and stale:
        raise SystemExit("platform-files: run `invoke platform-files` and commit the result")
    if not stale:
        print("platform-files: every block follows the platform list")


@task(
    help={
        "arch": "all (default), native, one name or a comma list (as `build --arch`)",
        "output": "also append `NAME=<json>` to this file ($GITHUB_OUTPUT in a workflow)",
        "name": "the output's name (default matrix)",
    }
)
def platform_matrix(c: Context, arch: str = "all", output: str = "", name: str = "matrix") -> None:
    """Print the wheels workflow's matrix from src/pdp_pipeline/platforms.py, as JSON.

    Each leg: arch, compile (no PyPI grpcio wheels), timeout (minutes), attempt_timeout
    (seconds). The workflows take it with `fromJSON`, so they name no architecture.
    """
    from pdp_pipeline import platforms

    try:
        text = platforms.workflow_matrix_json(arch)
    except platforms.UnknownArchError as error:
        raise SystemExit(f"platform-matrix: {error}") from None
    print(text)
    if output:
        with open(output, "a", encoding="utf-8") as stream:
            stream.write(f"{name}={text}\n")


# --- manifest tasks ----------------------------------------------------------


@task(
    help={
        "variant": "openshift (default), kubernetes, examples-openshift or examples-kubernetes",
        "out": "write the YAML to this file instead of printing it",
    }
)
def manifests_render(c: Context, variant: str = "openshift", out: str = "") -> None:
    """Print the install YAML of one variant (`kustomize build`)."""
    from pdp_pipeline import manifests

    if variant not in manifests.VARIANTS:
        choices = ", ".join(manifests.VARIANTS)
        raise SystemExit(f"manifests-render: --variant {variant!r}: choose one of {choices}")
    try:
        text = manifests.render_text(ROOT / manifests.VARIANTS[variant])
    except manifests.ManifestError as error:
        raise SystemExit(f"manifests-render: {error}") from None
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    else:
        print(text, end="")


@task(
    help={
        "kubernetes": "Kubernetes versions to validate against, comma list "
        "(default: the oldest and the newest supported)"
    }
)
def manifests_validate(c: Context, kubernetes: str = "") -> None:
    """Render every variant and validate each object against the Kubernetes/OpenShift schemas."""
    from pdp_pipeline import manifests

    versions = [v for v in kubernetes.split(",") if v] or [
        manifests.OLDEST_KUBERNETES,
        manifests.newest_kubernetes(),
    ]
    schemas = ROOT / manifests.OPENSHIFT_SCHEMA_DIR
    failed = 0
    try:
        for variant, directory in manifests.VARIANTS.items():
            objects = manifests.render(ROOT / directory)
            for version in versions:
                for verdict in manifests.validate_objects(objects, version, schemas):
                    print(f"{variant:20} {verdict}")
                    failed += not verdict.ok
    except manifests.ManifestError as error:
        raise SystemExit(f"manifests-validate: {error}") from None
    if failed:
        raise SystemExit(f"manifests-validate: {failed} object(s) failed validation")


@task(
    help={
        "image": "REGISTRY/power-dev-plugin:TAG@sha256:DIGEST to run",
        "last_build": "pin the index the last `invoke build` pushed (.cache/build/last-build.json)",
    }
)
def manifests_pin(c: Context, image: str = "", last_build: bool = False) -> None:
    """Point both install variants at one plugin image (manifests/base/kustomization.yaml)."""
    from pdp_pipeline import manifests
    from pdp_pipeline.images import record as build_record

    if bool(image) == last_build:
        raise SystemExit("manifests-pin: give exactly one of --image REF or --last-build")
    try:
        ref = (
            manifests.ref_from_build_record(build_record.record_path(ROOT))
            if last_build
            else manifests.parse_image_ref(image)
        )
        previous = manifests.pin_image(ROOT / manifests.IMAGE_PIN_DIR, ref)
    except manifests.ManifestError as error:
        raise SystemExit(f"manifests-pin: {error}") from None
    print(f"manifests pinned: {previous} -> {ref}")


# --- release tasks -----------------------------------------------------------


@task(
    help={
        "dry_run": "everything against the local registry, throwaway key, artifacts marked dry run",
        "registry": "registry to release to (default: the local one, 127.0.0.1:5000)",
        "repository": "image repository name (default power-dev-plugin)",
        "arch": "architectures: all (default); a dry run or a release to this host's"
        " registry may take fewer (native, or a comma list)",
        "base": "dry run only: ubi9 (default; falls back to debian here) or debian",
        "base_image": "a mirror of the ubi9 base image: dry run or a release to this host's"
        " registry only",
        "builder": "buildx builder, e.g. one with native nodes of foreign architectures",
        "key": "cosign private key file (COSIGN_PASSWORD in the environment); default keyless",
        "identity": "keyless: regexp of the signer identity to verify (the workflow URL)",
        "out": "directory for the summary, SBOMs and install YAML (default out/release)",
        "candidates": "repository the candidate is built and verified in before it is copied"
        " into --repository by digest (default: REPOSITORY-candidates)",
    }
)
def release(
    c: Context,
    dry_run: bool = False,
    registry: str = "127.0.0.1:5000",
    repository: str = "power-dev-plugin",
    arch: str = "all",
    base: str = "",
    base_image: str = "",
    builder: str = "",
    key: str = "",
    identity: str = "",
    out: str = "out/release",
    candidates: str = "",
) -> None:
    """Build, verify, attest, sign and tag the release of the v*.*.* tag on HEAD."""
    from pdp_pipeline import platforms
    from pdp_pipeline.images.registry import is_loopback_registry
    from pdp_pipeline.release import options as release_options
    from pdp_pipeline.release import run as releasing
    from pdp_pipeline.release import steps as release_steps
    from pdp_pipeline.release import summary as release_summary
    from pdp_pipeline.release import version as release_version

    try:
        options = release_options.ReleaseOptions(
            dry_run=dry_run,
            registry=registry,
            repository=repository,
            archs=platforms.select(arch),
            base=base or None,
            base_image=base_image or None,
            builder=builder or None,
            key=Path(key).resolve() if key else None,
            certificate_identity_regexp=identity or None,
            out_dir=Path(out),
            candidates=candidates or None,
        )
        release_options.check_options(options)
        release_version.release_version(release_version.read_git_state(ROOT))
    except (release_version.ReleaseRefused, platforms.UnknownArchError) as refusal:
        raise SystemExit(f"release refused: {refusal}") from None
    if is_loopback_registry(registry):
        setup(c)
    try:
        record = releasing.run_release(options, ROOT, release_steps.default_steps(options, ROOT))
    except release_version.ReleaseRefused as refusal:
        raise SystemExit(f"release refused: {refusal}") from None
    except Exception as failure:  # every failure ends the same way: say what and stop
        raise SystemExit(f"release failed: {type(failure).__name__}: {failure}") from None
    print("\n".join(release_summary.summary_table(record)), flush=True)


# --- rehearsal task ----------------------------------------------------------


@task(
    help={
        "jobs": "all (default) or a comma list of: wheels-native (this host's platform), ci-ubi9,"
        " ci-ubi9-again, ci-debian, release",
    }
)
def rehearse(c: Context, jobs: str = "all") -> None:
    """Run the real workflow files with act on this host, each job on a runner of its own.

    Stand-in actions (tests/rehearsal/actions), a runner-shaped dockerd on the classic
    store in the job's own network and mount namespaces, no cosign until a step installs
    it. Needs root and `invoke setup`. Logs: .cache/rehearsal/logs. See docs/rehearsal.md.
    """
    import time

    from pdp_pipeline.rehearsal import plan
    from pdp_pipeline.rehearsal import run as rehearsal

    started = time.monotonic()
    try:
        selected = plan.select_jobs(jobs)
        setup(c)
        outcomes = rehearsal.rehearse(ROOT, selected)
    except plan.RehearsalError as error:
        raise SystemExit(f"rehearse: {error}") from None
    for outcome in outcomes:
        verdict = "passed" if outcome.status == 0 else "FAILED"
        print(f"rehearse: {outcome.job:14} {verdict:7} {outcome.seconds:6.0f} s  {outcome.log}")
    print(f"rehearse: {len(outcomes)} job(s) in {time.monotonic() - started:.0f} s", flush=True)
    failed = [o.job for o in outcomes if o.status != 0]
    if failed:
        raise SystemExit(f"rehearse: FAILED: {', '.join(failed)}")


# --- quality tasks (lint, test) ----------------------------------------------


@task
def lint(c: Context) -> None:
    """ruff, mypy --strict on src/, zizmor and the workflow schema on .github/ (offline),
    hadolint on containers/."""
    from pdp_pipeline import testrun

    for name, command in testrun.LINT_COMMANDS:
        print(f"lint: {name}", flush=True)
        c.run(shlex.join(command))
    workflows = sorted(str(p.relative_to(ROOT)) for p in (ROOT / ".github/workflows").glob("*.yml"))
    print("lint: zizmor --persona auditor", flush=True)
    c.run(shlex.join(["zizmor", "--offline", "--persona", "auditor", *workflows]))
    print("lint: workflow schema", flush=True)
    c.run(
        shlex.join(["check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows])
    )
    files = " ".join(str(p.relative_to(ROOT)) for p in testrun.containerfiles(ROOT))
    print("lint: hadolint", flush=True)
    c.run(f"hadolint {files}")


@task(
    help={
        "fast": "only the tests that need no engine (no setup, no image build)",
        "arch": "architectures built for the image tests: all, or a comma list",
    }
)
def test(c: Context, fast: bool = False, arch: str = "all") -> None:
    """Lint, then every test: unit and integration first, then images, e2e, release,
    then the rehearsal of the workflow files (`rehearse`).

    Sets the host up (engine, QEMU, registry) and builds the images the engine
    tests run against, so it works on a fresh machine with nothing prepared.
    """
    from pdp_pipeline import platforms, testrun

    try:
        platforms.select(arch)
    except platforms.UnknownArchError as error:
        raise SystemExit(f"test: {error}") from None
    reports = ROOT / ".cache" / "test-reports"
    reports.mkdir(parents=True, exist_ok=True)
    first = reports / "no-engine.xml"
    second = reports / "engine.xml"
    for stale in (first, second):
        stale.unlink(missing_ok=True)

    if not fast:
        setup(c)
    lint(c)
    results = c.run(
        shlex.join(testrun.pytest_command(f"not {testrun.ENGINE_MARK}", first)), warn=True
    )
    counts = testrun.counts_from_junit(first)
    ok = results is not None and results.ok
    if not fast and ok:
        build(c, arch=arch, base="debian", verify=False)
        # The node suite runs the plugin image of every architecture just built.
        e2e_archs = ",".join(p.arch for p in platforms.select(arch))
        results = c.run(
            shlex.join(testrun.pytest_command(testrun.ENGINE_MARK, second)),
            env={"PDP_E2E_ARCHS": e2e_archs},
            warn=True,
        )
        counts = counts + testrun.counts_from_junit(second)
        ok = results is not None and results.ok
    if not fast and ok:
        # The workflow files, run with act on runner-shaped namespaces (docs/rehearsal.md).
        from pdp_pipeline.rehearsal import plan as rehearsal_plan

        try:
            rehearse(c, jobs=rehearsal_plan.TEST_JOBS)
        except SystemExit as failure:
            print(failure, flush=True)
            ok = False
    print(counts.closing_line(), flush=True)
    if not ok:
        raise SystemExit(1)


@task(
    help={
        "module": "comma list of modules (config, devices, discovery, cdi, host_use) or 'all';"
        " default config,devices,discovery",
        "jobs": "mutants tested at once (mutmut --max-children)",
        "strict": "exit non-zero when a module scores under the goal (95 %)",
        "report_only": "score the results of the last run again, without running mutmut",
    }
)
def mutation(
    c: Context, module: str = "", jobs: int = 2, strict: bool = False, report_only: bool = False
) -> None:
    """Mutation testing of the device logic with mutmut (slow; not part of `invoke test`)."""
    from pdp_pipeline import mutation as mutation_testing

    def run(command: list[str]) -> int:
        with c.cd(str(ROOT)):
            result = c.run(shlex.join(command), warn=True)
        return result.exited if result is not None else 1

    status = mutation_testing.main(
        ROOT, module, run, max_children=jobs, strict=strict, report_only=report_only
    )
    if status:
        raise SystemExit(status)
