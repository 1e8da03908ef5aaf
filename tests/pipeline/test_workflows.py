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

# owner/repo[/path]@vMAJOR[.MINOR[.PATCH]] or @<40-hex commit>; docker:// with a tag or digest.
_PINNED_ACTION = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")
_PINNED_IMAGE = re.compile(r"^docker://[^:@\s]+(:[\w.-]+|@sha256:[0-9a-f]{64})$")
_INVOKE_CALL = re.compile(r"(?:^|[\s;&|(])invoke\s+((?:[^\n;&|]|\\\n)*)")


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


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
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
    restart = next(i for i, r in enumerate(run_steps) if "systemctl restart docker" in r)
    registry = next(i for i, r in enumerate(run_steps) if "docker-registry serve" in r)
    assert restart < registry, "the registry starts after the engine is configured"
    assert "127.0.0.1:5000" in run_steps[registry] and "$REGISTRY_DATA" in run_steps[registry]
    cache = next(
        step for step in images["steps"] if step.get("uses", "").startswith("actions/cache")
    )
    assert cache["with"]["path"] == storage
    assert images["steps"].index(cache) < registry, "the cached storage is restored first"
    # The key follows what decides the runtime images, so a warm run reuses them.
    assert "containers/runtime-*" in cache["with"]["key"]
    assert "src/pdp_pipeline/images/runtime.py" in cache["with"]["key"]
    build = next(s for s in images["steps"] if "invoke build" in (s.get("run") or ""))
    assert "--registry" not in build["run"]  # the default: the local registry on 127.0.0.1:5000
    assert images["steps"].index(build) > registry


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
    assert "--identity" in release_call
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
    (RELEASE.name, "release"): {"packages": "write", "id-token": "write"},
    (RELEASE.name, "publish"): {"contents": "write"},
}


def uses_lines_not_pinned_by_commit(text: str) -> list[str]:
    """Every `uses:` line that is not a full commit with its version in a comment."""
    return [
        line.strip()
        for line in text.splitlines()
        if re.match(r"^\s*-?\s*uses:", line) and not _SHA_PIN.match(line)
    ]


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
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


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
def test_the_workflow_grants_nothing_and_each_job_only_what_it_needs(path: Path) -> None:
    document = load(path)
    assert document["permissions"] == {}
    for name, job in document["jobs"].items():
        granted = job["permissions"]
        writes = {scope: level for scope, level in granted.items() if level == "write"}
        assert writes == WRITE_SCOPES_BY_JOB[(path.name, name)], name
        assert set(granted.values()) <= {"read", "write"}


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
def test_no_checkout_keeps_the_token(path: Path) -> None:
    checkouts = [
        step
        for _, step in steps(load(path))
        if step.get("uses", "").startswith("actions/checkout@")
    ]
    assert checkouts
    assert all(step.get("with", {}).get("persist-credentials") is False for step in checkouts)


@pytest.mark.parametrize("path", [CI, RELEASE], ids=lambda p: p.name)
def test_one_qemu_and_no_action_for_a_preinstalled_tool(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "qemu-user-static" in text
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
