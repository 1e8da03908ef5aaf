"""Make this host able to build: engine with buildx and the containerd store, QEMU, registry.

Three stages, so the decisions are testable without an engine:
`probe()` reads the host into `HostFacts`, `plan_setup()` turns facts into the
steps to take and the pieces that cannot be fixed here (pure), and `act()` runs
the steps. `setup()` repeats probe → plan → act until nothing is left to do,
which is what makes it idempotent: a ready host plans zero steps.
"""

from __future__ import annotations

import json
import os
import platform as host_platform
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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

Log = Callable[[str], None]


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
    daemon_json_current: bool  # daemon.json enables the containerd snapshotter
    buildx_works: bool  # `docker buildx version` with the first `docker` on PATH
    buildx_plugin_present: bool  # Debian's plugin file exists
    binfmt_mounted: bool
    foreign_machines: tuple[str, ...]  # kernel machines of the platforms we must emulate
    emulated_machines: tuple[str, ...]  # of those, the ones binfmt_misc will run
    registry_answers: bool
    registry_installed: bool


@dataclass(frozen=True)
class Step:
    """One action `act()` knows (`action` is a key of its table), and why it is needed."""

    action: str
    why: str
    args: tuple[str, ...] = ()  # e.g. the packages of apt-install


@dataclass(frozen=True)
class Missing:
    """A piece setup cannot provide on this host, and the command that would."""

    piece: str
    fix: str


@dataclass(frozen=True)
class HostPlan:
    steps: tuple[Step, ...]
    missing: tuple[Missing, ...]


# --- plan (pure) -------------------------------------------------------------


Plan = tuple[list[Step], list[Missing]]


def plan_setup(facts: HostFacts) -> HostPlan:
    """Decide the steps and the unfixable gaps from the facts alone, in the order to act."""
    installing = packages_to_install(facts)
    parts = (
        _plan_packages(facts, installing),
        _plan_engine(facts, installing),
        _plan_buildx(facts, installing),
        _plan_qemu(facts),
        _plan_registry(facts, installing),
    )
    steps = tuple(step for part_steps, _ in parts for step in part_steps)
    missing = tuple(gap for _, part_missing in parts for gap in part_missing)
    return HostPlan(steps, missing)


def packages_to_install(facts: HostFacts) -> tuple[str, ...]:
    """Missing packages to install; a working engine (laptop, CI) is never replaced."""
    if not facts.can_apt:
        return ()
    engine_usable = facts.engine_answers and facts.buildx_works
    return tuple(p for p in facts.missing_packages if not (engine_usable and p in ENGINE_PACKAGES))


def _plan_packages(facts: HostFacts, installing: tuple[str, ...]) -> Plan:
    if installing:
        steps = []
        if not facts.apt_sources_current and any(p in TRIXIE_PACKAGES for p in installing):
            steps.append(Step("apt-sources", "add Debian trixie as a second source, pinned at 100"))
        steps.append(Step("apt-install", "install " + " ".join(installing), installing))
        return steps, []
    if facts.can_apt:
        return [], []
    # Without apt, the services (engine, QEMU, registry) are named below by what they do;
    # here only the tools, which have no other way in.
    tools = [p for p in facts.missing_packages if p not in SERVICE_PACKAGES]
    return [], [Missing(f"package {p}", install_command((p,))) for p in tools]


def _plan_engine(facts: HostFacts, installing: tuple[str, ...]) -> Plan:
    if facts.engine_answers:
        if facts.containerd_store:
            return [], []
        fix = (
            f'add {{"features": {{"containerd-snapshotter": true}}}} to {DAEMON_JSON}'
            " and restart the engine"
        )
        store = "the containerd image store (multi-platform images and OCI indexes need it)"
        return [], [Missing(store, fix)]
    if facts.can_apt and (facts.dockerd_installed or "docker.io" in installing):
        steps = []
        if not facts.daemon_json_current:
            steps.append(Step("daemon-json", f"enable the containerd image store in {DAEMON_JSON}"))
        steps.append(Step("start-dockerd", "no Docker engine answers on this host"))
        return steps, []
    fix = (
        f"install Docker Engine (Debian: {install_command(ENGINE_PACKAGES)})"
        f" and start it: dockerd {' '.join(DOCKERD_FLAGS)}"
    )
    return [], [Missing("a running Docker engine", fix)]


def _plan_buildx(facts: HostFacts, installing: tuple[str, ...]) -> Plan:
    if facts.buildx_works or "docker-buildx" in installing:
        return [], []
    if facts.buildx_plugin_present:
        return [Step("link-buildx", f"the first docker on PATH does not find {BUILDX_PLUGIN}")], []
    return [], [Missing("docker buildx", install_command(("docker-buildx",)))]


def _plan_qemu(facts: HostFacts) -> Plan:
    unemulated = [m for m in facts.foreign_machines if m not in facts.emulated_machines]
    if not unemulated:
        return [], []
    names = ", ".join(unemulated)
    if facts.can_apt:
        steps = (
            [] if facts.binfmt_mounted else [Step("mount-binfmt", f"{BINFMT_DIR} is not mounted")]
        )
        steps.append(Step("enable-binfmt", f"QEMU is not registered for {names}"))
        return steps, []
    fix = (
        install_command(("qemu-user-static", "binfmt-support")) + " && update-binfmts --enable"
        " (or: docker run --privileged --rm tonistiigi/binfmt --install all)"
    )
    return [], [Missing(f"QEMU user emulation for {names}", fix)]


def _plan_registry(facts: HostFacts, installing: tuple[str, ...]) -> Plan:
    if facts.registry_answers:
        return [], []
    if facts.can_apt and (facts.registry_installed or "docker-registry" in installing):
        return [Step("start-registry", f"no registry answers on {REGISTRY_ADDR}")], []
    fix = (
        install_command(("docker-registry",))
        + f" (or: docker run -d -p {REGISTRY_ADDR}:5000 registry:2)"
    )
    return [], [Missing(f"a registry on {REGISTRY_ADDR}", fix)]


def install_command(packages: tuple[str, ...]) -> str:
    """The apt command for packages, with `/trixie` where they must come from trixie."""
    named = [f"{p}/trixie" if p in TRIXIE_PACKAGES else p for p in packages]
    if "docker.io" in packages:
        named.extend(KEEP_FROM_BOOKWORM)
    return "apt-get install -y --no-install-recommends " + " ".join(named)


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


def daemon_json_with_store(current: str) -> str:
    """daemon.json text with the containerd snapshotter on, other settings kept."""
    config = json.loads(current) if current.strip() else {}
    if not isinstance(config, dict):
        raise HostError(f"{DAEMON_JSON} is not a JSON object; left unchanged")
    features = config.setdefault("features", {})
    features["containerd-snapshotter"] = True
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def registry_config_text(storage: Path) -> str:
    """A distribution 2.x config: loopback only, data under the repo's cache."""
    return (
        "version: 0.1\n"
        "log:\n  level: info\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: {REGISTRY_ADDR}\n"
    )


# --- probe -------------------------------------------------------------------


def probe() -> HostFacts:
    """Read the host. Never changes anything."""
    can_apt = os.geteuid() == 0 and shutil.which("apt-get") is not None and DEBIAN_SOURCES.exists()
    engine = engine_info()
    foreign = foreign_machines()
    return HostFacts(
        can_apt=can_apt,
        apt_sources_current=apt_sources_current(),
        missing_packages=missing_packages(TRIXIE_PACKAGES + BOOKWORM_PACKAGES),
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
    )


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
    return (
        isinstance(config, dict)
        and config.get("features", {}).get("containerd-snapshotter") is True
    )


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


# --- act ---------------------------------------------------------------------


@dataclass(frozen=True)
class HostPaths:
    """Where setup keeps its logs, pid files, the registry config and the registry data."""

    cache: Path

    @property
    def logs(self) -> Path:
        return self.cache / "host"

    @property
    def registry_data(self) -> Path:
        return self.cache / "registry"


def act(plan: HostPlan, paths: HostPaths, log: Log = print) -> None:
    actions: dict[str, Callable[[Step, HostPaths, Log], None]] = {
        "apt-sources": _write_apt_sources,
        "apt-install": _apt_install,
        "daemon-json": _write_daemon_json,
        "start-dockerd": _start_dockerd,
        "link-buildx": _link_buildx,
        "mount-binfmt": _mount_binfmt,
        "enable-binfmt": _enable_binfmt,
        "start-registry": _start_registry,
    }
    for step in plan.steps:
        log(f"setup: {step.action}: {step.why}")
        actions[step.action](step, paths, log)


def setup(paths: HostPaths, log: Log = print, rounds: int = 3) -> HostFacts:
    """Bring the host up; return the final facts. Raises HostError naming what is missing."""
    plan = HostPlan((), ())
    for _ in range(rounds):
        facts = probe()
        plan = plan_setup(facts)
        if not plan.steps:
            break
        act(plan, paths, log)
    else:
        facts = probe()
        plan = plan_setup(facts)
    if plan.steps or plan.missing:
        raise HostError(
            "this host cannot build yet:\n"
            + "".join(f"  - still to do: {s.action} ({s.why})\n" for s in plan.steps)
            + "".join(f"  - missing {m.piece}; fix: {m.fix}\n" for m in plan.missing)
        )
    log(
        "setup: ready: engine with buildx and the containerd store, QEMU for "
        + (", ".join(facts.emulated_machines) or "nothing (native only)")
        + f", registry on {REGISTRY_ADDR}"
    )
    return facts


def _run(argv: list[str], log: Log, env: dict[str, str] | None = None) -> None:
    log("  $ " + " ".join(argv))
    result = subprocess.run(argv, env=env, check=False)
    if result.returncode != 0:
        raise HostError(f"`{' '.join(argv)}` exited with {result.returncode}; setup stopped there")


def _write_apt_sources(step: Step, paths: HostPaths, log: Log) -> None:
    TRIXIE_SOURCES.write_text(trixie_sources_text(DEBIAN_SOURCES.read_text()))
    TRIXIE_PIN.write_text(TRIXIE_PIN_TEXT)
    log(f"  wrote {TRIXIE_SOURCES} and {TRIXIE_PIN}")


def _apt_install(step: Step, paths: HostPaths, log: Log) -> None:
    packages = step.args
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], log, env)
    _run([*install_command(packages).split(), "-q"], log, env)


def _write_daemon_json(step: Step, paths: HostPaths, log: Log) -> None:
    current = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else ""
    DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_JSON.write_text(daemon_json_with_store(current))
    log(f"  wrote {DAEMON_JSON}")


def _start_background(
    name: str, argv: list[str], paths: HostPaths, log: Log
) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session so it outlives the shell that ran setup."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    log_path = paths.logs / f"{name}.log"
    log(f"  $ {' '.join(argv)}  (log: {log_path})")
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd="/",
        )
    (paths.logs / f"{name}.pid").write_text(f"{process.pid}\n")
    return process


def _wait_until(
    name: str,
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    paths: HostPaths,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process.poll() is not None:
            break
        time.sleep(0.5)
    log_path = paths.logs / f"{name}.log"
    tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-20:])
    state = (
        f"exited with {process.returncode}"
        if process.poll() is not None
        else (f"still running (pid {process.pid}) but not answering after {timeout:.0f} s")
    )
    raise HostError(f"{name} {state}; last lines of {log_path}:\n{tail}")


def _start_dockerd(step: Step, paths: HostPaths, log: Log) -> None:
    existing = running_dockerd()
    if existing is not None:
        # Still starting (or stuck): a second dockerd would only fail on the pid file.
        log(f"  a dockerd is already running (pid {existing}); waiting for it to answer")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and running_dockerd() == existing:
            if engine_info() is not None:
                log("  engine answers")
                return
            time.sleep(0.5)
        raise HostError(
            f"dockerd (pid {existing}, from {DOCKERD_PID_FILE}) does not answer after 60 s;"
            f" left running. Look at its log, or stop it (kill {existing}) and run setup again"
        )
    process = _start_background("dockerd", ["dockerd", *DOCKERD_FLAGS], paths, log)
    _wait_until("dockerd", lambda: engine_info() is not None, process, paths, timeout=60)
    log("  engine answers")


def _link_buildx(step: Step, paths: HostPaths, log: Log) -> None:
    USER_PLUGIN_DIR.mkdir(parents=True, exist_ok=True)
    link = USER_PLUGIN_DIR / "docker-buildx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(BUILDX_PLUGIN)
    log(f"  linked {link} -> {BUILDX_PLUGIN}")


def _mount_binfmt(step: Step, paths: HostPaths, log: Log) -> None:
    _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], log)


def _enable_binfmt(step: Step, paths: HostPaths, log: Log) -> None:
    _run(["update-binfmts", "--enable"], log)


def _start_registry(step: Step, paths: HostPaths, log: Log) -> None:
    paths.registry_data.mkdir(parents=True, exist_ok=True)
    config = paths.logs / "registry.yml"
    paths.logs.mkdir(parents=True, exist_ok=True)
    config.write_text(registry_config_text(paths.registry_data.resolve()))
    process = _start_background("registry", ["docker-registry", "serve", str(config)], paths, log)
    _wait_until("registry", registry_answers, process, paths, timeout=30)
    log(f"  registry answers on http://{REGISTRY_ADDR}/v2/ (data: {paths.registry_data})")
