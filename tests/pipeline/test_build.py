from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pdp_pipeline.images import build, buildx, registry, runtime, tags, verify
from pdp_pipeline.images import context as build_context
from pdp_pipeline.images import record as build_record
from pdp_pipeline.platforms import PLATFORMS, by_arch

ROOT = Path(__file__).resolve().parents[2]
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def _runtime(arch: str, reused: bool = True) -> runtime.RuntimeImage:
    return runtime.RuntimeImage(
        base="debian",
        platform=by_arch(arch),
        ref=f"127.0.0.1:5000/pdp-runtime:debian-{arch}-0123456789ab",
        digest=DIGEST_B,
        key="0123456789ab" + "0" * 52,
        reused=reused,
        base_name="debian:bookworm",
    )


def _command(**overrides: object) -> list[str]:
    arguments: dict[str, object] = dict(
        platform=by_arch("ppc64le"),
        containerfile=Path("containers/Containerfile"),
        context=Path("/ctx"),
        runtime_ref="r/rt@" + DIGEST_B,
        labels={"b.label": "2", "a.label": "1 with space"},
        image_ref="127.0.0.1:5000/pdp:v1-ppc64le",
        metadata_file=Path("/tmp/meta.json"),
        push=True,
        archive=Path("/tmp/image.oci.tar"),
    )
    arguments.update(overrides)
    return buildx.buildx_command(**arguments)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- options -------------------------------------------------------------------------


def test_an_unknown_base_is_refused_naming_the_flag() -> None:
    with pytest.raises(build_record.BuildError, match="--base 'centos'"):
        build.BuildOptions(archs=PLATFORMS, base="centos")


def test_an_invalid_tag_is_refused_naming_the_flag() -> None:
    with pytest.raises(tags.TagError, match="--tag"):
        build.BuildOptions(archs=PLATFORMS, tag="no spaces please")


def test_options_default_to_ubi9_the_local_registry_push_and_verify() -> None:
    options = build.BuildOptions(archs=PLATFORMS)
    assert (options.base, options.registry, options.repository) == (
        "ubi9",
        "127.0.0.1:5000",
        "power-dev-plugin",
    )
    assert options.push and options.verify and options.allow_fallback
    assert options.provenance is None


# --- buildx command lines ------------------------------------------------------------


def test_buildx_builds_one_platform_from_the_containerfile_on_the_pinned_runtime() -> None:
    argv = _command()
    assert argv[:3] == ["docker", "buildx", "build"]
    assert _after(argv, "--platform") == "linux/ppc64le"
    assert _after(argv, "-f") == "containers/Containerfile"
    assert _after(argv, "--build-arg") == "RUNTIME_IMAGE=r/rt@" + DIGEST_B
    assert _after(argv, "-t") == "127.0.0.1:5000/pdp:v1-ppc64le"
    assert _after(argv, "--metadata-file") == "/tmp/meta.json"
    assert argv[-1] == "/ctx"


def test_buildx_passes_every_label_as_one_argument() -> None:
    argv = _command()
    labels = [argv[i + 1] for i, word in enumerate(argv) if word == "--label"]
    assert labels == ["a.label=1 with space", "b.label=2"]


def test_push_writes_an_archive_and_no_push_loads_into_the_local_engine() -> None:
    pushed, loaded = _command(push=True), _command(push=False)
    assert "--output" in pushed and "--load" not in pushed
    assert "--load" in loaded and "--output" not in loaded


def test_a_pushed_build_is_an_oci_archive_with_its_timestamps_rewritten() -> None:
    output = dict(part.split("=", 1) for part in _after(_command(), "--output").split(","))
    assert output == {"type": "oci", "dest": "/tmp/image.oci.tar", "rewrite-timestamp": "true"}


def test_a_pushed_build_without_an_archive_is_refused() -> None:
    with pytest.raises(build_record.BuildError, match="archive"):
        _command(archive=None)


@pytest.mark.parametrize(
    ("ref", "plain_http"),
    [("127.0.0.1:5000/pdp:v1-amd64", True), ("quay.io/org/pdp:v1-amd64", False)],
)
def test_the_archive_is_pushed_unchanged_and_over_plain_http_only_to_this_host(
    ref: str, plain_http: bool
) -> None:
    argv = registry.push_archive_command(Path("/tmp/a.tar"), ref)
    assert argv[:2] == ["skopeo", "copy"]
    assert "--preserve-digests" in argv and "--all" in argv
    assert argv[-2:] == ["oci-archive:/tmp/a.tar", f"docker://{ref}"]
    assert ("--dest-tls-verify=false" in argv) is plain_http


def test_the_commit_time_is_the_source_date_epoch_of_the_build() -> None:
    argv = _command(source_date_epoch=1700000000)
    build_args = [argv[i + 1] for i, word in enumerate(argv) if word == "--build-arg"]
    assert "SOURCE_DATE_EPOCH=1700000000" in build_args
    without = _command()
    assert not any(w.startswith("SOURCE_DATE_EPOCH") for w in without)


def test_no_cache_is_passed_only_when_asked() -> None:
    assert "--no-cache" in _command(no_cache=True)
    assert "--no-cache" not in _command()


def test_provenance_is_off_unless_asked_so_each_arch_push_is_one_manifest() -> None:
    assert "--provenance=false" in _command()
    released = _command(provenance="mode=max")
    assert "--provenance=mode=max" in released and "--provenance=false" not in released


def test_builder_is_passed_only_when_given() -> None:
    assert "--builder" not in _command()
    assert _after(_command(builder="native-nodes"), "--builder") == "native-nodes"


@pytest.mark.parametrize("platform", PLATFORMS, ids=[p.arch for p in PLATFORMS])
def test_each_architecture_gets_its_own_tag_in_one_repository(platform: object) -> None:
    arch = by_arch(str(getattr(platform, "arch")))  # noqa: B009
    ref = tags.image_ref("127.0.0.1:5000", "power-dev-plugin", tag="v1.2.3", arch=arch.arch)
    argv = _command(platform=arch, image_ref=ref)
    assert _after(argv, "-t") == f"127.0.0.1:5000/power-dev-plugin:v1.2.3-{arch.arch}"
    assert _after(argv, "--platform") == f"linux/{arch.arch}"


def test_the_runtime_is_pinned_by_its_digest() -> None:
    pin = build.runtime_pin(_runtime("s390x"))
    assert pin == "127.0.0.1:5000/pdp-runtime:debian-s390x-0123456789ab@" + DIGEST_B


def test_the_digest_comes_from_buildx_metadata() -> None:
    metadata = {"containerimage.digest": DIGEST_A, "image.name": "x"}
    assert buildx.digest_from_metadata(metadata, "x") == DIGEST_A
    with pytest.raises(build_record.BuildError, match="no image digest for x"):
        buildx.digest_from_metadata({"buildx.build.ref": "y"}, "x")


# --- the wheel and the staged context ------------------------------------------------


def test_the_wheel_is_built_at_the_commit_time_and_without_it_at_none() -> None:
    assert build_context.wheel_env("1.0", {}, 1700000000)["SOURCE_DATE_EPOCH"] == "1700000000"
    assert "SOURCE_DATE_EPOCH" not in build_context.wheel_env("1.0", {})


def test_the_wheel_is_built_with_the_tags_version() -> None:
    env = build_context.wheel_env("1.2.3.post4+gabc1234", {"PATH": "/bin"})
    assert env["SETUPTOOLS_SCM_PRETEND_VERSION"] == "1.2.3.post4+gabc1234"
    assert env["PATH"] == "/bin"
    argv = build_context.wheel_command("py", ROOT, Path("/out"))
    assert argv[1:4] == ["-m", "build", "--wheel"]
    # Built from this environment's backend: no package index needed at build time.
    assert "--no-isolation" in argv


def test_staging_installs_only_the_wheel_offline_without_bytecode() -> None:
    argv = build_context.stage_command("py", Path("/w/x.whl"), Path("/ctx/site-packages"))
    for flag in ("--no-deps", "--no-index", "--no-compile"):
        assert flag in argv
    assert _after(argv, "--target") == "/ctx/site-packages"
    assert argv[-1] == "/w/x.whl"


def _fake_project(tmp_path: Path) -> Path:
    """A copy of the project frame small enough to build in seconds."""
    project = tmp_path / "project"
    package = project / "src" / "power_device_plugin"
    package.mkdir(parents=True)
    (project / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (project / "README.md").write_text("x\n")
    (package / "__init__.py").write_text((ROOT / "src/power_device_plugin/__init__.py").read_text())
    (package / "__main__.py").write_text("print('main')\n")
    (project / "containers").mkdir()
    (project / build_context.LAUNCHER).write_text((ROOT / build_context.LAUNCHER).read_text())
    return project


def test_the_wheel_of_one_commit_is_the_same_bytes_whenever_it_is_built(tmp_path: Path) -> None:
    project = _fake_project(tmp_path)
    first = build_context.build_wheel(
        project, "1.0.0", tmp_path / "w1", log=print, epoch=1700000000
    )
    for path in project.rglob("*"):  # as if checked out later: every file is newer
        os.utime(path, (1800000000, 1800000000))
    second = build_context.build_wheel(
        project, "1.0.0", tmp_path / "w2", log=print, epoch=1700000000
    )
    assert first.read_bytes() == second.read_bytes()


def test_the_staged_context_holds_the_unpacked_plugin_and_the_launcher(tmp_path: Path) -> None:
    project = _fake_project(tmp_path)
    wheel = build_context.build_wheel(
        project, "3.4.5.post2+gfeed123", tmp_path / "wheel", log=print
    )
    assert wheel.name.startswith("power_device_plugin-3.4.5.post2+gfeed123-py3-none-any")
    context = build_context.stage_context(
        project, wheel, tmp_path / "context", log=print, epoch=1700000000
    )

    site = context / build_context.SITE_PACKAGES
    assert (site / "power_device_plugin" / "__main__.py").is_file()
    metadata = (
        site / "power_device_plugin-3.4.5.post2+gfeed123.dist-info" / "METADATA"
    ).read_text()
    assert "Version: 3.4.5.post2+gfeed123" in metadata
    assert not (site / "bin").exists(), "the host's console script must not ship"
    assert not list(site.rglob("__pycache__")), "no bytecode is compiled on the host"
    launcher = context / build_context.LAUNCHER.name
    assert launcher.stat().st_mode & stat.S_IXUSR
    # Nothing says where or when it was staged: no wheel path, every mtime the commit's.
    assert not list(site.rglob("direct_url.json"))
    records = "".join(p.read_text() for p in site.rglob("RECORD"))
    assert str(tmp_path) not in records
    # The console script (its shebang names the staging Python: the clone's .venv) is
    # gone, and so is its hash from RECORD.
    assert "../../bin/" not in records
    assert {p.lstat().st_mtime for p in [context, *context.rglob("*")]} == {1700000000}

    # The version the image reports is read from that dist-info.
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import power_device_plugin as p; print(p.__version__)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "3.4.5.post2+gfeed123"


def test_a_failed_wheel_build_names_the_step_and_shows_its_output(tmp_path: Path) -> None:
    project = tmp_path / "broken"
    project.mkdir()
    (project / "pyproject.toml").write_text("this is not toml [")
    with pytest.raises(build_record.BuildError, match="the plugin wheel"):
        build_context.build_wheel(project, "1.0.0", tmp_path / "wheel", log=print)


# --- the Containerfile and the launcher ------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / build.CONTAINERFILE).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_plugin_stage_copies_onto_the_runtime_and_only_compiles_bytecode() -> None:
    kinds = [kind for kind, _ in _instructions()]
    assert "ADD" not in kinds
    assert kinds.count("FROM") == 1
    assert ("FROM", "${RUNTIME_IMAGE}") in _instructions()
    # One step runs: the runtime's own Python compiles the copied site-packages, with no
    # network (nothing can be fetched), hash-based (the layer does not depend on mtimes)
    # and a fixed hash seed (set constants in a fixed order).
    (run,) = [args for kind, args in _instructions() if kind == "RUN"]
    assert run.split() == [
        "--network=none",
        "PYTHONHASHSEED=0",
        "python3",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        "/opt/power-device-plugin/site-packages",
    ]
    assert kinds.index("RUN") > max(i for i, kind in enumerate(kinds) if kind == "COPY")


def test_the_entrypoint_is_the_launcher_and_the_default_command_serves() -> None:
    instructions = dict(_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["/usr/local/bin/power-device-plugin"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    copies = [args for kind, args in _instructions() if kind == "COPY"]
    assert f"{build_context.SITE_PACKAGES} /opt/power-device-plugin/site-packages" in copies
    assert "PYTHONPATH=/opt/power-device-plugin/site-packages" in instructions["ENV"]


def test_the_launcher_runs_the_package_with_the_runtimes_python() -> None:
    launcher = ROOT / build_context.LAUNCHER
    assert launcher.stat().st_mode & stat.S_IXUSR
    assert re.search(r'^exec python3 -m power_device_plugin "\$@"$', launcher.read_text(), re.M)


# --- the record --------------------------------------------------------------------------


def _record() -> build_record.BuildRecord:
    return build_record.BuildRecord(
        tag="v1.2.3",
        version="1.2.3",
        revision="c" * 40,
        index_ref="127.0.0.1:5000/pdp:v1.2.3",
        index_digest=DIGEST_A,
        base="debian",
        fell_back=True,
        archs=[
            build_record.ArchResult(
                platform=p,
                image_ref=f"127.0.0.1:5000/pdp:v1.2.3-{p.arch}",
                digest="sha256:" + str(i) * 64,
                size=1000 * (i + 1),
                runtime=_runtime(p.arch, reused=i != 1),
                verified=[True, False, None][i],
                seconds=1.5,
            )
            for i, p in enumerate(by_arch(a) for a in ("amd64", "ppc64le", "s390x"))
        ],
        registry="127.0.0.1:5000",
        repository="pdp",
        requested_base="ubi9",
        pushed=True,
        created="2026-01-01T00:00:00Z",
    )


def test_the_record_survives_a_json_round_trip(tmp_path: Path) -> None:
    record = _record()
    path = tmp_path / "nested" / "last-build.json"
    build_record.save_record(record, path)
    assert build_record.load_record(path) == record


def test_an_arch_results_digest_ref_names_the_repository_and_digest() -> None:
    assert _record().archs[0].digest_ref() == "127.0.0.1:5000/pdp@sha256:" + "0" * 64


def test_a_missing_record_says_where_it_looked_and_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(
        build_record.BuildError, match=r"no build record at .*absent.json.*invoke build"
    ):
        build_record.load_record(tmp_path / "absent.json")


def test_a_record_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    data = json.loads(_record().to_json())
    data["format"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(build_record.BuildError, match="unreadable"):
        build_record.load_record(path)


def test_verify_all_means_every_built_arch_and_a_missing_one_is_named() -> None:
    record = _record()
    record.archs = record.archs[:2]
    assert build_record.archs_to_verify(record, "all") == ["amd64", "ppc64le"]
    assert build_record.archs_to_verify(record, "ppc64le") == ["ppc64le"]
    with pytest.raises(build_record.BuildError, match=r"no s390x image \(built: amd64, ppc64le\)"):
        build_record.archs_to_verify(record, "s390x")


# --- verification outcome from the suite's JUnit report --------------------------------


def _junit(*cases: tuple[str, str]) -> str:
    body = "".join(
        f'<testcase classname="tests.image.t" name="{name}">'
        + (f"<{outcome} message='m'/>" if outcome else "")
        + "</testcase>"
        for name, outcome in cases
    )
    return (
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>'
    )


def test_an_arch_passes_only_when_all_its_checks_passed() -> None:
    report = _junit(
        ("test_machine[amd64]", ""),
        ("test_machine[s390x]", "failure"),
        ("test_version[amd64]", ""),
        ("test_version[s390x]", ""),
    )
    assert verify.results_from_junit(report, ["amd64", "s390x"]) == {"amd64": True, "s390x": False}


def test_a_shared_check_that_fails_fails_every_arch() -> None:
    report = _junit(("test_machine[amd64]", ""), ("test_index_lists_platforms", "failure"))
    assert verify.results_from_junit(report, ["amd64"]) == {"amd64": False}


def test_a_skipped_or_erroring_check_or_no_check_at_all_is_not_a_pass() -> None:
    report = _junit(
        ("test_machine[amd64]", "skipped"),
        ("test_machine[ppc64le]", "error"),
        ("test_machine[x]", ""),
    )
    assert verify.results_from_junit(report, ["amd64", "ppc64le", "s390x"]) == {
        "amd64": False,
        "ppc64le": False,
        "s390x": False,
    }


def test_the_suite_is_told_which_record_and_architectures() -> None:
    argv = verify.suite_command("py", Path("/r.json"), ["amd64", "s390x"], Path("/j.xml"))
    assert "--build-record=/r.json" in argv
    assert "--image-arch=amd64,s390x" in argv
    assert "--junitxml=/j.xml" in argv
    assert str(ROOT / "tests" / "image") in argv


def test_verifying_a_no_push_build_is_refused(tmp_path: Path) -> None:
    record = _record()
    record.pushed, record.index_ref, record.index_digest = False, None, None
    path = tmp_path / "r.json"
    build_record.save_record(record, path)
    with pytest.raises(verify.VerifyError, match="not pushed"):
        verify.verify_and_record(path, ["amd64"], log=print)


# --- with the engine: a --no-push build stays in the local engine ----------------------


@pytest.mark.engine
def test_no_push_builds_into_the_local_engine_without_an_index(tmp_path: Path) -> None:
    import docker

    options = build.BuildOptions(
        archs=(by_arch("amd64"),),
        repository="pdp-test-no-push",
        tag="no-push-check",
        base="debian",
        push=False,
        verify=True,  # ignored without a push: nothing in the registry to pull
    )
    lines: list[str] = []
    record_file = tmp_path / "record.json"
    record = build.run_build(options, log=lines.append, record_file=record_file)

    assert record.index_ref is None and record.pushed is False
    assert record.archs[0].verified is None
    assert any("--no-push" in line and "no index" in line for line in lines)
    assert build_record.load_record(record_file) == record
    ref = "127.0.0.1:5000/pdp-test-no-push:no-push-check-amd64"
    client = docker.from_env()
    try:
        image = client.images.get(ref)
        assert image.attrs["Architecture"] == "amd64"
        assert image.labels[tags.LABEL_VERSION] == record.version
    finally:
        client.images.remove(ref, force=True)
        client.close()


# --- the orchestration, with the engine, registry and producers replaced --------------


class FakeEngine:
    """Stands in for buildx, the registry and the runtime producer; remembers every call."""

    def __init__(self, push_failures: int = 0, fall_back: bool = False) -> None:
        self.push_failures = push_failures
        self.fall_back = fall_back
        self.buildx: list[list[str]] = []
        self.pushes: list[list[str]] = []  # skopeo copies of the built archives
        self.indexes: list[tuple[str, list[str]]] = []

    def run(self, argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        if argv[0] == "skopeo":
            self.pushes.append(list(argv))
            if self.push_failures:
                self.push_failures -= 1
                return subprocess.CompletedProcess(
                    argv, 1, "", "writing manifest: 500 Internal Server Error"
                )
            return subprocess.CompletedProcess(argv, 0, "", "")
        self.buildx.append(list(argv))
        arch = argv[argv.index("--platform") + 1].split("/")[1]
        digest = "sha256:" + format(len(arch), "x") * 64
        Path(argv[argv.index("--metadata-file") + 1]).write_text(
            json.dumps({"containerimage.digest": digest})
        )
        return subprocess.CompletedProcess(argv, 0, "", "")

    def choose_base(self, requested: str, *_: object, **__: object) -> tuple[str, bool]:
        return ("debian", True) if self.fall_back else (requested, False)

    def create_index(self, target: str, sources: list[str], log: object = None) -> str:
        self.indexes.append((target, list(sources)))
        return DIGEST_A


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEngine:
    engine = FakeEngine()
    real_retries = build.registry.with_retries
    identity = tags.Identity("v1.0.0", "1.0.0", "d" * 40, "v1.0.0")
    monkeypatch.setattr(build.tags, "resolve_identity", lambda root, tag=None: identity)
    monkeypatch.setattr(
        build_context, "build_wheel", lambda root, version, outdir, log, epoch: tmp_path / "w.whl"
    )
    monkeypatch.setattr(
        build_context,
        "stage_context",
        lambda root, wheel, context, log, epoch, dependencies=(): context,
    )
    monkeypatch.setattr(build_context, "fetch_dependency_wheels", lambda root, dest, log: [])
    monkeypatch.setattr(buildx.subprocess, "run", engine.run)
    monkeypatch.setattr(build.runtime, "choose_base", engine.choose_base)
    monkeypatch.setattr(
        build.runtime,
        "ensure_runtime_image",
        lambda base, platform, *a, **k: _runtime(platform.arch, reused=platform.arch != "s390x"),
    )
    monkeypatch.setattr(build.registry, "create_index", engine.create_index)
    monkeypatch.setattr(build.registry, "image_size", lambda ref, log=None: 123)
    monkeypatch.setattr(
        build.registry,
        "with_retries",
        lambda action, **kw: real_retries(action, **kw, sleep=lambda _: None),
    )
    return engine


def _options(**overrides: object) -> build.BuildOptions:
    settings: dict[str, object] = dict(archs=PLATFORMS, repository="pdp", verify=False)
    settings.update(overrides)
    return build.BuildOptions(**settings)  # type: ignore[arg-type]


def test_a_build_pushes_each_arch_then_indexes_exactly_those_digests(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    record = build.run_build(_options(), log=print, record_file=tmp_path / "r.json")
    pushed = [argv[argv.index("-t") + 1] for argv in fake_engine.buildx]
    assert pushed == [f"127.0.0.1:5000/pdp:v1.0.0-{p.arch}" for p in PLATFORMS]
    assert [argv[-1] for argv in fake_engine.pushes] == [f"docker://{ref}" for ref in pushed]
    assert fake_engine.indexes == [
        ("127.0.0.1:5000/pdp:v1.0.0", [r.digest_ref() for r in record.archs])
    ]
    assert (record.index_ref, record.index_digest) == ("127.0.0.1:5000/pdp:v1.0.0", DIGEST_A)
    assert [r.runtime.reused for r in record.archs] == [p.arch != "s390x" for p in PLATFORMS]
    assert build_record.load_record(tmp_path / "r.json") == record


def test_a_push_the_registry_refused_is_retried_without_building_again(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    fake_engine.push_failures = 2
    lines: list[str] = []
    record = build.run_build(
        _options(archs=(by_arch("amd64"),)), log=lines.append, record_file=tmp_path / "r.json"
    )
    assert len(fake_engine.buildx) == 1 and len(fake_engine.pushes) == 3
    assert record.archs[0].digest.startswith("sha256:")
    assert sum("retrying" in line for line in lines) == 2


def test_a_push_that_keeps_failing_names_image_arch_and_answer(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    fake_engine.push_failures = 99
    with pytest.raises(build.registry.RegistryError) as raised:
        build.run_build(_options(archs=(by_arch("s390x"),)), record_file=tmp_path / "r.json")
    message = str(raised.value)
    assert "127.0.0.1:5000/pdp:v1.0.0-s390x" in message and "(s390x)" in message
    assert "500 Internal Server Error" in message
    assert not (tmp_path / "r.json").exists(), "no record of a build that did not finish"


def test_the_ubi9_fallback_is_recorded_and_labelled(
    fake_engine: FakeEngine, tmp_path: Path
) -> None:
    fake_engine.fall_back = True
    record = build.run_build(_options(base="ubi9"), record_file=tmp_path / "r.json")
    assert (record.base, record.requested_base, record.fell_back) == ("debian", "ubi9", True)
    for argv in fake_engine.buildx:
        labels = [argv[i + 1] for i, word in enumerate(argv) if word == "--label"]
        assert f"{tags.LABEL_BASE_FALLBACK}=true" in labels
        assert f"{tags.LABEL_BASE}=debian" in labels


def test_no_push_loads_locally_and_makes_no_index(fake_engine: FakeEngine, tmp_path: Path) -> None:
    record = build.run_build(_options(push=False, verify=True), record_file=tmp_path / "r.json")
    assert all("--load" in argv and "--output" not in argv for argv in fake_engine.buildx)
    assert fake_engine.pushes == [] and fake_engine.indexes == []
    assert record.index_ref is None and not record.pushed
    assert all(r.verified is None for r in record.archs)


def test_release_options_reach_buildx(fake_engine: FakeEngine, tmp_path: Path) -> None:
    build.run_build(
        _options(provenance="mode=max", builder="native", extra_labels={"x.release": "v1"}),
        record_file=tmp_path / "r.json",
    )
    for argv in fake_engine.buildx:
        assert "--provenance=mode=max" in argv
        assert argv[argv.index("--builder") + 1] == "native"
        assert "x.release=v1" in argv


def _tagged_checkout(tmp_path: Path, tag: str = "v1.2.3") -> Path:

    repo = tmp_path / "repo"
    repo.mkdir()
    for argv in (
        ["git", "init", "-q"],
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
        ["git", "tag", tag],
    ):
        subprocess.run(argv, cwd=repo, check=True, capture_output=True)
    return repo


def test_build_refuses_to_push_a_release_tag_to_a_shared_registry(tmp_path: Path) -> None:
    repo = _tagged_checkout(tmp_path)
    options = build.BuildOptions(archs=PLATFORMS, registry="ghcr.io/owner", verify=False)
    with pytest.raises(build.BuildError, match="invoke release"):
        build.run_build(options, log=lambda _: None, root=repo, record_file=tmp_path / "r.json")
    assert not (repo / ".cache").exists(), "a refused build must build nothing"


def test_build_refuses_an_explicit_release_tag_for_a_shared_registry(tmp_path: Path) -> None:
    identity = tags.Identity("v2.0.0", "2.0.0", "a" * 40, "abc1234", 0)
    options = build.BuildOptions(archs=PLATFORMS, registry="quay.io/x", tag="v2.0.0")
    with pytest.raises(build.BuildError, match="invoke release"):
        build.refuse_release_push(options, identity)


def test_a_release_tag_may_go_to_the_loopback_registry_or_through_the_release(
    tmp_path: Path,
) -> None:
    identity = tags.Identity("v2.0.0", "2.0.0", "a" * 40, "v2.0.0", 0)
    build.refuse_release_push(build.BuildOptions(archs=PLATFORMS), identity)
    build.refuse_release_push(
        build.BuildOptions(archs=PLATFORMS, registry="ghcr.io/o", release=True), identity
    )
    build.refuse_release_push(
        build.BuildOptions(archs=PLATFORMS, registry="ghcr.io/o", push=False), identity
    )
    untagged = tags.Identity("v2.0.0-3-gabc1234", "2.0.0.post3", "a" * 40, "v2.0.0-3-gabc1234", 0)
    build.refuse_release_push(build.BuildOptions(archs=PLATFORMS, registry="ghcr.io/o"), untagged)
