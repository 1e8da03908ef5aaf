"""Host setup: plans made from fake probe results, and (engine) the real host after setup."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pdp_pipeline.host import plan as host_plan
from pdp_pipeline.host import probe as host
from pdp_pipeline.host import setup as host_setup
from pdp_pipeline.host.plan import plan_setup
from pdp_pipeline.host.probe import HostFacts

ALL_PACKAGES = host.TRIXIE_PACKAGES + host.BOOKWORM_PACKAGES

FRESH_DEBIAN = HostFacts(
    can_apt=True,
    apt_sources_current=False,
    missing_packages=ALL_PACKAGES,
    dockerd_installed=False,
    engine_answers=False,
    containerd_store=False,
    daemon_json_current=False,
    buildx_works=False,
    buildx_plugin_present=False,
    binfmt_mounted=False,
    foreign_machines=("ppc64le", "s390x"),
    emulated_machines=(),
    registry_answers=False,
    registry_installed=False,
)

READY = HostFacts(
    can_apt=True,
    apt_sources_current=True,
    missing_packages=(),
    dockerd_installed=True,
    engine_answers=True,
    containerd_store=True,
    daemon_json_current=True,
    buildx_works=True,
    buildx_plugin_present=True,
    binfmt_mounted=True,
    foreign_machines=("ppc64le", "s390x"),
    emulated_machines=("ppc64le", "s390x"),
    registry_answers=True,
    registry_installed=True,
)

# A laptop or a CI runner: an engine with buildx, not Debian (or not root), no QEMU, no registry.
FOREIGN_ENGINE_HOST = dataclasses.replace(
    READY,
    can_apt=False,
    apt_sources_current=False,
    missing_packages=ALL_PACKAGES,
    dockerd_installed=False,
    emulated_machines=(),
    registry_answers=False,
    registry_installed=False,
)

DEBIAN_SOURCES_SAMPLE = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def actions(facts: HostFacts) -> list[str]:
    return [step.action for step in plan_setup(facts).steps]


# --- plan -------------------------------------------------------------------------


def test_fresh_debian_host_plans_every_step_in_dependency_order() -> None:
    plan = plan_setup(FRESH_DEBIAN)
    assert [s.action for s in plan.steps] == [
        "apt-sources",
        "apt-install",
        "daemon-json",
        "start-dockerd",
        "mount-binfmt",
        "enable-binfmt",
        "start-registry",
    ]
    assert plan.missing == ()


def test_fresh_debian_host_installs_every_package_in_one_apt_step() -> None:
    install = [s for s in plan_setup(FRESH_DEBIAN).steps if s.action == "apt-install"]
    assert len(install) == 1
    assert set(install[0].args) == set(ALL_PACKAGES)


def test_ready_host_plans_nothing() -> None:
    plan = plan_setup(READY)
    assert plan.steps == ()
    assert plan.missing == ()


def test_working_engine_is_used_and_its_packages_are_not_installed() -> None:
    # Debian host whose engine came from elsewhere (docker-ce): only the tools are added.
    facts = dataclasses.replace(READY, missing_packages=("docker.io", "docker-buildx", "cosign"))
    install = [s for s in plan_setup(facts).steps if s.action == "apt-install"]
    assert [s.args for s in install] == [("cosign",)]


def test_foreign_engine_host_installs_nothing_and_names_the_fixes() -> None:
    plan = plan_setup(FOREIGN_ENGINE_HOST)
    assert plan.steps == ()
    pieces = " | ".join(m.piece for m in plan.missing)
    assert "QEMU user emulation for ppc64le, s390x" in pieces
    assert "registry on 127.0.0.1:5000" in pieces
    assert "docker.io" not in pieces  # its engine is used, not replaced
    fixes = {m.piece: m.fix for m in plan.missing}
    assert "update-binfmts --enable" in fixes["QEMU user emulation for ppc64le, s390x"]
    assert "cosign/trixie" in fixes["package cosign"]


def test_host_without_apt_or_engine_names_each_service_once_with_its_fix() -> None:
    facts = dataclasses.replace(
        FOREIGN_ENGINE_HOST,
        engine_answers=False,
        containerd_store=False,
        buildx_works=False,
        buildx_plugin_present=False,
    )
    plan = plan_setup(facts)
    pieces = [m.piece for m in plan.missing]
    assert plan.steps == ()
    assert "a running Docker engine" in pieces
    assert "docker buildx" in pieces
    assert not any(p.startswith("package ") and "docker" in p for p in pieces)
    assert len(pieces) == len(set(pieces))
    engine_fix = next(m.fix for m in plan.missing if m.piece == "a running Docker engine")
    assert "docker.io/trixie" in engine_fix and "--bridge=none" in engine_fix


def test_engine_without_containerd_store_is_named_with_the_daemon_json_fix() -> None:
    plan = plan_setup(dataclasses.replace(READY, containerd_store=False))
    assert plan.steps == ()
    (missing,) = plan.missing
    assert "containerd image store" in missing.piece
    assert '"containerd-snapshotter": true' in missing.fix
    assert str(host.DAEMON_JSON) in missing.fix


def test_buildx_plugin_present_but_not_found_is_linked() -> None:
    facts = dataclasses.replace(READY, buildx_works=False, buildx_plugin_present=True)
    assert actions(facts) == ["link-buildx"]


def test_missing_buildx_without_apt_names_the_install_command() -> None:
    facts = dataclasses.replace(
        READY,
        can_apt=False,
        buildx_works=False,
        buildx_plugin_present=False,
        missing_packages=("docker-buildx",),
    )
    plan = plan_setup(facts)
    assert plan.steps == ()
    assert any(m.piece == "docker buildx" and "docker-buildx/trixie" in m.fix for m in plan.missing)


def test_stopped_engine_is_started_without_reinstalling() -> None:
    facts = dataclasses.replace(READY, engine_answers=False, containerd_store=False)
    assert actions(facts) == ["start-dockerd"]


def test_daemon_json_is_written_before_the_engine_starts() -> None:
    facts = dataclasses.replace(READY, engine_answers=False, daemon_json_current=False)
    assert actions(facts) == ["daemon-json", "start-dockerd"]


def test_mounted_binfmt_is_only_enabled() -> None:
    facts = dataclasses.replace(READY, emulated_machines=("ppc64le",))
    plan = plan_setup(facts)
    assert [s.action for s in plan.steps] == ["enable-binfmt"]
    assert "s390x" in plan.steps[0].why


def test_current_apt_sources_are_not_rewritten() -> None:
    facts = dataclasses.replace(FRESH_DEBIAN, apt_sources_current=True)
    assert "apt-sources" not in actions(facts)
    assert "apt-install" in actions(facts)


def test_bookworm_only_packages_need_no_trixie_source() -> None:
    facts = dataclasses.replace(READY, missing_packages=("mmdebstrap",))
    assert actions(facts) == ["apt-install"]


def test_answering_registry_is_not_started_again() -> None:
    facts = dataclasses.replace(FRESH_DEBIAN, registry_answers=True)
    assert "start-registry" not in actions(facts)


# --- texts ------------------------------------------------------------------------


def test_trixie_source_reuses_bookworm_uri_components_and_key() -> None:
    text = host.trixie_sources_text(DEBIAN_SOURCES_SAMPLE)
    assert text == (
        "Types: deb\n"
        "URIs: http://mirror.example/debian\n"
        "Suites: trixie\n"
        "Components: main contrib\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def test_sources_without_bookworm_are_refused_naming_the_file() -> None:
    with pytest.raises(host.HostError, match=r"debian\.sources has no stanza with suite bookworm"):
        host.trixie_sources_text("Types: deb\nURIs: http://x/debian\nSuites: sid\n")


def test_trixie_pin_is_low_priority() -> None:
    assert "Pin: release n=trixie" in host.TRIXIE_PIN_TEXT
    assert "Pin-Priority: 100" in host.TRIXIE_PIN_TEXT


def test_daemon_json_gets_the_store_and_cdi_and_keeps_other_settings() -> None:
    text = host_setup.daemon_json_with_store('{"debug": true, "features": {"buildkit": true}}')
    assert json.loads(text) == {
        "debug": True,
        "features": {"buildkit": True, "cdi": True, "containerd-snapshotter": True},
    }
    assert json.loads(host_setup.daemon_json_with_store("")) == {
        "features": {"cdi": True, "containerd-snapshotter": True}
    }


def test_an_engine_setup_started_without_cdi_is_restarted_after_daemon_json() -> None:
    facts = dataclasses.replace(
        READY, engine_cdi=False, engine_started_by_setup=True, daemon_json_current=False
    )
    assert actions(facts) == ["daemon-json", "restart-dockerd"]
    assert "CDI" in plan_setup(facts).steps[-1].why


def test_an_engine_setup_did_not_start_is_never_restarted_but_named() -> None:
    plan = plan_setup(dataclasses.replace(READY, engine_cdi=False, engine_started_by_setup=False))
    assert plan.steps == ()
    (missing,) = plan.missing
    assert missing.piece.startswith("CDI in the engine")
    assert '"cdi": true' in missing.fix


def test_daemon_json_that_is_not_an_object_is_left_alone() -> None:
    with pytest.raises(host.HostError, match="not a JSON object; left unchanged"):
        host_setup.daemon_json_with_store("[1, 2]")


def test_install_command_takes_engine_from_trixie_and_keeps_bookworm_containerd() -> None:
    command = host_plan.install_command(("docker.io", "docker-buildx", "mmdebstrap"))
    assert command.split()[:4] == ["apt-get", "install", "-y", "--no-install-recommends"]
    assert "docker.io/trixie" in command.split()
    assert "docker-buildx/trixie" in command.split()
    assert "mmdebstrap" in command.split()
    assert "containerd/bookworm" in command.split()
    assert "containerd/bookworm" not in host_plan.install_command(("cosign",))


def test_registry_config_listens_on_loopback_and_stores_under_the_given_path(
    tmp_path: Path,
) -> None:
    text = host_setup.registry_config_text(tmp_path / "registry")
    assert "addr: 127.0.0.1:5000" in text
    assert f"rootdirectory: {tmp_path / 'registry'}" in text


def test_containerd_store_is_read_from_the_driver_status() -> None:
    with_store = {"DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]}
    classic = {"DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]]}
    assert host.uses_containerd_store(with_store)
    assert not host.uses_containerd_store(classic)
    assert not host.uses_containerd_store({})


@pytest.mark.parametrize(
    ("status", "flags", "interpreter_exists", "runs"),
    [
        ("enabled", "POCF", True, True),
        ("disabled", "POCF", True, False),
        ("enabled", "POC", True, False),  # no fix-binary: containers would lack the interpreter
        ("enabled", "PF", False, False),
    ],
)
def test_binfmt_entry_counts_only_when_enabled_fixed_and_present(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    status: str,
    flags: str,
    interpreter_exists: bool,
    runs: bool,
) -> None:
    interpreter = tmp_path / "qemu-s390x-static"
    if interpreter_exists:
        interpreter.write_text("")
    (tmp_path / "qemu-s390x").write_text(
        f"{status}\ninterpreter {interpreter}\nflags: {flags}\noffset 0\nmagic 7f454c46\n"
    )
    monkeypatch.setattr(host, "BINFMT_DIR", tmp_path)
    assert host.binfmt_runs("s390x") is runs
    assert host.binfmt_runs("ppc64le") is False  # no entry at all


def test_missing_docker_sdk_stops_setup_instead_of_starting_a_second_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # makes `import docker` fail
    with pytest.raises(host.HostError, match="docker Python SDK is not importable"):
        host.engine_info()


def test_pid_file_of_another_program_is_not_a_running_dockerd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "docker.pid"
    monkeypatch.setattr(host, "DOCKERD_PID_FILE", pid_file)
    assert host.running_dockerd() is None  # no pid file
    pid_file.write_text(f"{os.getpid()}\n")  # this test's own process: alive, not dockerd
    assert host.running_dockerd() is None
    pid_file.write_text("not a pid\n")
    assert host.running_dockerd() is None


# --- the real host (engine) ---------------------------------------------------------


@pytest.fixture(scope="module")
def ready_host() -> HostFacts:
    root = Path(__file__).resolve().parents[2]
    return host_setup.setup(host_setup.HostPaths(cache=root / ".cache"), log=lambda line: None)


@pytest.mark.engine
def test_setup_leaves_a_host_that_plans_nothing_on_a_second_look(ready_host: HostFacts) -> None:
    assert ready_host.engine_answers and ready_host.containerd_store and ready_host.buildx_works
    assert ready_host.registry_answers
    assert set(ready_host.emulated_machines) == set(ready_host.foreign_machines)
    again = plan_setup(host.probe())
    assert again.steps == () and again.missing == ()


@pytest.mark.engine
def test_first_docker_on_path_runs_buildx(ready_host: HostFacts) -> None:
    result = subprocess.run(["docker", "buildx", "version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "buildx" in result.stdout


@pytest.mark.engine
def test_foreign_platforms_are_registered_with_a_working_emulator(ready_host: HostFacts) -> None:
    for machine in ready_host.foreign_machines:
        assert host.binfmt_runs(machine), f"binfmt_misc does not hand {machine} binaries to QEMU"
        result = subprocess.run(
            [f"qemu-{machine}-static", "--version"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "qemu" in result.stdout.lower(), (machine, result)


@pytest.mark.engine
def test_daemons_started_by_setup_run_in_their_own_session(ready_host: HostFacts) -> None:
    root = Path(__file__).resolve().parents[2]
    pid_files = sorted((root / ".cache" / "host").glob("*.pid"))
    if not pid_files:
        pytest.skip("this host's engine and registry were not started by setup")
    for pid_file in pid_files:
        pid = int(pid_file.read_text())
        try:
            session = os.getsid(pid)
        except ProcessLookupError:
            continue  # an earlier daemon, replaced since; the live one is checked by setup
        assert session == pid, f"{pid_file.stem} (pid {pid}) would die with the shell"


@pytest.mark.engine
def test_the_answering_engine_is_seen_as_a_running_dockerd(ready_host: HostFacts) -> None:
    if not host.DOCKERD_PID_FILE.exists():
        pytest.skip("the engine here is not a local dockerd (DOCKER_HOST or a VM)")
    assert host.running_dockerd() == int(host.DOCKERD_PID_FILE.read_text())


def test_a_tool_present_as_a_command_is_not_missing_even_without_its_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GitHub's runners have cosign from an action and kustomize preinstalled, not from dpkg.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    cosign = fake_bin / "cosign"
    cosign.write_text("#!/bin/sh\n")
    cosign.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    assert host.missing_packages(("cosign", "docker-registry")) == ("docker-registry",)


# --- a GitHub-hosted runner (ubuntu-24.04) -------------------------------------------

# docker-ce 28 under systemd on the classic store, Ubuntu (no debian.sources), sudo,
# no QEMU, no registry, cosign installed by its action, Ubuntu's build tools missing.
GITHUB_RUNNER = dataclasses.replace(
    READY,
    runner="github",
    apt_sources_current=True,
    missing_packages=host.GITHUB_RUNNER_PACKAGES,
    containerd_store=False,
    engine_cdi=False,
    daemon_json_current=False,
    engine_systemd=True,
    binfmt_mounted=True,
    emulated_machines=(),
    registry_answers=False,
    registry_installed=False,
)


def test_github_runner_switches_its_systemd_engine_to_the_containerd_store_through_systemctl() -> (
    None
):
    steps = actions(GITHUB_RUNNER)

    assert steps.index("daemon-json") < steps.index("restart-docker-service")
    assert "restart-dockerd" not in steps and "start-dockerd" not in steps
    assert "apt-sources" not in steps  # Ubuntu's packages only, no trixie


def test_github_runner_installs_ubuntu_build_tools_and_the_debian_keyring_without_trixie() -> None:
    (install,) = [s for s in plan_setup(GITHUB_RUNNER).steps if s.action == "apt-install"]

    assert "debian-archive-keyring" in install.args and "mmdebstrap" in install.args
    assert not set(install.args) & {"docker.io", "docker-buildx", "cosign", "kustomize"}
    assert "/trixie" not in host_plan.install_command(install.args)


def test_github_runner_then_registers_qemu_and_starts_the_registry() -> None:
    steps = actions(GITHUB_RUNNER)

    assert steps.index("apt-install") < steps.index("enable-binfmt")
    assert steps[-1] == "start-registry"


def test_github_runner_replaces_the_docker_registry_unit_with_its_own_registry() -> None:
    facts = dataclasses.replace(
        GITHUB_RUNNER, registry_service=True, registry_answers=True, registry_installed=True
    )

    steps = actions(facts)

    assert steps.index("stop-registry-service") == steps.index("start-registry") - 1


def test_github_runner_without_cosign_names_the_installer_action() -> None:
    facts = dataclasses.replace(GITHUB_RUNNER, cosign_on_path=False)

    (missing,) = plan_setup(facts).missing

    assert missing.piece == "cosign" and "sigstore/cosign-installer" in missing.fix


def test_a_ready_github_runner_plans_nothing() -> None:
    ready = dataclasses.replace(READY, runner="github", engine_systemd=True)

    assert plan_setup(ready) == host_plan.HostPlan((), ())


def test_the_runner_is_github_when_asked_or_inside_github_actions() -> None:
    assert host.detect_runner("github", {}) == "github"
    assert host.detect_runner("", {"GITHUB_ACTIONS": "true"}) == "github"
    assert host.detect_runner("", {}) == ""
    with pytest.raises(host.HostError, match="--runner 'gitlab'"):
        host.detect_runner("gitlab", {})


def test_root_commands_go_through_sudo_only_when_not_root() -> None:
    argv = ["systemctl", "restart", "docker"]

    assert host.as_root(argv, euid=0) == argv
    assert host.as_root(argv, euid=1001) == ["sudo", *argv]


def test_registry_storage_given_by_the_job_replaces_the_default(tmp_path: Path) -> None:
    default = host_setup.HostPaths(cache=tmp_path)
    given = host_setup.HostPaths(cache=tmp_path, registry_storage=tmp_path / "registry-data")

    assert default.registry_data == tmp_path / "registry"
    assert given.registry_data == tmp_path / "registry-data"


def test_tools_only_installs_the_tools_and_leaves_engine_qemu_and_registry_alone() -> None:
    steps = [s.action for s in plan_setup(GITHUB_RUNNER, tools_only=True).steps]

    assert steps == ["apt-install"]


def test_tools_only_still_names_a_missing_cosign() -> None:
    facts = dataclasses.replace(GITHUB_RUNNER, cosign_on_path=False)

    assert [m.piece for m in plan_setup(facts, tools_only=True).missing] == ["cosign"]
