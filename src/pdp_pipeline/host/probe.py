"""Make this host able to build: engine with buildx and the containerd store, QEMU, registry.

Three stages, so the decisions are testable without an engine: `probe()` here
reads the host into `HostFacts`, `host_plan.plan_setup()` turns facts into the
steps to take and the pieces that cannot be fixed here (pure), and
`host_setup.act()` runs the steps; `host_setup.setup()` repeats them until
nothing is left to do. This module holds what all three share (the host's
paths and package sets, `HostFacts`, `HostError`) and the probe, which never
changes anything.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pdp_pipeline.platforms import PLATFORMS

REGISTRY_ADDR = "127.0.0.1:5000"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
TRIXIE_SOURCES = Path("/etc/apt/sources.list.d/trixie.sources")
TRIXIE_PIN = Path("/etc/apt/preferences.d/trixie-low-priority")
DAEMON_JSON = Path("/etc/docker/daemon.json")
DOCKERD_PID_FILE = Path("/var/run/docker.pid")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BUILDX_PLUGIN = Path("/usr/libexec/docker/cli-plugins/docker-buildx")
USER_PLUGIN_DIR = Path.home() / ".docker" / "cli-plugins"
DOCKERD_FLAGS = ("--iptables=false", "--ip-masq=false", "--bridge=none")

# bookworm's docker.io is 20.10 without buildx; trixie's is 26.1 with buildx 0.13.
# Only these come from trixie (they need nothing newer than bookworm's libc); the pin
# keeps everything else on bookworm. trixie's skopeo needs libc 2.38, which would pull
# a partial trixie libc upgrade into the host, so skopeo (1.9) comes from bookworm.
TRIXIE_PACKAGES = ("docker.io", "docker-buildx", "kustomize", "cosign")
BOOKWORM_PACKAGES = (
    "skopeo",
    "qemu-user-static",
    "binfmt-support",
    "docker-registry",
    "mmdebstrap",
    "arch-test",  # mmdebstrap refuses foreign architectures without it (only a Recommends)
)
# Selecting docker.io/trixie would otherwise drag trixie's containerd along.
KEEP_FROM_BOOKWORM = ("containerd/bookworm",)
ENGINE_PACKAGES = ("docker.io", "docker-buildx")
# Packages that provide a service; on hosts without apt the service itself is checked.
SERVICE_PACKAGES = (*ENGINE_PACKAGES, "qemu-user-static", "binfmt-support", "docker-registry")
TRIXIE_PIN_TEXT = "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"

# A GitHub-hosted runner (ubuntu-24.04): docker-ce 28 with buildx, managed by systemd, on the
# classic image store; kustomize preinstalled; cosign from sigstore/cosign-installer. What
# setup installs there comes from Ubuntu (no trixie source): the build tools below, and
# Debian's archive keyring so mmdebstrap can build the debian runtime on Ubuntu.
RUNNERS = ("", "github")
GITHUB_RUNNER_PACKAGES = (*BOOKWORM_PACKAGES, "debian-archive-keyring")


def detect_runner(flag: str, env: Mapping[str, str]) -> str:
    """`github` when asked (`--runner github`) or inside GitHub Actions (`GITHUB_ACTIONS=true`)."""
    if flag not in RUNNERS:
        raise HostError(f"--runner {flag!r}: choose github, or leave it out on a build host")
    return flag or ("github" if env.get("GITHUB_ACTIONS") == "true" else "")


def as_root(argv: list[str], euid: int | None = None) -> list[str]:
    """argv as root: through `sudo` when this process is not root (a GitHub runner's user)."""
    return argv if (os.geteuid() if euid is None else euid) == 0 else ["sudo", *argv]


class HostError(Exception):
    """A setup step failed, or pieces are missing that setup cannot provide here."""


@dataclass(frozen=True)
class HostFacts:
    """What `probe()` found; everything `plan_setup()` decides from."""

    can_apt: bool  # root on a Debian-family host with debian.sources: we may install
    apt_sources_current: bool  # trixie source and pin present with our content
    missing_packages: tuple[str, ...]  # of TRIXIE_PACKAGES + BOOKWORM_PACKAGES
    dockerd_installed: bool
    engine_answers: bool
    containerd_store: bool  # the engine uses the containerd image store
    daemon_json_current: bool  # daemon.json enables the containerd snapshotter and CDI
    buildx_works: bool  # `docker buildx version` with the first `docker` on PATH
    buildx_plugin_present: bool  # Debian's plugin file exists
    binfmt_mounted: bool
    foreign_machines: tuple[str, ...]  # kernel machines of the platforms we must emulate
    emulated_machines: tuple[str, ...]  # of those, the ones binfmt_misc will run
    registry_answers: bool
    registry_installed: bool
    # The engine reads CDI specs (its `cdi` feature: the node suite's CDI grants need it).
    engine_cdi: bool = True
    # The running dockerd is the one setup starts (same flags), so setup may restart it.
    engine_started_by_setup: bool = False
    # "github" on a GitHub-hosted runner (detect_runner), "" on a build host.
    runner: str = ""
    # systemd runs the engine (`systemctl is-active docker`): restarted through systemctl.
    engine_systemd: bool = False
    # A systemd docker-registry unit (Ubuntu's package starts one) holds 127.0.0.1:5000.
    registry_service: bool = False
    cosign_on_path: bool = True


# --- the apt sources ---------------------------------------------------------


def bookworm_stanza(debian_sources: str) -> dict[str, str]:
    """The fields of the deb822 stanza that serves bookworm itself (not -security/-updates)."""
    for stanza in debian_sources.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "bookworm" in fields.get("Suites", "").split() and "URIs" in fields:
            return fields
    raise HostError(
        f"{DEBIAN_SOURCES} has no stanza with suite bookworm and a URI;"
        " cannot derive the trixie source or the Debian mirror from it"
    )


def trixie_sources_text(debian_sources: str) -> str:
    """A deb822 trixie source with the URI, components and key of bookworm's stanza."""
    fields = bookworm_stanza(debian_sources)
    lines = ["Types: deb", f"URIs: {fields['URIs']}", "Suites: trixie"]
    lines.append(f"Components: {fields.get('Components', 'main')}")
    if "Signed-By" in fields:
        lines.append(f"Signed-By: {fields['Signed-By']}")
    return "\n".join(lines) + "\n"


# --- probe -------------------------------------------------------------------


def probe(runner: str = "") -> HostFacts:
    """Read the host. Never changes anything."""
    github = runner == "github"
    has_apt = shutil.which("apt-get") is not None
    if github:  # Ubuntu: apt through sudo, Ubuntu's own packages only
        can_apt = has_apt and (os.geteuid() == 0 or shutil.which("sudo") is not None)
    else:
        can_apt = os.geteuid() == 0 and has_apt and DEBIAN_SOURCES.exists()
    engine = engine_info()
    foreign = foreign_machines()
    wanted = GITHUB_RUNNER_PACKAGES if github else TRIXIE_PACKAGES + BOOKWORM_PACKAGES
    return HostFacts(
        can_apt=can_apt,
        apt_sources_current=github or apt_sources_current(),
        missing_packages=missing_packages(wanted),
        dockerd_installed=shutil.which("dockerd") is not None,
        engine_answers=engine is not None,
        containerd_store=engine is not None and uses_containerd_store(engine),
        daemon_json_current=daemon_json_current(),
        buildx_works=command_succeeds(["docker", "buildx", "version"]),
        buildx_plugin_present=BUILDX_PLUGIN.exists(),
        binfmt_mounted=(BINFMT_DIR / "status").exists(),
        foreign_machines=foreign,
        emulated_machines=tuple(m for m in foreign if binfmt_runs(m)),
        registry_answers=registry_answers(),
        registry_installed=shutil.which("docker-registry") is not None,
        engine_cdi=engine is not None and reads_cdi_specs(engine),
        engine_started_by_setup=dockerd_started_by_setup(),
        runner=runner,
        engine_systemd=github and systemd_unit_active("docker"),
        registry_service=github and systemd_unit_active("docker-registry"),
        cosign_on_path=shutil.which("cosign") is not None,
    )


def systemd_unit_active(unit: str) -> bool:
    """`systemctl is-active --quiet UNIT`; False where there is no systemctl."""
    return command_succeeds(["systemctl", "is-active", "--quiet", unit])


def engine_info() -> dict[str, object] | None:
    """`docker info` of the engine the SDK reaches (DOCKER_HOST or the default socket)."""
    try:
        import docker
    except ImportError:
        # Without the SDK every engine would look absent, and setup would start a second one.
        raise HostError(
            "the docker Python SDK is not importable here, so the engine cannot be checked"
            " (run through scripts/in-venv, or pip install docker); nothing was changed"
        ) from None
    try:
        client = docker.from_env(timeout=5)
        try:
            client.ping()
            info: dict[str, object] = client.info()
            return info
        finally:
            client.close()
    except Exception:  # any failure to reach the engine means "no engine" here
        return None


def running_dockerd() -> int | None:
    """The pid of a live dockerd from its pid file, answering or not."""
    try:
        pid = int(DOCKERD_PID_FILE.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == "dockerd" else None


def dockerd_started_by_setup() -> bool:
    """Whether the live dockerd runs with exactly the flags setup starts it with."""
    pid = running_dockerd()
    if pid is None:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return [a.decode() for a in argv if a][1:] == list(DOCKERD_FLAGS)


def reads_cdi_specs(info: dict[str, object]) -> bool:
    """`docker info` lists CDI spec directories only when the engine's cdi feature is on."""
    return bool(info.get("CDISpecDirs"))


def uses_containerd_store(info: dict[str, object]) -> bool:
    status = info.get("DriverStatus") or []
    return any(
        isinstance(row, (list, tuple)) and len(row) == 2 and "containerd.snapshotter" in str(row[1])
        for row in status  # type: ignore[attr-defined]
    )


def foreign_machines() -> tuple[str, ...]:
    here = host_platform.machine()
    return tuple(p.machine for p in PLATFORMS if p.machine != here)


def binfmt_runs(machine: str) -> bool:
    """True if binfmt_misc hands this machine's binaries to an existing interpreter.

    The F (fix-binary) flag matters: without it the interpreter would have to
    exist inside every container, which our images do not carry.
    """
    entry = BINFMT_DIR / f"qemu-{machine}"
    try:
        lines = entry.read_text().splitlines()
    except OSError:
        return False
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    interpreter = Path(fields.get("interpreter", "/nonexistent"))
    return (
        bool(lines)
        and lines[0] == "enabled"
        and "F" in fields.get("flags:", "")
        and (interpreter.exists())
    )


def apt_sources_current() -> bool:
    try:
        wanted = trixie_sources_text(DEBIAN_SOURCES.read_text())
        return TRIXIE_SOURCES.read_text() == wanted and TRIXIE_PIN.read_text() == TRIXIE_PIN_TEXT
    except (OSError, HostError):
        return False


# The command each tool package provides. A host that has the command from elsewhere
# (GitHub's runners: cosign from an action, kustomize preinstalled) has the tool.
TOOL_COMMANDS = {
    "kustomize": "kustomize",
    "cosign": "cosign",
    "skopeo": "skopeo",
    "mmdebstrap": "mmdebstrap",
    "arch-test": "arch-test",
}


def missing_packages(packages: tuple[str, ...]) -> tuple[str, ...]:
    """Packages neither installed per dpkg nor, for tools, present as a command on PATH."""
    on_path = {p for p in packages if p in TOOL_COMMANDS and shutil.which(TOOL_COMMANDS[p])}
    packages = tuple(p for p in packages if p not in on_path)
    if shutil.which("dpkg-query") is None:
        return packages
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    installed = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")}
    return tuple(p for p in packages if p not in installed)


def daemon_json_current() -> bool:
    try:
        config = json.loads(DAEMON_JSON.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or not isinstance(config.get("features"), dict):
        return False
    features = config["features"]
    return features.get("containerd-snapshotter") is True and features.get("cdi") is True


def command_succeeds(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def registry_answers(addr: str = REGISTRY_ADDR) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/v2/", timeout=3) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False
