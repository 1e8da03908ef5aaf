"""The GitHub Actions workflows, checked offline.

`check-jsonschema --builtin-schema vendor.github-workflows` validates their
structure (actionlint's wheel downloads a binary at install time, so it is not
an option on an offline host); the checks below add what a schema cannot know:
every action is pinned by commit, permissions are granted per job and least first,
no checkout keeps its token, one QEMU, and every invoke task and flag a workflow
calls exists. `invoke lint` adds the zizmor audit.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tasks
import yaml
from invoke import Collection

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
RELEASE = WORKFLOWS / "release.yml"
WHEELS = WORKFLOWS / "wheels.yml"
ALL = [CI, WHEELS, RELEASE]

# owner/repo[/path]@vMAJOR[.MINOR[.PATCH]] or @<40-hex commit>; docker:// with a tag or digest.
_PINNED_ACTION = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")
_PINNED_IMAGE = re.compile(r"^docker://[^:@\s]+(:[\w.-]+|@sha256:[0-9a-f]{64})$")
_INVOKE_CALL = re.compile(r"(?:^|[\s;&|(])invoke\s+((?:\\\n|[^\n;&|])*)")


def load(path: Path) -> dict[Any, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path} is not a YAML mapping"
    return document


def triggers(document: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean True.
    on = document.get("on", document.get(True))
    return on if isinstance(on, dict) else {name: None for name in on}


def steps(document: dict[Any, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in document["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def unpinned_uses(document: dict[Any, Any]) -> list[str]:
    """Every `uses:` that names no fixed version (a branch, or nothing at all)."""
    loose = []
    for _, step in steps(document):
        uses = step.get("uses")
        if uses is None or uses.startswith("./"):
            continue
        pattern = _PINNED_IMAGE if uses.startswith("docker://") else _PINNED_ACTION
        if not pattern.match(uses):
            loose.append(uses)
    for job in document["jobs"].values():
        for service in (job.get("services") or {}).values():
            if ":" not in service["image"].rsplit("/", 1)[-1]:
                loose.append(service["image"])
    return loose


def invoke_calls(document: dict[Any, Any]) -> list[list[str]]:
    """The argument lists of every `invoke …` in the workflow's run scripts."""
    calls = []
    for _, step in steps(document):
        script = step.get("run") or ""
        for match in _INVOKE_CALL.finditer(script):
            words = shlex.split(match.group(1).replace("\\\n", " "))
            calls.append(words)
    return calls


def unknown_tasks_and_flags(calls: list[list[str]], collection: Collection) -> list[str]:
    """Tasks not in tasks.py, and flags those tasks do not take."""
    problems = []
    for words in calls:
        name, flags = words[0], [w for w in words[1:] if w.startswith("--")]
        if name not in collection.task_names:
            problems.append(f"task {name!r}")
            continue
        accepted = set()
        for argument in collection[name].get_arguments():
            for argument_name in argument.names:
                accepted.add(argument_name.replace("_", "-"))
                if argument.kind is bool:
                    accepted.add("no-" + argument_name.replace("_", "-"))
        problems += [
            f"{name} {flag}" for flag in flags if flag[2:].split("=", 1)[0] not in accepted
        ]
    return problems


TASKS = Collection.from_module(tasks)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_workflow_validates_against_the_github_workflow_schema(path: Path) -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    steps:\n      - run: true\n")  # no runs-on
    checker = Path(sys.executable).parent / "check-jsonschema"

    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_action_and_service_image_is_pinned_by_version(path: Path) -> None:
    assert unpinned_uses(load(path)) == []


def test_pin_check_catches_branches_and_bare_names() -> None:
    document = {
        "jobs": {
            "j": {
                "services": {"r": {"image": "registry"}},
                "steps": [
                    {"uses": "actions/checkout@main"},
                    {"uses": "actions/checkout"},
                    {"uses": "actions/checkout@v4"},
                    {"uses": "docker://alpine"},
                ],
            }
        }
    }

    assert unpinned_uses(document) == [
        "actions/checkout@main",
        "actions/checkout",
        "docker://alpine",
        "registry",
    ]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_workflows_call_only_tasks_and_flags_that_exist(path: Path) -> None:
    calls = invoke_calls(load(path))

    assert calls, f"{path.name} runs no invoke task: CI must run what developers run"
    assert unknown_tasks_and_flags(calls, TASKS) == []


def test_task_check_catches_a_missing_task_and_flag() -> None:
    calls = [["release", "--dry-run", "--no-such-flag"], ["no-such-task"], ["build", "--no-push"]]

    assert unknown_tasks_and_flags(calls, TASKS) == [
        "release --no-such-flag",
        "task 'no-such-task'",
    ]


def test_ci_runs_lint_tests_and_the_three_architecture_build_on_push_and_pull_request() -> None:
    document = load(CI)

    assert {"push", "pull_request"} <= set(triggers(document))
    tasks_run = [call[0] for call in invoke_calls(document)]
    assert {"lint", "test", "build"} <= set(tasks_run)
    build_step = next(s for _, s in steps(document) if "invoke build" in (s.get("run") or ""))
    # The matrix reaches the shell through the environment, never spliced into the script.
    assert '--arch "$ARCH"' in build_step["run"]
    assert build_step["env"]["ARCH"] == "${{ matrix.arch }}"
    matrix = document["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert {"base": "debian", "arch": "all"} in matrix


def test_ci_pushes_only_to_its_own_registry_and_caches_its_storage() -> None:
    images = load(CI)["jobs"]["images"]

    assert "services" not in images  # an engine restart would stop a service container
    storage = images["env"]["REGISTRY_DATA"]
    run_steps = [step.get("run") or "" for step in images["steps"]]
    # invoke setup restarts the engine into the containerd store, then starts the registry
    # over the restored storage: one program, the one the build hosts run.
    setup = next(i for i, r in enumerate(run_steps) if "invoke setup" in r)
    assert '--registry-data "$REGISTRY_DATA"' in run_steps[setup]
    cache = next(
        step for step in images["steps"] if step.get("uses", "").startswith("actions/cache")
    )
    assert cache["with"]["path"] == storage
    assert images["steps"].index(cache) < setup, "the cached storage is restored first"
    # The key follows what decides the runtime images, so a warm run reuses them.
    assert "containers/runtime-*" in cache["with"]["key"]
    assert "src/pdp_pipeline/images/runtime.py" in cache["with"]["key"]
    build = next(s for s in images["steps"] if "invoke build" in (s.get("run") or ""))
    assert "--registry" not in build["run"]  # the default: the local registry on 127.0.0.1:5000
    assert images["steps"].index(build) > setup


def test_release_runs_on_semver_tags_and_signs_keyless() -> None:
    document = load(RELEASE)

    assert triggers(document) == {"push": {"tags": ["v*.*.*"]}}
    jobs = document["jobs"]
    assert jobs["release"]["permissions"]["id-token"] == "write"
    assert jobs["publish"]["permissions"] == {"contents": "write"}
    assert jobs["publish"]["needs"] == "release"
    calls = invoke_calls(document)
    (release_call,) = [call for call in calls if call[0] == "release"]
    assert "--dry-run" not in release_call and "--key" not in release_call
    release_run = next(s["run"] for _, s in steps(document) if "invoke release" in s.get("run", ""))
    assert "signer=(--identity " in release_run and '"${signer[@]}"' in release_run
    run_steps = [s.get("run") or "" for _, s in steps(document)]
    uses = [s.get("uses") or "" for _, s in steps(document)]
    assert any(u.startswith("docker/login-action@") for u in uses)
    assert any(u.startswith("sigstore/cosign-installer@") for u in uses)
    assert any("gh release create" in r and "out/release/" in r for r in run_steps)
    login = next(i for i, u in enumerate(uses) if u.startswith("docker/login-action@"))
    release_step = next(i for i, r in enumerate(run_steps) if "invoke release" in r)
    assert login < release_step


# --- supply chain ---------------------------------------------------------------------

# `uses: owner/repo@<40-hex commit> # vX.Y.Z`: the commit is what runs, the comment what it is.
_SHA_PIN = re.compile(r"^\s*-?\s*uses:\s*[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+\s*$")
WRITE_SCOPES_BY_JOB = {
    (CI.name, "checks"): {},
    (CI.name, "images"): {},
    (WHEELS.name, "platforms"): {},
    (WHEELS.name, "wheels"): {"packages": "write", "id-token": "write"},
    (RELEASE.name, "wheels"): {"packages": "write", "id-token": "write"},
    (RELEASE.name, "release"): {"packages": "write", "id-token": "write"},
    (RELEASE.name, "publish"): {"contents": "write"},
}


def uses_lines_not_pinned_by_commit(text: str) -> list[str]:
    """Every `uses:` line that is not a full commit with its version in a comment."""
    return [
        line.strip()
        for line in text.splitlines()
        if re.match(r"^\s*-?\s*uses:", line)
        and not _SHA_PIN.match(line)
        and "uses: ./" not in line  # a workflow of this repository, at this commit
    ]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_with_its_version(path: Path) -> None:
    assert uses_lines_not_pinned_by_commit(path.read_text(encoding="utf-8")) == []


def test_commit_pin_check_catches_tags_short_shas_and_missing_versions() -> None:
    text = "\n".join(
        [
            "      - uses: actions/checkout@v4",
            "      - uses: actions/checkout@11bd719",
            "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
            "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2",
        ]
    )
    assert uses_lines_not_pinned_by_commit(text) == [
        "- uses: actions/checkout@v4",
        "- uses: actions/checkout@11bd719",
        "- uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
    ]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_the_workflow_grants_nothing_and_each_job_only_what_it_needs(path: Path) -> None:
    document = load(path)
    assert document["permissions"] == {}
    for name, job in document["jobs"].items():
        granted = job["permissions"]
        writes = {scope: level for scope, level in granted.items() if level == "write"}
        assert writes == WRITE_SCOPES_BY_JOB[(path.name, name)], name
        assert set(granted.values()) <= {"read", "write"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_checkout_keeps_the_token(path: Path) -> None:
    checkouts = [
        step
        for _, step in steps(load(path))
        if step.get("uses", "").startswith("actions/checkout@")
    ]
    assert checkouts
    assert all(step.get("with", {}).get("persist-credentials") is False for step in checkouts)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_one_qemu_and_no_action_for_a_preinstalled_tool(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "docker/setup-qemu-action" not in text  # two QEMUs would compete for binfmt
    assert "setup-kustomize" not in text  # kustomize is on the runner image
    assert "services:" not in text


def test_dependabot_keeps_the_pinned_actions_current() -> None:
    config = load(ROOT / ".github" / "dependabot.yml")
    ecosystems = {update["package-ecosystem"] for update in config["updates"]}
    assert {"github-actions", "pip"} <= ecosystems


def _zizmor(*paths: Path) -> subprocess.CompletedProcess[str]:
    zizmor = Path(sys.executable).parent / "zizmor"
    return subprocess.run(
        [str(zizmor), "--offline", *map(str, paths)], capture_output=True, text=True, check=False
    )


def test_the_offline_audit_finds_nothing_in_our_workflows() -> None:
    result = _zizmor(WORKFLOWS, ROOT / ".github" / "dependabot.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_offline_audit_fails_an_unpinned_checkout_that_keeps_its_token(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\npermissions: write-all\njobs:\n  j:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - uses: actions/checkout@v4\n"
    )
    result = _zizmor(bad)
    assert result.returncode != 0
    assert "unpinned-uses" in result.stdout and "artipacked" in result.stdout


# --- the first GitHub run (issue 17) ----------------------------------------------------

# Every action on its node24 major (Node 20 left the runners on 2026-09-16), by full commit.
# Each commit was confirmed against public repositories that pin the same commit with the
# same version (docs/rehearsal.md lists how); cosign-installer is a composite action.
NODE24_PINS = {
    "actions/checkout": ("08c6903cd8c0fde910a37f88322edcfb5dd907a8", "v5.0.0"),
    "actions/setup-python": ("e797f83bcb11b83ae66e0230d6156d7c80228e7c", "v6.0.0"),
    "actions/cache": ("cdf6c1fa76f9f475f3d7449005a359c84ca0f306", "v5.0.3"),
    "actions/upload-artifact": ("b7c566a772e6b6bfb58ed0dc250532a479d7789f", "v6.0.0"),
    "actions/download-artifact": ("37930b1c2abaa49bbe596cd826c3c89aef350131", "v7.0.0"),
    "docker/setup-buildx-action": ("4d04d5d9486b7bd6fa91e7baf45bbb4f8b9deedd", "v4.0.0"),
    "docker/login-action": ("b45d80f862d83dbcd57f89517bcf500b2ab88fb2", "v4.0.0"),
    "sigstore/cosign-installer": ("faadad0cce49287aee09b3a48701e75088a2c6ad", "v4.0.0"),
}
# OWNER/REPO, an optional subpath (actions/cache/restore: the same repository), the commit.
_USES_LINE = re.compile(
    r"^\s*-?\s*uses:\s*([\w.-]+/[\w.-]+)(?:/[\w./-]+)?@([0-9a-f]{40}) # (v[\d.]+)\s*$"
)


def pins_off_the_node24_list(text: str) -> list[str]:
    """`uses:` lines whose action, commit or version is not the confirmed node24 pin."""
    off = []
    for line in text.splitlines():
        if not re.match(r"^\s*-?\s*uses:", line) or "uses: ./" in line:
            continue
        match = _USES_LINE.match(line)
        if not match or NODE24_PINS.get(match.group(1)) != (match.group(2), match.group(3)):
            off.append(line.strip())
    return off


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_action_is_its_confirmed_node24_commit(path: Path) -> None:
    assert pins_off_the_node24_list(path.read_text(encoding="utf-8")) == []


def test_node24_check_catches_a_node20_commit_of_the_same_action() -> None:
    node20 = "      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2"

    assert pins_off_the_node24_list(node20) == [node20.strip()]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_host_preparation_is_invoke_setup_not_yaml(path: Path) -> None:
    """One program, two places: daemon.json, systemctl, apt and binfmt live in invoke setup."""
    for _, step in steps(load(path)):
        script = step.get("run") or ""
        for shell_setup in ("daemon.json", "systemctl", "apt-get", "update-binfmts", "serve "):
            assert shell_setup not in script, (step.get("name"), shell_setup)


@pytest.mark.parametrize("path", [CI, WHEELS, RELEASE], ids=lambda p: p.name)
def test_the_engine_is_on_the_containerd_store_before_anything_is_built(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        runs = [s.get("run") or "" for s in job.get("steps", [])]
        builds = [i for i, r in enumerate(runs) if re.search(r"invoke (wheels|build|release)", r)]
        if not builds:
            continue
        setup = next((i for i, r in enumerate(runs) if "invoke setup --runner github" in r), None)
        assert setup is not None and setup < min(builds), name
        buildx = [i for i, s in enumerate(job["steps"]) if "setup-buildx" in (s.get("uses") or "")]
        assert all(i > setup for i in buildx), f"{name}: a builder made before the restart"


def test_ci_installs_cosign_before_it_builds_and_signs_ubi9_wheels_with_the_build_key() -> None:
    images = load(CI)["jobs"]["images"]["steps"]
    uses = [s.get("uses") or "" for s in images]
    runs = [s.get("run") or "" for s in images]

    cosign = next(i for i, u in enumerate(uses) if u.startswith("sigstore/cosign-installer@"))
    build = next(i for i, r in enumerate(runs) if "invoke build" in r)
    (wheels_call,) = [c for c in invoke_calls(load(CI)) if c[0] == "wheels"]
    assert cosign < build
    # No signer option: the host build key, the default signer `invoke build` verifies with.
    assert not {"--key", "--keyless", "--identity"} & set(wheels_call)


def test_ci_keeps_the_build_key_in_the_cached_storage() -> None:
    images = load(CI)["jobs"]["images"]
    storage = images["env"]["REGISTRY_DATA"]
    key_dir = images["env"]["PDP_BUILD_KEY_DIR"]

    # The next run restores the key with the runtimes it signed, and so reuses them.
    assert key_dir.startswith(storage.rstrip("/") + "/")
    runs = [s.get("run") or "" for s in images["steps"]]
    assert any("chown" in r and "$PDP_BUILD_KEY_DIR" in r for r in runs)


@pytest.mark.parametrize(("path", "job"), [(RELEASE, "release"), (WHEELS, "wheels")])
def test_jobs_holding_tokens_install_the_hash_locked_tools(path: Path, job: str) -> None:
    assert load(path)["jobs"][job]["env"]["PDP_LOCKED"] == "1"


def test_wheels_signs_keyless_unless_the_release_environment_holds_a_key() -> None:
    run = next(
        s["run"]
        for s in load(WHEELS)["jobs"]["wheels"]["steps"]
        if "invoke wheels" in (s.get("run") or "")
    )
    assert 'signer=(--key "$KEY")' in run and "signer+=(--keyless)" in run
    assert '"${signer[@]}"' in run


def test_the_compile_legs_restore_and_always_save_their_compiled_objects() -> None:
    steps_ = load(WHEELS)["jobs"]["wheels"]["steps"]
    uses = [s.get("uses") or "" for s in steps_]
    restore = next(i for i, u in enumerate(uses) if u.startswith("actions/cache/restore@"))
    save = next(i for i, u in enumerate(uses) if u.startswith("actions/cache/save@"))
    build = next(i for i, s in enumerate(steps_) if "invoke wheels" in (s.get("run") or ""))
    assert restore < build < save
    assert steps_[save]["if"].startswith("always()")
    for step in (steps_[restore], steps_[save]):
        assert "matrix.compile" in step["if"]
        assert step["with"]["path"] == ".cache/compile-cache/${{ matrix.arch }}"
        assert "github.run_id" in step["with"]["key"]  # a key is written once
    assert steps_[restore]["with"]["restore-keys"]


def test_the_release_waits_for_the_wheels_workflow() -> None:
    jobs = load(RELEASE)["jobs"]

    assert jobs["wheels"]["uses"] == "./.github/workflows/wheels.yml"
    assert "wheels" in [jobs["release"]["needs"], *list(jobs["release"]["needs"])]
    assert "workflow_call" in triggers(load(WHEELS))
    assert "secrets" in jobs["wheels"] and jobs["wheels"]["secrets"] != "inherit"


@pytest.mark.parametrize(("path", "job"), [(RELEASE, "release"), (WHEELS, "wheels")])
def test_jobs_with_secrets_read_them_from_the_protected_release_environment(
    path: Path, job: str
) -> None:
    assert load(path)["jobs"][job]["environment"] == "release"


def _identity(path: Path, job: str, repository: str) -> str:
    """The --identity value the job's invoke step passes, computed by bash as on the runner."""
    step = next(s for s in load(path)["jobs"][job]["steps"] if "signer=(" in (s.get("run") or ""))
    lines = [
        line for line in step["run"].splitlines() if line.strip().startswith(("repo=", "signer=("))
    ]
    script = "\n".join([*lines, 'printf "%s" "${signer[1]}"'])
    return subprocess.run(
        ["bash", "-c", script],
        env={"GITHUB_REPOSITORY": repository},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize(("path", "job"), [(RELEASE, "release"), (WHEELS, "wheels")])
def test_the_accepted_signer_is_anchored_to_main_and_release_tags_with_dots_escaped(
    path: Path, job: str
) -> None:
    pattern = re.compile(_identity(path, job, "owner/my.repo"))
    base = "https://github.com/owner/my.repo/.github/workflows/"

    assert pattern.search(base + "wheels.yml@refs/heads/main")
    assert pattern.search(base + "release.yml@refs/tags/v1.2.3")
    assert pattern.search(base + "wheels.yml@refs/tags/v1.2.3")  # called by the release
    for other in (
        base + "wheels.yml@refs/heads/feature",  # any branch's workflow_dispatch
        base + "release.yml@refs/heads/main",
        base + "wheelsXyml@refs/heads/main",  # an unescaped dot
        "https://github.com/owner/myXrepo/.github/workflows/wheels.yml@refs/heads/main",
        "https://github.com/fork/my.repo/.github/workflows/wheels.yml@refs/heads/main",
        base + "wheels.yml@refs/heads/main-evil",  # not anchored at the end
        "x" + base + "wheels.yml@refs/heads/main",  # not anchored at the start
        base + "release.yml@refs/tags/v1.2.3-rc1",
    ):
        assert not pattern.search(other), other


def test_the_schema_check_covers_every_workflow_file() -> None:
    assert sorted(WORKFLOWS.glob("*.yml")) == sorted(ALL)


# --- the platform list (issue 20) ---------------------------------------------------------


def test_the_wheels_matrix_is_the_platform_list_printed_by_a_first_job() -> None:
    jobs = load(WHEELS)["jobs"]
    first = jobs["platforms"]
    step = next(s for s in first["steps"] if "invoke platform-matrix" in (s.get("run") or ""))
    assert '--output "$GITHUB_OUTPUT"' in step["run"]
    assert first["outputs"]["matrix"] == f"${{{{ steps.{step['id']}.outputs.matrix }}}}"
    wheels_job = jobs["wheels"]
    assert wheels_job["needs"] == "platforms"
    assert wheels_job["strategy"]["matrix"] == "${{ fromJSON(needs.platforms.outputs.matrix) }}"
    assert wheels_job["timeout-minutes"] == "${{ matrix.timeout }}"
    # The matrix follows an input (all by default): the release passes its own.
    for trigger in ("workflow_dispatch", "workflow_call"):
        assert triggers(load(WHEELS))[trigger]["inputs"]["arch"]["default"] == "all"


def test_the_printed_matrix_has_the_fields_the_wheels_job_reads() -> None:
    text = WHEELS.read_text(encoding="utf-8")
    fields = set(re.findall(r"(?<![.\w])matrix\.(\w+)", text))
    from pdp_pipeline import platforms

    for leg in platforms.workflow_matrix():
        assert fields <= set(leg), fields - set(leg)


def test_native_builders_come_from_one_json_variable_keyed_by_architecture() -> None:
    for path in (WHEELS, RELEASE):
        text = path.read_text(encoding="utf-8")
        assert "vars.BUILDKIT_ENDPOINTS" in text, path.name
        assert not re.search(r"vars\.BUILDKIT_(?!ENDPOINTS|IMAGE)", text), path.name


def test_ci_s_ubi9_leg_builds_the_runner_s_own_platform() -> None:
    matrix = load(CI)["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert {"base": "ubi9", "arch": "native"} in matrix
    (wheels_call,) = [c for c in invoke_calls(load(CI)) if c[0] == "wheels"]
    assert wheels_call[wheels_call.index("--arch") + 1] == "$ARCH"
