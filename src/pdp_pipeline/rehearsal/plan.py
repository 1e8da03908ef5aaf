"""What the rehearsal runs, decided from the workflow files alone (pure, tested).

Each rehearsed job is one act invocation (`act_argv`) with every `uses:` of the
workflow replaced by our stand-in action at the exact pinned commit (`action_map`);
an action without a stand-in stops the rehearsal before anything runs, because act
would try to fetch it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pdp_pipeline import platforms

OWNER_REPO = "power-device-plugin/power-device-plugin"
RELEASE_TAG = "v0.0.99"
PLATFORM = "ubuntu-24.04=-self-hosted"
# What ghcr.io and registry.access.redhat.com are to a GitHub job: a registry outside the
# job that outlives it. Served inside every job's network namespace on this port, over one
# storage kept between rehearsals; the job's own loopback registry stays on 127.0.0.1:5000.
REMOTE_PORT = 5001
REMOTE_REGISTRY = f"127.0.0.1:{REMOTE_PORT}/{OWNER_REPO.split('/')[0]}"
STANDIN_BASE = f"127.0.0.1:{REMOTE_PORT}/ubi9-standin/ubi"
# ci.yml's ubi9 leg reads vars.UBI9_MIRROR (a mirror of the pinned ubi9, by digest): the
# rehearsal sets it to the stand-in, since registry.access.redhat.com is out of reach.
MIRROR_VARIABLE = "UBI9_MIRROR"

# The pinned action → the folder of its stand-in under tests/rehearsal/actions/.
STAND_INS = {
    "actions/checkout": "checkout",
    "actions/setup-python": "setup-python",
    "actions/cache": "cache",
    "actions/upload-artifact": "upload-artifact",
    "actions/download-artifact": "download-artifact",
    "docker/setup-buildx-action": "setup-buildx",
    "docker/login-action": "login",
    "sigstore/cosign-installer": "cosign-installer",
}

# OWNER/REPO[/SUBPATH]@REF: a subpath (actions/cache/restore) is an action of the same
# repository, so it maps to the same stand-in folder, which has that subfolder.
_USES = re.compile(r"^\s*-?\s*uses:\s*([\w.-]+/[\w.-]+)(?:/[\w./-]+)?@(\S+)", re.MULTILINE)


class RehearsalError(Exception):
    """The rehearsal cannot run as asked; the message says what and why."""


@dataclass(frozen=True)
class RehearsedJob:
    """One act run: a workflow, an event, the job (its `needs` run first) and matrix legs."""

    name: str
    workflow: str  # file name under .github/workflows
    event: str
    job: str
    matrix: tuple[tuple[str, str], ...] = ()
    ref: str = "refs/heads/main"
    variables: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()
    payload: Mapping[str, object] = field(default_factory=dict)
    # Keyless signing needs GitHub's OIDC token and Fulcio: the job gets the rehearsal's
    # key as the release environment's COSIGN_PRIVATE_KEY / COSIGN_PASSWORD instead.
    signs_with_key: bool = False
    # The repository variables that get the stand-in ubi9 mirror (image@digest).
    mirror_variables: tuple[str, ...] = (MIRROR_VARIABLE,)


# The rehearsal runs on this host, without QEMU: the legs of its own platform.
NATIVE = platforms.native().arch

JOBS = (
    RehearsedJob(
        "wheels-native",
        "wheels.yml",
        "workflow_dispatch",
        "wheels",
        matrix=(("arch", NATIVE),),
        variables=(("RELEASE_REGISTRY", REMOTE_REGISTRY),),
        signs_with_key=True,
    ),
    RehearsedJob("ci-ubi9", "ci.yml", "push", "images", matrix=(("base", "ubi9"),)),
    RehearsedJob("ci-ubi9-again", "ci.yml", "push", "images", matrix=(("base", "ubi9"),)),
    RehearsedJob("ci-debian", "ci.yml", "push", "images", matrix=(("base", "debian"),)),
    RehearsedJob(
        "release",
        "release.yml",
        "push",
        "release",
        ref=f"refs/tags/{RELEASE_TAG}",
        matrix=(("arch", NATIVE),),
        # A release kept on this host: the host's own platform, on the stand-in base.
        variables=(("RELEASE_REGISTRY", REMOTE_REGISTRY), ("RELEASE_ARCH", "native")),
        signs_with_key=True,
        mirror_variables=("RELEASE_BASE_IMAGE",),
    ),
)


# What `invoke test` rehearses (its budget: 20 minutes on the 2-core host).
# - ci-debian rebuilds three runtimes under QEMU (about 10 minutes) whenever the cached
#   ones do not verify, which is every run while the build key is made per clone; it runs
#   by hand (`invoke rehearse --jobs ci-debian`) and joins this list once the key is not.
# - release cannot end green here: `invoke release` builds every platform on the pinned
#   ubi9 (out of reach, and a release takes no mirror) from wheels images that, for the
#   platforms PyPI has no grpcio wheel for, only an hours-long compile makes. Run by hand:
#   --jobs release.
TEST_JOBS = "wheels-native,ci-ubi9,ci-ubi9-again"


def select_jobs(names: str) -> tuple[RehearsedJob, ...]:
    """`all` or a comma list of JOBS names, in JOBS order; an unknown name is an error."""
    known = {job.name: job for job in JOBS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted or wanted == ["all"]:
        return JOBS
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise RehearsalError(
            f"--jobs: unknown {', '.join(unknown)}; choose from all, {', '.join(known)}"
        )
    return tuple(job for job in JOBS if job.name in wanted)


def pinned_actions(workflow_text: str) -> list[tuple[str, str]]:
    """(owner/repo, ref) of every `uses:` in a workflow, in order, without repeats."""
    seen: list[tuple[str, str]] = []
    for repo, ref in _USES.findall(workflow_text):
        if (repo, ref) not in seen:
            seen.append((repo, ref))
    return seen


_CALLS = re.compile(r"^\s*uses:\s*\./(\.github/workflows/[\w.-]+\.ya?ml)", re.MULTILINE)


def with_called_workflows(workflow_text: str, read: Callable[[str], str]) -> str:
    """The workflow's text followed by that of every local workflow it calls (`uses: ./…`).

    act runs a called workflow's steps with the same `--local-repository` map, so the
    actions of wheels.yml called from release.yml need their stand-ins too.
    """
    texts, seen, queue = [workflow_text], set(), _CALLS.findall(workflow_text)
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        called = read(path)
        texts.append(called)
        queue += _CALLS.findall(called)
    return "\n".join(texts)


def action_map(workflow_text: str, actions_dir: Path) -> list[str]:
    """`--local-repository OWNER/REPO@REF=DIR` values for every action the workflow uses."""
    values = []
    for repo, ref in pinned_actions(workflow_text):
        if repo not in STAND_INS:
            raise RehearsalError(
                f"{repo}@{ref} has no stand-in under {actions_dir}: act would fetch it,"
                " and nothing may be fetched here"
            )
        values.append(f"{repo}@{ref}={actions_dir / STAND_INS[repo]}")
    return values


def event_payload(job: RehearsedJob, sha: str) -> dict[str, object]:
    """The event file act reads: the ref pushed (branch or tag) and the commit."""
    payload: dict[str, object] = {
        "ref": job.ref,
        "after": sha,
        "repository": {
            "full_name": OWNER_REPO,
            "name": OWNER_REPO.split("/")[1],
            "owner": {"login": OWNER_REPO.split("/")[0]},
            "default_branch": "main",
        },
    }
    if job.event == "workflow_dispatch":
        payload["inputs"] = {}
    payload.update(job.payload)
    return payload


def act_argv(
    act: str,
    job: RehearsedJob,
    workflow_text: str,
    actions_dir: Path,
    event_file: Path,
    action_cache: Path,
    mirror: str = "",
    key_secrets: tuple[tuple[str, str], ...] = (),
) -> list[str]:
    argv = [
        act,
        job.event,
        "--workflows",
        f".github/workflows/{job.workflow}",
        "--job",
        job.job,
        "--platform",
        PLATFORM,
        "--eventpath",
        str(event_file),
        "--action-offline-mode",
        "--no-skip-checkout",
        "--no-cache-server",
        "--concurrent-jobs",
        "1",
        "--action-cache-path",
        str(action_cache),
    ]
    for value in action_map(workflow_text, actions_dir):
        argv += ["--local-repository", value]
    for key, value in job.matrix:
        argv += ["--matrix", f"{key}:{value}"]
    variables = list(job.variables)
    if mirror:
        variables += [(name, mirror) for name in job.mirror_variables]
    for key, value in variables:
        argv += ["--var", f"{key}={value}"]
    secrets = [("GITHUB_TOKEN", "rehearsal-has-no-token"), *job.secrets]
    if job.signs_with_key:
        secrets += key_secrets
    for key, value in secrets:
        argv += ["--secret", f"{key}={value}"]
    return argv


def runner_env(
    *,
    home: Path,
    state: Path,
    store: Path,
    tools: Path,
    shims: Path,
    repo: Path,
    host_python_dir: Path,
    pipeline_python: str,
    pipeline_src: str,
    proxy_port: int,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The environment act and every step see: a runner's, not this shell's."""
    proxy = f"http://127.0.0.1:{proxy_port}"
    system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env = {
        "PATH": f"{shims}:{system_path}",
        "HOME": str(home),
        "USER": "root",
        "LANG": "C.UTF-8",
        "DOCKER_HOST": f"unix://{state / 'docker.sock'}",
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "http_proxy": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "127.0.0.1,localhost,::1,[::1]",
        "no_proxy": "127.0.0.1,localhost,::1,[::1]",
        "PDP_REHEARSAL_REPO": str(repo),
        "PDP_REHEARSAL_STORE": str(store),
        "PDP_REHEARSAL_TOOLS": str(tools),
        "PDP_REHEARSAL_STATE": str(state),
        "PDP_REHEARSAL_PYTHON": pipeline_python,
        "PDP_REHEARSAL_HOST_PATH": f"{host_python_dir}:{system_path}",
        "PDP_REHEARSAL_SRC": pipeline_src,
        "ImageOS": "ubuntu24",
        "RUNNER_TOOL_CACHE": str(home / "hostedtoolcache"),
    }
    env.update(extra)
    return env
