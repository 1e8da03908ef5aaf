"""Bring the host up: `setup()` repeats probe → plan → act until nothing is left to do.

`act()` runs the steps of a `host_plan.HostPlan`: apt sources and packages,
daemon.json, the engine, the buildx link, binfmt_misc and the registry. The
daemons it starts get their own session, log and pid file under `HostPaths`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pdp_pipeline.host.plan import HostPlan, Step, install_command, plan_setup
from pdp_pipeline.host.probe import (
    BINFMT_DIR,
    BUILDX_PLUGIN,
    DAEMON_JSON,
    DEBIAN_SOURCES,
    DOCKERD_FLAGS,
    DOCKERD_PID_FILE,
    REGISTRY_ADDR,
    TRIXIE_PIN,
    TRIXIE_PIN_TEXT,
    TRIXIE_SOURCES,
    USER_PLUGIN_DIR,
    HostError,
    HostFacts,
    as_root,
    engine_info,
    probe,
    registry_answers,
    running_dockerd,
    trixie_sources_text,
)
from pdp_pipeline.log import Log

# --- the files setup writes (pure) -------------------------------------------


def daemon_json_with_store(current: str) -> str:
    """daemon.json text with the containerd snapshotter and CDI on, other settings kept.

    The containerd store is what lets the default buildx driver push multi-platform
    images; CDI is what lets `docker run --device <vendor>/<class>=<name>` take the
    plugin's CDI grants (the node suite proves them that way)."""
    config = json.loads(current) if current.strip() else {}
    if not isinstance(config, dict):
        raise HostError(f"{DAEMON_JSON} is not a JSON object; left unchanged")
    features = config.setdefault("features", {})
    features["containerd-snapshotter"] = True
    features["cdi"] = True
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


# --- act ---------------------------------------------------------------------


@dataclass(frozen=True)
class HostPaths:
    """Where setup keeps its logs, pid files, the registry config and the registry data."""

    cache: Path
    # Where the registry keeps its data; default .cache/registry. A CI job gives the
    # directory its cache restored (`invoke setup --registry-data DIR`).
    registry_storage: Path | None = None

    @property
    def logs(self) -> Path:
        return self.cache / "host"

    @property
    def registry_data(self) -> Path:
        return self.registry_storage or self.cache / "registry"


def act(plan: HostPlan, paths: HostPaths, log: Log = print) -> None:
    actions: dict[str, Callable[[Step, HostPaths, Log], None]] = {
        "apt-sources": _write_apt_sources,
        "apt-install": _apt_install,
        "daemon-json": _write_daemon_json,
        "start-dockerd": _start_dockerd,
        "restart-dockerd": _restart_dockerd,
        "link-buildx": _link_buildx,
        "mount-binfmt": _mount_binfmt,
        "enable-binfmt": _enable_binfmt,
        "start-registry": _start_registry,
        "restart-docker-service": _restart_docker_service,
        "stop-registry-service": _stop_registry_service,
    }
    for step in plan.steps:
        log(f"setup: {step.action}: {step.why}")
        actions[step.action](step, paths, log)


def setup(
    paths: HostPaths,
    log: Log = print,
    rounds: int = 3,
    runner: str = "",
    tools_only: bool = False,
) -> HostFacts:
    """Bring the host up; return the final facts. Raises HostError naming what is missing.

    `runner` is `github` on a GitHub-hosted runner (`probe.detect_runner`); `tools_only`
    installs the tools and leaves the engine, QEMU and the registry alone."""
    plan = HostPlan((), ())
    for _ in range(rounds):
        facts = probe(runner)
        plan = plan_setup(facts, tools_only)
        if not plan.steps:
            break
        act(plan, paths, log)
    else:
        facts = probe(runner)
        plan = plan_setup(facts, tools_only)
    if plan.steps or plan.missing:
        raise HostError(
            "this host cannot build yet:\n"
            + "".join(f"  - still to do: {s.action} ({s.why})\n" for s in plan.steps)
            + "".join(f"  - missing {m.piece}; fix: {m.fix}\n" for m in plan.missing)
        )
    if tools_only:
        log("setup: ready: the build and signing tools (engine, QEMU and registry untouched)")
        return facts
    log(
        "setup: ready: engine with buildx and the containerd store, QEMU for "
        + (", ".join(facts.emulated_machines) or "nothing (native only)")
        + f", registry on {REGISTRY_ADDR}"
    )
    return facts


def _run(argv: list[str], log: Log, env: dict[str, str] | None = None) -> None:
    argv = as_root(argv)
    log("  $ " + " ".join(argv))
    result = subprocess.run(argv, env=env, check=False)
    if result.returncode != 0:
        raise HostError(f"`{' '.join(argv)}` exited with {result.returncode}; setup stopped there")


def write_root_file(path: Path, text: str) -> None:
    """Write a file only root may write: directly as root, else through `sudo tee`."""
    if os.geteuid() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    subprocess.run(as_root(["mkdir", "-p", str(path.parent)]), check=True)
    result = subprocess.run(
        as_root(["tee", str(path)]), input=text, text=True, capture_output=True, check=False
    )
    if result.returncode != 0:
        raise HostError(f"could not write {path} through sudo: {result.stderr.strip()}")


def _write_apt_sources(step: Step, paths: HostPaths, log: Log) -> None:
    write_root_file(TRIXIE_SOURCES, trixie_sources_text(DEBIAN_SOURCES.read_text()))
    write_root_file(TRIXIE_PIN, TRIXIE_PIN_TEXT)
    log(f"  wrote {TRIXIE_SOURCES} and {TRIXIE_PIN}")


def _apt_install(step: Step, paths: HostPaths, log: Log) -> None:
    packages = step.args
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], log, env)
    _run([*install_command(packages).split(), "-q"], log, env)


def _write_daemon_json(step: Step, paths: HostPaths, log: Log) -> None:
    current = DAEMON_JSON.read_text() if DAEMON_JSON.exists() else ""
    write_root_file(DAEMON_JSON, daemon_json_with_store(current))
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


def _restart_dockerd(step: Step, paths: HostPaths, log: Log) -> None:
    """Stop the dockerd setup started (containers stop with it) and start it again, so it
    reads daemon.json anew. Only planned for an engine with setup's own flags."""
    pid = running_dockerd()
    if pid is not None:
        log(f"  stopping dockerd (pid {pid}) to apply {DAEMON_JSON}")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while running_dockerd() == pid:
            if time.monotonic() > deadline:
                raise HostError(f"dockerd (pid {pid}) did not stop within 60 s of SIGTERM")
            time.sleep(0.2)
    _start_dockerd(step, paths, log)


def _restart_docker_service(step: Step, paths: HostPaths, log: Log) -> None:
    """systemd's engine (a GitHub runner's docker-ce) reads daemon.json on restart."""
    _run(["systemctl", "restart", "docker"], log)
    deadline = time.monotonic() + 60
    while engine_info() is None:
        if time.monotonic() > deadline:
            raise HostError("the docker service does not answer 60 s after its restart")
        time.sleep(0.5)
    log("  engine answers")


def _stop_registry_service(step: Step, paths: HostPaths, log: Log) -> None:
    _run(["systemctl", "stop", "docker-registry"], log)
    deadline = time.monotonic() + 30
    while registry_answers():
        if time.monotonic() > deadline:
            raise HostError(f"{REGISTRY_ADDR} still answers 30 s after stopping docker-registry")
        time.sleep(0.5)


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
