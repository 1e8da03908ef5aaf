"""The grpcio compile is cheap to repeat: objects go through a compiler cache kept between
attempts, and a failed attempt is retried from what it kept, not from nothing.

The cache itself (`containers/objcache`) is tried here on a small C compile with the host's
gcc; the compile of grpcio under QEMU takes hours and is not run by any test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pdp_pipeline.images import bases, wheels
from pdp_pipeline.platforms import by_arch

OBJCACHE = wheels.OBJCACHE
PIN = bases.BasePin("ubi9", "registry.access.redhat.com/ubi9/ubi:9.7", "sha256:" + "a" * 64, "3.12")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _objcache(cache: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OBJCACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, str(OBJCACHE), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def _tally(cache: Path, what: str) -> int:
    path = cache / what
    return len(path.read_text().splitlines()) if path.exists() else 0


@needs_gcc
def test_a_second_compile_of_the_same_source_is_a_cache_hit(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "one.c").write_text("int one(void) { return 1; }\n")
    assert _objcache(cache, tmp_path, "gcc", "-O2", "-c", "one.c", "-o", "a.o").returncode == 0
    assert _objcache(cache, tmp_path, "gcc", "-O2", "-c", "one.c", "-o", "b.o").returncode == 0
    assert (_tally(cache, "misses"), _tally(cache, "hits")) == (1, 1)
    assert (tmp_path / "a.o").read_bytes() == (tmp_path / "b.o").read_bytes()


@needs_gcc
def test_a_changed_source_or_flag_is_compiled_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    source = tmp_path / "one.c"
    source.write_text("int one(void) { return 1; }\n")
    _objcache(cache, tmp_path, "gcc", "-O2", "-c", "one.c", "-o", "a.o")
    _objcache(cache, tmp_path, "gcc", "-O0", "-c", "one.c", "-o", "a.o")
    source.write_text("int one(void) { return 2; }\n")
    _objcache(cache, tmp_path, "gcc", "-O2", "-c", "one.c", "-o", "a.o")
    assert (_tally(cache, "misses"), _tally(cache, "hits")) == (3, 0)


@needs_gcc
def test_an_interrupted_build_resumes_from_the_objects_it_had(tmp_path: Path) -> None:
    """Three sources, the third one broken: the retry after the fix compiles only the third."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("a", "b"):
        (tmp_path / f"{name}.c").write_text(f"int {name}(void) {{ return 0; }}\n")
    (tmp_path / "c.c").write_text("int c(void) { return }\n")
    results = [
        _objcache(cache, tmp_path, "gcc", "-c", f"{n}.c", "-o", f"{n}.o").returncode for n in "abc"
    ]
    assert results[:2] == [0, 0] and results[2] != 0
    (tmp_path / "c.c").write_text("int c(void) { return 0; }\n")
    for name in "abc":
        assert (
            _objcache(cache, tmp_path, "gcc", "-c", f"{name}.c", "-o", f"{name}.o").returncode == 0
        )
    assert (_tally(cache, "misses"), _tally(cache, "hits")) == (3, 2)


@needs_gcc
def test_links_and_other_calls_pass_through_untouched(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (tmp_path / "one.c").write_text("int one(void) { return 1; }\n")
    _objcache(cache, tmp_path, "gcc", "-fPIC", "-c", "one.c", "-o", "one.o")
    linked = _objcache(cache, tmp_path, "gcc", "-shared", "one.o", "-o", "one.so")
    assert linked.returncode == 0 and (tmp_path / "one.so").exists()
    assert _tally(cache, "misses") == 1


def test_the_compile_seeds_its_cache_and_builds_only_the_wheels_target(tmp_path: Path) -> None:
    argv = wheels.build_command(
        "compile",
        PIN,
        by_arch("ppc64le"),
        tmp_path,
        "r:t",
        tmp_path / "a",
        tmp_path / "m",
        None,
        tmp_path / "cache",
    )
    assert argv[argv.index("--build-context") + 1] == f"objcache-seed={tmp_path / 'cache'}"
    assert argv[argv.index("--target") + 1] == "wheels"
    export = wheels.export_cache_command(PIN, by_arch("ppc64le"), tmp_path / "out", None)
    assert export[export.index("--target") + 1] == "objcache-export"
    assert f"type=local,dest={tmp_path / 'out'}" in export


def test_the_compile_containerfile_uses_the_cache_and_the_pinned_hashes() -> None:
    text = wheels.COMPILE_CONTAINERFILE.read_text()
    assert "--mount=type=cache" in text and "objcache" in text
    assert "--require-hashes" in text
    for target in ("objcache-seed", "objcache-export", "wheels"):
        assert f"AS {target}" in text


def test_a_failed_attempt_is_retried_after_its_objects_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def run(argv: list[str], what: str, log: object, timeout: float | None = None) -> None:
        calls.append("export" if "objcache-export" in argv else "compile")
        if calls.count("compile") == 1 and calls[-1] == "compile":
            raise wheels.WheelsBuildError("stopped after 10 s")
        if calls[-1] == "export":
            dest = Path(argv[argv.index("--output") + 1].split("dest=", 1)[1])
            dest.mkdir(parents=True)
            (dest / "x.o").write_bytes(b"o")

    monkeypatch.setattr(wheels, "_run", run)
    cache = tmp_path / "cache"
    cache.mkdir()
    wheels._compile(
        ["docker", "buildx", "build", "--target", "wheels"],
        "r:t",
        PIN,
        by_arch("s390x"),
        cache,
        None,
        2,
        10.0,
        lambda _: None,
    )
    assert calls == ["compile", "export", "compile", "export"]
    assert (cache / "x.o").exists()


def test_the_last_failed_attempt_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(argv: list[str], what: str, log: object, timeout: float | None = None) -> None:
        if "objcache-export" not in argv:
            raise wheels.WheelsBuildError("stopped")
        Path(argv[argv.index("--output") + 1].split("dest=", 1)[1]).mkdir(parents=True)

    monkeypatch.setattr(wheels, "_run", run)
    with pytest.raises(wheels.WheelsBuildError, match="to resume"):
        wheels._compile(
            ["x"], "r:t", PIN, by_arch("s390x"), tmp_path / "c", None, 1, None, lambda _: None
        )


# A build step that fills the compile's cache mount the way the grpcio step does (seeded
# from the named context, then objects of its own) and then fails, as a timed-out or broken
# compile would. The real Containerfile's export target must then bring out both.
FILL = """\
ARG BASE_IMAGE
FROM scratch AS objcache-seed
FROM ${BASE_IMAGE}
ARG TARGETARCH
RUN --mount=type=cache,id=pdp-objcache-${TARGETARCH},target=/objcache,sharing=locked \\
    --mount=type=bind,from=objcache-seed,target=/seed \\
    cp -an /seed/. /objcache/ ; mkdir -p /objcache/bb && echo made > /objcache/bb/RUN.o ; exit 3
"""


@pytest.mark.engine
def test_objects_of_a_failed_compile_step_are_exported_with_the_seeded_ones(
    tmp_path: Path,
) -> None:
    import uuid

    from pdp_pipeline.host import setup as host_setup
    from pdp_pipeline.images import runtime

    host_setup.setup(host_setup.HostPaths(cache=wheels.ROOT / ".cache"), log=lambda _: None)
    amd64 = by_arch("amd64")
    base = runtime.ensure_runtime_image(
        "debian", amd64, "127.0.0.1:5000", "power-dev-plugin", log=lambda _: None
    )
    pin = bases.BasePin("ubi9", base.ref.rsplit(":", 1)[0], base.digest, "3")
    run = uuid.uuid4().hex[:8]
    seed = tmp_path / "cache"
    (seed / "aa").mkdir(parents=True)
    (seed / "aa" / f"seeded-{run}.o").write_text("seeded")
    (tmp_path / "fill.Containerfile").write_text(FILL.replace("RUN.o", f"run-{run}.o"))
    fill = subprocess.run(
        [
            "docker",
            "buildx",
            "build",
            "-f",
            str(tmp_path / "fill.Containerfile"),
            "--platform",
            amd64.platform,
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={pin.ref}",
            "--build-context",
            f"{wheels.SEED_CONTEXT}={seed}",
            "--progress",
            "plain",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fill.returncode != 0 and "exit code: 3" in fill.stderr, fill.stderr[-2000:]

    kept = wheels.export_compile_cache(pin, amd64, seed, None, lambda _: None)

    assert kept >= 2
    assert (seed / "aa" / f"seeded-{run}.o").read_text() == "seeded"
    assert (seed / "bb" / f"run-{run}.o").read_text() == "made\n"
