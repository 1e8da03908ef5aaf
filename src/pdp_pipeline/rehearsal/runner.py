"""One GitHub runner, shaped on this host, for one rehearsed job (runs inside its namespaces).

`run.py` starts `python -m pdp_pipeline.rehearsal.runner job CONFIG` under
`unshare --mount --net --fork`: a network namespace of its own (its 127.0.0.1:5000 is
the job's registry, never the host's) and a mount namespace in which
`/etc/docker/daemon.json` is the job's own file, `/usr/bin/cosign` is hidden until a step
installs cosign, and `/var/run/docker.pid` (the host engine's) reads empty. It starts a
dockerd as docker-ce 28 starts on ubuntu-24.04 (classic image store, no features), with
its own socket, data-root, exec-root and pid file, runs act, then stops every process left
in its network namespace, as a runner VM is thrown away after its job.

`python -m pdp_pipeline.rehearsal.runner systemctl ARGS` is the `systemctl` shim: the
only unit is `docker`, whose restart stops that dockerd and starts it with the same flags.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pdp_pipeline.rehearsal import netproxy

STATE_ENV = "PDP_REHEARSAL_STATE"
RUNNER_DAEMON_JSON = "{}\n"  # docker-ce 28 on ubuntu-24.04: no daemon.json features


def dockerd_argv(state: Path, config_file: str) -> list[str]:
    return [
        "dockerd",
        "--config-file",
        config_file,
        "--data-root",
        str(state / "data"),
        "--exec-root",
        str(state / "exec"),
        "--pidfile",
        str(state / "dockerd.pid"),
        "-H",
        f"unix://{state / 'docker.sock'}",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
    ]


def _pid(state: Path) -> int | None:
    try:
        pid = int((state / "dockerd.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _answers(state: Path) -> bool:
    return (
        subprocess.run(
            ["docker", "-H", f"unix://{state / 'docker.sock'}", "version"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def start_dockerd(state: Path) -> None:
    argv = json.loads((state / "dockerd.argv.json").read_text())
    with open(state / "dockerd.log", "ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd="/",
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while not _answers(state):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = (state / "dockerd.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"rehearsal: the runner's dockerd did not come up:\n{tail}")
        time.sleep(0.5)


def stop_dockerd(state: Path) -> None:
    pid = _pid(state)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _pid(state) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid(state) == pid:
        os.kill(pid, signal.SIGKILL)


def systemctl(args: list[str]) -> int:
    """The shim's answers: `restart|start|stop|is-active docker`; other units are absent."""
    state = Path(os.environ[STATE_ENV])
    verbs = [a for a in args if not a.startswith("-")]
    if len(verbs) != 2:
        print(f"systemctl (rehearsal shim): cannot do {' '.join(args)!r}", file=sys.stderr)
        return 1
    verb, unit = verbs[0], verbs[1].removesuffix(".service")
    if unit != "docker":
        if verb == "is-active":
            print("inactive")
            return 3
        print(f"Unit {unit}.service not loaded (rehearsal shim).", file=sys.stderr)
        return 5
    if verb == "is-active":
        print("active" if _pid(state) else "inactive")
        return 0 if _pid(state) else 3
    if verb in ("stop", "restart"):
        stop_dockerd(state)
    if verb in ("start", "restart"):
        start_dockerd(state)
    print(f"systemctl (rehearsal shim): {verb} docker done")
    return 0


def _same_netns_pids() -> list[int]:
    mine = os.readlink("/proc/self/ns/net")
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), os.getppid()):
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/net") == mine:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def shut_down(state: Path) -> None:
    """The VM goes away: the engine first (it stops its containerd), then every process left."""
    stop_dockerd(state)
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        pids = _same_netns_pids()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _same_netns_pids() and time.monotonic() < deadline:
            time.sleep(0.2)


def _mount_bind(source: str, target: str) -> None:
    subprocess.run(["mount", "--bind", source, target], check=True)


def kept_under_tmp(paths: list[str]) -> list[str]:
    """Of ``paths``, those under /tmp that a fresh /tmp would hide, none inside another."""
    under = sorted({os.path.normpath(p) for p in paths if os.path.normpath(p).startswith("/tmp/")})
    return [p for p in under if not any(p.startswith(q + "/") for q in under if q != p)]


def _fresh_tmp(state: Path, keep: list[str]) -> None:
    """A fresh VM's /tmp: nothing of an earlier job (CI's /tmp/registry-data) is left there.

    The checkout under test (and its logs) may itself live under /tmp, as a fresh clone
    often does: those paths are carried over into the new /tmp by bind mounts, staged in
    the job's state directory while the tmpfs goes on."""
    staged: list[tuple[Path, str]] = []
    for index, path in enumerate(kept_under_tmp(keep)):
        stage = state / f"kept-{index}"
        stage.mkdir(exist_ok=True)
        _mount_bind(path, str(stage))
        staged.append((stage, path))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/tmp"], check=True)
    for stage, path in staged:
        Path(path).mkdir(parents=True, exist_ok=True)
        _mount_bind(str(stage), path)


def job(config_path: Path) -> int:
    config = json.loads(config_path.read_text())
    state = Path(config["state"])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    forward = netproxy.forward_tcp(Path(config["proxy_socket"]))
    daemon_json = state / "daemon.json"
    daemon_json.write_text(RUNNER_DAEMON_JSON)
    _mount_bind(str(daemon_json), config["daemon_json"])
    empty = state / "host-docker.pid"
    empty.write_text("")
    if Path("/var/run/docker.pid").exists():
        _mount_bind(str(empty), "/var/run/docker.pid")
    for hidden in config["hide"]:
        if Path(hidden).exists():
            _mount_bind("/dev/null", hidden)
    # This checkout (its venv, stand-in actions, stores), the commit under test and the log.
    checkout = str(Path(__file__).resolve().parents[3])
    _fresh_tmp(state, [checkout, config["act_cwd"], os.path.dirname(config["log"])])
    (state / "dockerd.argv.json").write_text(json.dumps(dockerd_argv(state, config["daemon_json"])))
    status = 1
    try:
        # The registry outside the job (ghcr.io's part), on its own port in this namespace.
        with open(state / "remote-registry.log", "ab") as out:
            subprocess.Popen(
                ["docker-registry", "serve", config["remote_registry"]],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        start_dockerd(state)
        print(f"rehearsal: runner engine up (classic store) on unix://{state / 'docker.sock'}")
        with open(config["log"], "ab") as log:
            process = subprocess.Popen(
                config["act_argv"], cwd=config["act_cwd"], env=config["env"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            status = process.wait()
    finally:
        shut_down(state)
        forward.stop()
    return status


def main(argv: list[str]) -> int:
    if argv[:1] == ["job"] and len(argv) == 2:
        return job(Path(argv[1]))
    if argv[:1] == ["systemctl"]:
        return systemctl(argv[1:])
    print("usage: runner job CONFIG.json | runner systemctl ARGS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
