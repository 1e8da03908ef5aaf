"""Decide how to bring the host up, from `HostFacts` alone (pure).

`plan_setup()` turns what `host.probe()` found into the steps `host_setup.act()`
knows and the pieces that cannot be fixed on this host, each with the command
that would. A ready host plans zero steps, which is what makes setup idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdp_pipeline.host.probe import (
    BINFMT_DIR,
    BUILDX_PLUGIN,
    DAEMON_JSON,
    DOCKERD_FLAGS,
    ENGINE_PACKAGES,
    KEEP_FROM_BOOKWORM,
    REGISTRY_ADDR,
    SERVICE_PACKAGES,
    TRIXIE_PACKAGES,
    HostFacts,
)


@dataclass(frozen=True)
class Step:
    """One action `host_setup.act()` knows (`action` keys its table), and why it is needed."""

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


Plan = tuple[list[Step], list[Missing]]


def plan_setup(facts: HostFacts, tools_only: bool = False) -> HostPlan:
    """Decide the steps and the unfixable gaps from the facts alone, in the order to act.

    `tools_only`: the packages (and cosign) a job without builds needs, such as CI's
    checks job; the engine, QEMU and the registry are left as they are."""
    installing = packages_to_install(facts)
    parts = (
        (_plan_packages(facts, installing), _plan_cosign(facts))
        if tools_only
        else (
            _plan_packages(facts, installing),
            _plan_engine(facts, installing),
            _plan_buildx(facts, installing),
            _plan_qemu(facts),
            _plan_registry(facts, installing),
            _plan_cosign(facts),
        )
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
        if facts.containerd_store and facts.engine_cdi:
            return [], []
        if facts.engine_systemd:
            # A GitHub runner's docker-ce: daemon.json, then systemd restarts it.
            steps = []
            if not facts.daemon_json_current:
                steps.append(
                    Step(
                        "daemon-json", f"enable the containerd image store and CDI in {DAEMON_JSON}"
                    )
                )
            lacking = "the containerd image store" if not facts.containerd_store else "CDI"
            steps.append(
                Step("restart-docker-service", f"the systemd-managed engine runs without {lacking}")
            )
            return steps, []
        if facts.engine_started_by_setup and facts.can_apt:
            steps = []
            if not facts.daemon_json_current:
                steps.append(
                    Step(
                        "daemon-json", f"enable the containerd image store and CDI in {DAEMON_JSON}"
                    )
                )
            lacking = "the containerd image store" if not facts.containerd_store else "CDI"
            steps.append(
                Step("restart-dockerd", f"the engine setup started runs without {lacking}")
            )
            return steps, []
        fix = (
            f'add {{"features": {{"containerd-snapshotter": true, "cdi": true}}}} to {DAEMON_JSON}'
            " and restart the engine"
        )
        if not facts.containerd_store:
            store = "the containerd image store (multi-platform images and OCI indexes need it)"
            return [], [Missing(store, fix)]
        return [], [Missing("CDI in the engine (the node suite's CDI grants need it)", fix)]
    if facts.can_apt and (facts.dockerd_installed or "docker.io" in installing):
        steps = []
        if not facts.daemon_json_current:
            steps.append(
                Step("daemon-json", f"enable the containerd image store and CDI in {DAEMON_JSON}")
            )
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
    if facts.registry_service:
        # Ubuntu's docker-registry unit holds the port with storage of its own: ours replaces it.
        steps = [Step("stop-registry-service", "the docker-registry unit holds " + REGISTRY_ADDR)]
        return [*steps, Step("start-registry", f"a registry of setup's on {REGISTRY_ADDR}")], []
    if facts.registry_answers:
        return [], []
    if facts.can_apt and (facts.registry_installed or "docker-registry" in installing):
        return [Step("start-registry", f"no registry answers on {REGISTRY_ADDR}")], []
    fix = (
        install_command(("docker-registry",))
        + f" (or: docker run -d -p {REGISTRY_ADDR}:5000 registry:2)"
    )
    return [], [Missing(f"a registry on {REGISTRY_ADDR}", fix)]


def _plan_cosign(facts: HostFacts) -> Plan:
    """On a GitHub runner cosign comes from sigstore/cosign-installer (pinned, verified)."""
    if facts.runner != "github" or facts.cosign_on_path:
        return [], []
    return [], [Missing("cosign", "a sigstore/cosign-installer step before invoke setup")]


def install_command(packages: tuple[str, ...]) -> str:
    """The apt command for packages, with `/trixie` where they must come from trixie."""
    named = [f"{p}/trixie" if p in TRIXIE_PACKAGES else p for p in packages]
    if "docker.io" in packages:
        named.extend(KEEP_FROM_BOOKWORM)
    return "apt-get install -y --no-install-recommends " + " ".join(named)
