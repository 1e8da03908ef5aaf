"""(engine) The ubi9 path against the real engine and registry: a wheels image made from
PyPI's binary wheels, a runtime that installs from it by digest, the refusal without
it, trust before reuse, and a build on a second engine named as a buildx builder.

No registry can be pulled here, so the "ubi9" base is a stand-in made of Debian
packages (python3 and pip, no compiler), pushed to the local registry under a
repository of this run; its pin says Python 3.11 (bookworm's). Everything after that
goes through the functions a release calls: `wheels.make_wheels_image`,
`runtime.ensure_runtime_image`, `build.build_arch_image`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdp_pipeline.images import bases, build, buildx, registry, runtime, tags, trust, wheels
from pdp_pipeline.platforms import by_arch
from pdp_pipeline.release import signing, steps

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "127.0.0.1:5000"
AMD64 = by_arch("amd64")
RUN = uuid.uuid4().hex[:8]
REPOSITORY = f"pdp-test-ubi9-{RUN}"
# The stand-in base: Debian's Python and pip, nothing else (no Recommends, so no gcc).
BASE_PACKAGES = ("python3", "python3-pip")
BASE_PYTHON = "3.11"  # bookworm's python3
BASE_TAR = ROOT / ".cache" / "test-base" / f"bookworm-{'-'.join(BASE_PACKAGES)}-amd64.tar"
IMPORTS = "import grpc, google.protobuf; print(grpc.__version__)"
NO_COMPILER = "for c in gcc cc c++ g++ clang; do command -v $c && exit 10; done; echo none"


def _run(argv: Sequence[str], timeout: float = 600.0, **kwargs: Any) -> str:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stdout[-2000:]}{result.stderr}"
    return result.stdout


def _push(ref: str) -> str:
    """docker push (retried: the local registry has answered 500 once), then its digest."""

    def push() -> None:
        result = subprocess.run(["docker", "push", ref], capture_output=True, text=True)
        if result.returncode != 0:
            raise registry.RegistryError(f"push of {ref}: {result.stderr}", image=ref)

    registry.with_retries(push, what=f"push of {ref}", log=lambda _: None)
    digest = registry.manifest_digest(ref, log=lambda _: None)
    # The registry keeps this run's copy; the engine does not need one.
    subprocess.run(["docker", "image", "rm", ref], capture_output=True, check=False)
    return digest


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    host_setup.setup(host_setup.HostPaths(cache=ROOT / ".cache"), log=lambda _: None)
    return LOCAL


@pytest.fixture(scope="module")
def test_base(local_registry: str) -> bases.BasePin:
    """A Debian root file system with Python and pip, as the pinned base of this run."""
    if not BASE_TAR.exists():
        BASE_TAR.parent.mkdir(parents=True, exist_ok=True)
        partial = BASE_TAR.with_suffix(".partial.tar")
        _run(
            [
                "mmdebstrap",
                "--variant=apt",
                "--include=" + ",".join(BASE_PACKAGES),
                "--aptopt=Acquire::Retries 3",
                "bookworm",
                str(partial),
                f"deb {runtime.debian_mirror()} bookworm main",
            ],
            timeout=900,
        )
        partial.rename(BASE_TAR)
    image = f"{local_registry}/{REPOSITORY}-base:bookworm"
    _run(["docker", "import", "--platform", AMD64.platform, str(BASE_TAR), image])
    return bases.BasePin("ubi9", image, _push(image), BASE_PYTHON)


@pytest.fixture(scope="module")
def wheels_image(test_base: bases.BasePin) -> wheels.WheelsImage:
    return wheels.make_wheels_image(test_base, AMD64, LOCAL, REPOSITORY, source="pypi")


@dataclass(frozen=True)
class BuiltRuntime:
    image: runtime.RuntimeImage
    log: tuple[str, ...]

    @property
    def pinned(self) -> str:
        return trust.pinned(self.image.ref, self.image.digest)


@pytest.fixture(scope="module")
def ubi9_runtime(test_base: bases.BasePin, wheels_image: wheels.WheelsImage) -> BuiltRuntime:
    lines: list[str] = []
    image = runtime.ensure_runtime_image(
        "ubi9", AMD64, LOCAL, REPOSITORY, base_pin=test_base, log=lines.append
    )
    return BuiltRuntime(image, tuple(lines))


def _wheel_names(ref: str) -> list[str]:
    """The files under /wheels of a FROM-scratch image (created, never run)."""
    container = _run(["docker", "create", "--platform", AMD64.platform, ref, "/none"]).strip()
    try:
        listing = subprocess.run(
            ["docker", "cp", f"{container}:/wheels", "-"], capture_output=True, check=True
        ).stdout
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=False)
    with tempfile.TemporaryFile() as archive:
        archive.write(listing)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            return sorted(Path(m.name).name for m in tar.getmembers() if m.isfile())


# --- wheels image, runtime from it ----------------------------------------------------


def test_pypi_wheels_image_holds_binary_wheels_for_the_pinned_python_and_machine(
    wheels_image: wheels.WheelsImage,
) -> None:
    names = _wheel_names(wheels_image.pinned)
    assert [n for n in names if n.startswith("grpcio-1.76.0-cp311-cp311-")] != []
    # Wheels only (no source archive to compile), each for x86_64 or for any machine.
    assert all(n.endswith(".whl") for n in names), names
    assert all("x86_64" in n or n.endswith("-none-any.whl") for n in names), names
    assert {n.split("-")[0] for n in names} >= {"grpcio", "protobuf"}


def test_the_wheels_image_is_found_by_its_key_without_a_rebuild(
    test_base: bases.BasePin, wheels_image: wheels.WheelsImage
) -> None:
    found = wheels.find_wheels_image(test_base, AMD64, LOCAL, REPOSITORY, log=lambda _: None)
    assert (found.ref, found.digest, found.built) == (wheels_image.ref, wheels_image.digest, False)


def test_ubi9_runtime_is_built_on_the_pinned_base_from_the_wheels_image_by_digest(
    test_base: bases.BasePin, wheels_image: wheels.WheelsImage, ubi9_runtime: BuiltRuntime
) -> None:
    commands = [line for line in ubi9_runtime.log if "docker buildx build" in line]
    assert len(commands) == 1, ubi9_runtime.log
    assert f"BASE_IMAGE={test_base.ref}" in commands[0]
    assert f"WHEELS_IMAGE={wheels_image.pinned}" in commands[0]
    assert "PYTHON=python3.11" in commands[0]
    assert not ubi9_runtime.image.reused
    assert registry.manifest_digest(ubi9_runtime.image.ref) == ubi9_runtime.image.digest


def test_ubi9_runtime_imports_grpc_and_protobuf_and_has_no_compiler(
    ubi9_runtime: BuiltRuntime,
) -> None:
    script = f'python3 -c "{IMPORTS}" && {NO_COMPILER} && test ! -e /wheels && echo no-wheels'
    out = _run(
        ["docker", "run", "--rm", "--network", "host", ubi9_runtime.pinned, "/bin/sh", "-c", script]
    )
    assert out.split() == ["1.76.0", "none", "no-wheels"]


def test_build_refuses_without_the_wheels_image_naming_it_and_the_command_to_make_it(
    test_base: bases.BasePin,
) -> None:
    # Another repository: no wheels image there. `invoke build` is the release's build.
    empty = f"{REPOSITORY}-nowheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "build",
            "--arch",
            "amd64",
            "--repository",
            empty,
            "--base-image",
            test_base.ref,
            "--no-fallback",
            "--no-verify",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode != 0
    assert "WheelsMissing" in result.stderr
    assert f"{LOCAL}/{empty}-wheels:py3.12-amd64-" in result.stderr
    assert "invoke wheels --arch amd64" in result.stderr
    assert "runtime: [amd64] ubi9 build" not in result.stdout  # refused before any build


def test_release_dry_run_on_ubi9_refuses_without_the_wheels_image_and_names_it(
    test_base: bases.BasePin, tmp_path: Path
) -> None:
    from tests.release.snapshot import invoke_in, snapshot_checkout

    repo = snapshot_checkout(tmp_path / "checkout", tag="v0.1.0")
    empty = f"{REPOSITORY}-release"
    result = invoke_in(
        repo,
        "release",
        "--dry-run",
        "--arch",
        "amd64",
        "--repository",
        empty,
        "--base-image",
        test_base.ref,
        timeout=900,
    )
    assert result.returncode != 0
    assert "release failed: WheelsMissing" in result.stderr, result.stderr[-3000:]
    assert f"{LOCAL}/{empty}-wheels:py3.12-amd64-" in result.stderr
    assert "invoke wheels --arch amd64" in result.stderr


# --- trust: a runtime is reused only when signed by the expected key -------------------


@dataclass(frozen=True)
class Keys:
    ours: signing.Signer
    other: signing.Signer


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    return Keys(
        signing.throwaway_signer(directory / "ours", insecure_registry=True),
        signing.throwaway_signer(directory / "other", insecure_registry=True),
    )


def _small_image(ref: str, text: str) -> str:
    """A one-file image pushed to `ref`; its digest."""
    with tempfile.TemporaryDirectory(prefix="pdp-small-") as scratch:
        (Path(scratch) / "content").write_text(text)
        archive = Path(scratch) / "small.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(Path(scratch) / "content", arcname="content")
        _run(["docker", "import", "--platform", AMD64.platform, str(archive), ref])
    return _push(ref)


class SmallProducer:
    """Stands in for the debian producer (mmdebstrap): pushes a small image, counts calls."""

    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, platform: Any, key: str, ref: str, log: Any) -> None:
        self.built.append(ref)
        _small_image(ref, f"rebuilt {uuid.uuid4()}")


def _runtime_in_registry(
    monkeypatch: pytest.MonkeyPatch, signed_by: signing.Signer | None
) -> tuple[str, str, str]:
    """A runtime of a repository of its own (a small image), signed by `signed_by` or not."""
    monkeypatch.setattr(runtime, "_produce_debian", SmallProducer())
    repository = f"pdp-test-trust-{uuid.uuid4().hex[:8]}"
    first = runtime.ensure_runtime_image("debian", AMD64, LOCAL, repository, log=lambda _: None)
    if signed_by is not None:
        steps.image_trust(signed_by, strict=False).sign(trust.pinned(first.ref, first.digest))
    return repository, first.ref, first.digest


UNTRUSTED = ["unsigned", "signed with another key"]


def _signer(case: str, keys: Keys) -> signing.Signer | None:
    return keys.other if case == "signed with another key" else None


@pytest.mark.parametrize("case", UNTRUSTED)
def test_an_untrusted_runtime_is_rebuilt_and_signed_in_a_dry_run(
    case: str, keys: Keys, local_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, _, old_digest = _runtime_in_registry(monkeypatch, _signer(case, keys))
    producer = SmallProducer()
    monkeypatch.setattr(runtime, "_produce_debian", producer)
    ours = steps.image_trust(keys.ours, strict=False, log=lambda _: None)
    image = runtime.ensure_runtime_image(
        "debian", AMD64, LOCAL, repository, trust=ours, log=lambda _: None
    )
    assert not image.reused and producer.built == [image.ref]
    assert image.digest != old_digest
    assert ours.verify(trust.pinned(image.ref, image.digest))  # signed when rebuilt
    assert not ours.verify(trust.pinned(image.ref, old_digest))


@pytest.mark.parametrize("case", UNTRUSTED)
def test_an_untrusted_runtime_is_refused_by_a_strict_release_and_nothing_is_built(
    case: str, keys: Keys, local_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, ref, old_digest = _runtime_in_registry(monkeypatch, _signer(case, keys))
    producer = SmallProducer()
    monkeypatch.setattr(runtime, "_produce_debian", producer)
    strict = steps.image_trust(keys.ours, strict=True, log=lambda _: None)
    with pytest.raises(trust.UntrustedImage, match="is not signed by") as refused:
        runtime.ensure_runtime_image(
            "debian", AMD64, LOCAL, repository, trust=strict, log=lambda _: None
        )
    assert old_digest in str(refused.value)
    assert producer.built == []
    assert registry.manifest_digest(ref) == old_digest  # left as it was


def test_a_runtime_signed_by_our_key_is_reused_without_a_build(
    keys: Keys, local_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository, _, digest = _runtime_in_registry(monkeypatch, keys.ours)
    producer = SmallProducer()
    monkeypatch.setattr(runtime, "_produce_debian", producer)
    strict = steps.image_trust(keys.ours, strict=True, log=lambda _: None)
    image = runtime.ensure_runtime_image(
        "debian", AMD64, LOCAL, repository, trust=strict, log=lambda _: None
    )
    assert (image.reused, image.digest, producer.built) == (True, digest, [])


# --- a builder that is not this engine: a second dockerd ------------------------------


@dataclass(frozen=True)
class SecondEngine:
    socket: str  # unix:///run/pdp-dockerd2-….sock
    docker_config: Path  # private DOCKER_CONFIG holding the pdp-remote context and builder
    builder: str


def _stop(process: subprocess.Popen[bytes], exec_root: Path) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    # dockerd stops the containerd it started; if it was killed, that one is ours to stop.
    pid_file = exec_root / "containerd" / "containerd.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), 15)


def _unmount_under(*roots: Path) -> None:
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in reversed(points):
        if any(point.startswith(str(root) + "/") for root in roots):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.fixture
def second_engine(local_registry: str) -> Iterator[SecondEngine]:
    """A dockerd of its own (own data/exec root, pid file, socket, config, containerd),
    registered as the `pdp-remote` context in a private DOCKER_CONFIG; stopped and
    removed afterwards, pass or fail. The main engine and its socket are not touched."""
    import shutil

    state = Path(tempfile.mkdtemp(prefix="pdp-d2-"))  # short: containerd's socket lives here
    data_root, exec_root = state / "data", state / "exec"
    config_file, docker_config = state / "daemon.json", state / "docker-config"
    config_file.write_text('{"features": {"containerd-snapshotter": true}}\n')
    docker_config.mkdir()
    socket_path = Path(f"/run/pdp-dockerd2-{RUN}.sock")
    socket = f"unix://{socket_path}"
    log_file = (state / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            "dockerd",
            "--config-file",
            str(config_file),
            "--data-root",
            str(data_root),
            "--exec-root",
            str(exec_root),
            "--pidfile",
            str(state / "dockerd.pid"),
            "-H",
            socket,
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {**os.environ, "DOCKER_CONFIG": str(docker_config)}
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(
            ["docker", "-H", socket, "version"], capture_output=True, check=False
        ).returncode:
            assert process.poll() is None, (state / "dockerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second dockerd did not answer in 120 s"
            time.sleep(1)
        _run(["docker", "context", "create", "pdp-remote", "--docker", f"host={socket}"], env=env)
        # buildx 0.13 builds on a context's daemon (docker driver) only when that context
        # is the current one: current in this private config, never in the user's.
        _run(["docker", "context", "use", "pdp-remote"], env=env)
        yield SecondEngine(socket, docker_config, "pdp-remote")
    finally:
        _stop(process, exec_root)
        log_file.close()
        _unmount_under(data_root, exec_root)
        shutil.rmtree(state, ignore_errors=True)
        socket_path.unlink(missing_ok=True)


def _build_cache_records(socket: str) -> int:
    out = _run(["docker", "-H", socket, "builder", "du", "--verbose"])
    return sum(1 for line in out.splitlines() if line.startswith("ID:"))


def test_plugin_image_builds_on_a_named_remote_builder_without_host_network_and_pushes(
    ubi9_runtime: BuiltRuntime,
    second_engine: SecondEngine,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    user_context = _run(["docker", "context", "show"]).strip()
    monkeypatch.setenv("DOCKER_CONFIG", str(second_engine.docker_config))
    commands: list[list[str]] = []
    real_build_then_push = buildx.build_then_push

    def recording(argv: Sequence[str], *args: Any, **kwargs: Any) -> None:
        commands.append(list(argv))
        real_build_then_push(argv, *args, **kwargs)

    monkeypatch.setattr(buildx, "build_then_push", recording)
    assert _build_cache_records(second_engine.socket) == 0
    options = build.BuildOptions(
        archs=(AMD64,),
        registry=LOCAL,
        repository=REPOSITORY,
        tag=f"remote-{RUN}",
        builder=second_engine.builder,
        verify=False,
    )
    identity = tags.resolve_identity(ROOT, options.tag)
    context = build.stage_build_context(ROOT, identity, tmp_path, log=lambda _: None)
    labels = tags.oci_labels(
        identity,
        created=tags.rfc3339(identity.commit_time),
        base="ubi9",
        base_name=ubi9_runtime.image.base_name,
        fell_back=False,
        runtime_ref=build.runtime_pin(ubi9_runtime.image),
    )
    result = build.build_arch_image(
        options, identity.tag, AMD64, ubi9_runtime.image, labels, context, log=lambda _: None
    )
    (argv,) = commands
    assert argv[argv.index("--builder") + 1] == "pdp-remote"
    assert "--network" not in argv
    assert registry.manifest_digest(result.image_ref) == result.digest
    assert _build_cache_records(second_engine.socket) > 0  # the build ran on that daemon
    monkeypatch.delenv("DOCKER_CONFIG")
    assert _run(["docker", "context", "show"]).strip() == user_context
    pushed = f"{result.image_ref}@{result.digest}"
    probe = "import power_device_plugin, grpc; print('ok')"
    run = ["docker", "run", "--rm", "--network", "host", "--entrypoint", "python3"]
    out = _run([*run, pushed, "-c", probe])
    assert out.split() == ["ok"]
