"""Runtime images: content keys, base choice, reuse; (engine) real debian runtimes."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from pdp_pipeline.images import runtime
from pdp_pipeline.images.runtime import BaseUnavailable
from pdp_pipeline.platforms import by_arch

ROOT = Path(__file__).resolve().parents[2]
KEY_INPUTS: dict[str, Any] = {
    "base": "debian",
    "arch": "s390x",
    "base_identity": "debian:bookworm",
    "definition": "mmdebstrap --variant=apt",
    "dependencies": ("python3", "python3-grpcio"),
}

# --- keys --------------------------------------------------------------------------


def test_same_inputs_give_the_same_key() -> None:
    assert runtime.content_key(**KEY_INPUTS) == runtime.content_key(**dict(KEY_INPUTS))


@pytest.mark.parametrize(
    ("field", "changed"),
    [
        ("base", "ubi9"),
        ("arch", "ppc64le"),
        ("base_identity", "registry.access.redhat.com/ubi9/ubi@sha256:0123"),
        ("definition", "mmdebstrap --variant=minbase"),
        ("dependencies", ("python3", "python3-grpcio", "python3-protobuf")),
    ],
)
def test_changing_any_input_changes_the_key(field: str, changed: Any) -> None:
    assert runtime.content_key(**{**KEY_INPUTS, field: changed}) != runtime.content_key(
        **KEY_INPUTS
    )


def test_runtime_ref_carries_base_arch_and_twelve_key_characters() -> None:
    key = "0123456789abcdef" * 4
    assert (
        runtime.runtime_ref("127.0.0.1:5000", "power-dev-plugin", "debian", "s390x", key)
        == "127.0.0.1:5000/power-dev-plugin-runtime:debian-s390x-0123456789ab"
    )


def test_debian_definition_differs_per_architecture_but_not_per_mirror() -> None:
    s390x, ppc64le = by_arch("s390x"), by_arch("ppc64le")
    assert runtime.debian_definition(s390x) != runtime.debian_definition(ppc64le)
    assert "MIRROR" in runtime.debian_definition(s390x)  # a placeholder, not this host's mirror


def test_ubi9_definition_follows_the_containerfile_and_the_requirements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    containerfile = tmp_path / "runtime-ubi9.Containerfile"
    requirements = tmp_path / "runtime-requirements.txt"
    containerfile.write_text("FROM base\n")
    requirements.write_text("grpcio==1.0\n")
    monkeypatch.setattr(runtime, "UBI9_CONTAINERFILE", containerfile)
    monkeypatch.setattr(runtime, "UBI9_REQUIREMENTS", requirements)
    first = runtime.ubi9_definition()
    containerfile.write_text("FROM base\nRUN true\n")
    second = runtime.ubi9_definition()
    requirements.write_text("grpcio==2.0\n")
    third = runtime.ubi9_definition()
    assert len({first, second, third}) == 3


# --- the debian producer ---------------------------------------------------------------


def test_mmdebstrap_builds_the_debian_arch_with_the_python_packages() -> None:
    argv = runtime.mmdebstrap_command(by_arch("ppc64le"), "http://mirror.example/debian", Path("o"))
    assert argv[0] == "mmdebstrap"
    assert "--arch=ppc64el" in argv
    assert "--include=python3,python3-grpcio,python3-protobuf" in argv
    assert argv[-3:] == ["bookworm", "o", "deb http://mirror.example/debian bookworm main"]


def test_mmdebstrap_removes_package_manager_caches() -> None:
    argv = runtime.mmdebstrap_command(by_arch("amd64"), "http://m/debian", Path("o"))
    (hook,) = [a for a in argv if a.startswith("--customize-hook=")]
    for cache in ("var/lib/apt/lists/*", "var/cache/apt/*"):
        assert f'"$1"/{cache}' in hook


def test_imported_image_gets_a_path_and_its_key_as_a_label() -> None:
    changes = runtime.import_changes("debian", "k" * 64)
    assert any(c.startswith("ENV PATH=") and "/usr/bin" in c for c in changes)
    assert f"LABEL io.power-dev-plugin.runtime.key={'k' * 64}" in changes


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them (inotify_simple is inotify-simple)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def context_requirements() -> tuple[str, ...]:
    text = (ROOT / "containers" / "context-requirements.txt").read_text().replace("\\\n", " ")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(line.split()[0] for line in lines if line)


def test_the_runtime_and_the_context_together_cover_the_project_dependencies() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.S | re.M)
    assert block is not None
    wanted = {normalized(re.split(r"[<>=!~ ]", d)[0]) for d in re.findall(r'"([^"]+)"', block[1])}
    in_runtime = {normalized(r.split("==")[0]) for r in runtime.ubi9_requirements()}
    in_context = {normalized(r.split("==")[0]) for r in context_requirements()}
    # Compiled dependencies come with the runtime, pure-Python ones with the context; each once.
    assert wanted <= in_runtime | in_context
    # Anything more is a dependency of those (the hash lock pins it too: `# via grpcio`).
    text = runtime.UBI9_REQUIREMENTS.read_text()
    for extra in (in_runtime | in_context) - wanted:
        assert re.search(rf"(?im)^{extra}==.*\n(?:\s+--hash.*\n)*\s+# via (grpcio|protobuf)", text)
    assert not in_runtime & in_context
    assert all("==" in r for r in runtime.ubi9_requirements()), "pins keep the key honest"
    assert all("==" in r for r in context_requirements()), "pins keep the image honest"


# --- choosing the base ----------------------------------------------------------------


def unreachable(pin: Any, log: Any = print) -> None:
    raise BaseUnavailable(f"base image {pin.ref} cannot be reached: no such host")


def test_debian_is_used_without_resolving_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "check_reachable", unreachable)
    assert runtime.choose_base("debian", None, allow_fallback=False, log=print) == ("debian", False)


def test_unreachable_ubi9_falls_back_to_debian_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "check_reachable", unreachable)
    lines: list[str] = []
    assert runtime.choose_base("ubi9", None, allow_fallback=True, log=lines.append) == (
        "debian",
        True,
    )
    text = "\n".join(lines)
    assert "WARNING: FALLING BACK TO THE DEBIAN BASE" in text
    assert "no such host" in text  # says why


def test_unreachable_ubi9_without_fallback_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "check_reachable", unreachable)
    with pytest.raises(BaseUnavailable, match="cannot be reached"):
        runtime.choose_base("ubi9", None, allow_fallback=False, log=print)


def test_reachable_ubi9_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "check_reachable", lambda pin, log=print: None)
    assert runtime.choose_base("ubi9", None, allow_fallback=True, log=print) == ("ubi9", False)


def test_unknown_base_is_refused_with_the_known_ones() -> None:
    with pytest.raises(BaseUnavailable, match="choose one of ubi9, debian"):
        runtime.choose_base("alpine", None, allow_fallback=True, log=print)


def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """A `docker` first on PATH that runs `script` (sh) instead of the real CLI."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\n" + script + "\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_unreachable_ubi9_message_says_what_why_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_docker(
        tmp_path, monkeypatch, 'echo "ERROR: lookup mirror.example: no such host" >&2; exit 1'
    )
    with pytest.raises(BaseUnavailable) as caught:
        runtime.resolve_digest("mirror.example/ubi9/ubi:9.7", log=print)
    message = str(caught.value)
    assert "mirror.example/ubi9/ubi:9.7 cannot be resolved" in message
    assert "no such host" in message
    assert "--base-image" in message and "--base debian" in message


def test_a_registry_that_never_answers_is_given_up_on_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_docker(tmp_path, monkeypatch, "exec sleep 30")
    monkeypatch.setattr(runtime, "RESOLVE_TIMEOUT", 0.5)
    with pytest.raises(BaseUnavailable, match=r"no answer within 0\.5 s"):
        runtime.check_reachable(runtime.ubi9_pin(), log=print)


def test_a_mirror_is_pinned_by_the_digest_its_registry_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_docker(tmp_path, monkeypatch, """echo '{"digest": "sha256:feed"}'""")
    pin = runtime.ubi9_pin("mirror.example/ubi:9.7")
    assert pin.ref == "mirror.example/ubi:9.7@sha256:feed"
    assert pin.python == "3.12"


# --- reuse -------------------------------------------------------------------------------


class FakeRegistry:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing

    def tag_exists(self, ref: str, log: Any = print, *, absent_if_denied: bool = False) -> bool:
        return ref in self.existing

    def manifest_digest(self, ref: str, log: Any = print) -> str:
        assert ref in self.existing, f"digest asked for {ref}, which was never pushed"
        return "sha256:" + str(abs(hash(ref)))


def test_existing_key_is_reused_and_nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    platform = by_arch("s390x")
    key = runtime.content_key(
        "debian",
        "s390x",
        "debian:bookworm",
        runtime.debian_definition(platform),
        runtime.DEBIAN_PACKAGES,
    )
    ref = runtime.runtime_ref("reg", "repo", "debian", "s390x", key)
    monkeypatch.setattr(runtime, "_registry", FakeRegistry({ref}))

    def must_not_build(*_: Any) -> None:
        raise AssertionError("a runtime with an existing key was built again")

    monkeypatch.setattr(runtime, "_produce_debian", must_not_build)
    lines: list[str] = []
    image = runtime.ensure_runtime_image("debian", platform, "reg", "repo", log=lines.append)
    assert image.reused and image.ref == ref and image.key == key
    assert image.base_name == "debian:bookworm"
    assert any("reused" in line for line in lines)


def test_missing_key_is_built_then_its_digest_read(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRegistry(set())
    monkeypatch.setattr(runtime, "_registry", fake)
    built: list[str] = []

    def produce(platform: Any, key: str, ref: str, log: Any) -> None:
        built.append(ref)
        fake.existing.add(ref)

    monkeypatch.setattr(runtime, "_produce_debian", produce)
    image = runtime.ensure_runtime_image("debian", by_arch("amd64"), "reg", "repo", log=print)
    assert built == [image.ref]
    assert not image.reused and image.digest.startswith("sha256:")


# --- real runtimes (engine) -------------------------------------------------------------

LOCAL = "127.0.0.1:5000"


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    host_setup.setup(host_setup.HostPaths(cache=ROOT / ".cache"), log=lambda _: None)
    return LOCAL


@pytest.mark.engine
def test_second_ensure_reuses_the_runtime_without_building(
    local_registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A repository of its own, so the first call really builds (from the cached tar).
    repository = f"pdp-test-runtime-{uuid.uuid4().hex[:8]}"
    amd64 = by_arch("amd64")
    first = runtime.ensure_runtime_image("debian", amd64, local_registry, repository)
    assert not first.reused

    def must_not_build(*_: Any) -> None:
        raise AssertionError("the second ensure rebuilt an unchanged runtime")

    monkeypatch.setattr(runtime, "_produce_debian", must_not_build)
    second = runtime.ensure_runtime_image("debian", amd64, local_registry, repository)
    assert second.reused
    assert (second.ref, second.digest, second.key) == (first.ref, first.digest, first.key)
    # The engine's copy of this throwaway tag is not needed (the registry keeps the test's).
    subprocess.run(["docker", "image", "rm", first.ref], capture_output=True, check=False)


@pytest.mark.engine
def test_debian_runtime_runs_python_with_grpc_under_s390x(local_registry: str) -> None:
    image = runtime.ensure_runtime_image(
        "debian", by_arch("s390x"), local_registry, "power-dev-plugin"
    )
    probe = (
        "import platform, sys, grpc, google.protobuf;"
        "print(platform.machine(), sys.byteorder, sys.version_info >= (3, 9))"
    )
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "--platform",
            "linux/s390x",
            f"{image.ref.rsplit(':', 1)[0]}@{image.digest}",
            "/usr/bin/python3",
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["s390x", "big", "True"]


@pytest.mark.engine
def test_debian_runtime_carries_no_compiler_and_no_package_caches(local_registry: str) -> None:
    image = runtime.ensure_runtime_image(
        "debian", by_arch("amd64"), local_registry, "power-dev-plugin"
    )
    script = (
        "for c in gcc cc c++ g++; do command -v $c && exit 10; done;"
        " ls -A /var/lib/apt/lists | grep -v -e '^lock$' -e '^partial$' && exit 11;"
        " ls -A /var/cache/apt | grep . && exit 12;"
        " command -v sleep >/dev/null || exit 13; echo clean"
    )
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", image.ref, "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip().splitlines()[-1:] == ["clean"], (result.returncode, result.stdout)


PIN = runtime.bases.BasePin("ubi9", "registry.access.redhat.com/ubi9/ubi:9.7", "sha256:abc", "3.12")


def test_ubi9_build_pins_base_and_wheels_and_drops_host_network_on_a_builder(
    tmp_path: Path,
) -> None:
    argv = runtime.ubi9_build_command(
        by_arch("ppc64le"),
        "k" * 64,
        "reg/repo-runtime:ubi9-ppc64le-kkkkkkkkkkkk",
        PIN,
        "reg/repo-wheels@sha256:def",
        "power-nodes",
        tmp_path / "a.tar",
        tmp_path / "m.json",
    )
    assert argv[:5] == ["docker", "buildx", "build", "--builder", "power-nodes"]
    assert argv[argv.index("-f") + 1].endswith("containers/runtime-ubi9.Containerfile")
    assert argv[argv.index("--platform") + 1] == "linux/ppc64le"
    assert "BASE_IMAGE=registry.access.redhat.com/ubi9/ubi:9.7@sha256:abc" in argv
    assert "WHEELS_IMAGE=reg/repo-wheels@sha256:def" in argv
    assert "PYTHON=python3.12" in argv
    assert "--network" not in argv  # remote BuildKit refuses it without the entitlement
    assert "--push" not in argv  # pushed afterwards, retried alone
    assert "--provenance=mode=max" in argv


def test_ubi9_build_on_this_engine_uses_the_host_network(tmp_path: Path) -> None:
    argv = runtime.ubi9_build_command(
        by_arch("s390x"), "k", "r", PIN, "w@sha256:1", None, tmp_path / "a", tmp_path / "m"
    )
    assert "--builder" not in argv
    assert argv[argv.index("--network") + 1] == "host"


def test_ubi9_containerfile_installs_wheels_from_the_wheels_image_and_compiles_nothing() -> None:
    text = runtime.UBI9_CONTAINERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)
    assert stages[1].startswith("${WHEELS_IMAGE} AS wheels")
    final = stages[-1]
    assert "gcc" not in text and "-devel" not in text
    assert "--mount=type=bind,from=wheels,source=/wheels" in final
    assert "pip install --no-index --find-links /wheels" in final
    assert "dnf clean all" in final and "/var/cache/dnf" in final
