"""The GitHub Actions workflows, checked offline.

`check-jsonschema --builtin-schema vendor.github-workflows` validates their
structure (actionlint's wheel downloads a binary at install time, so it is not
an option on an offline host); the checks below add what a schema cannot know:
every action is pinned, and every invoke task and flag a workflow calls exists.
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
    build_run = next(s["run"] for _, s in steps(document) if "invoke build" in (s.get("run") or ""))
    assert "--arch ${{ matrix.arch }}" in build_run
    matrix = document["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert {"base": "debian", "arch": "all"} in matrix


def test_ci_pushes_only_to_a_registry_service_and_caches_its_storage() -> None:
    images = load(CI)["jobs"]["images"]

    service = images["services"]["registry"]
    assert service["image"].startswith("registry:2")
    assert service["ports"] == ["127.0.0.1:5000:5000"]
    storage = service["volumes"][0].split(":")[0]
    uses = [step.get("uses", "") for step in images["steps"]]
    assert any(u.startswith("docker/setup-qemu-action@") for u in uses)
    assert any(u.startswith("docker/setup-buildx-action@") for u in uses)
    cache = next(
        step for step in images["steps"] if step.get("uses", "").startswith("actions/cache")
    )
    assert cache["with"]["path"] == storage
    # The key follows what decides the runtime images, so a warm run reuses them.
    assert "containers/runtime-*" in cache["with"]["key"]
    build = next(s for s in images["steps"] if "invoke build" in (s.get("run") or ""))
    assert "--registry" not in build["run"]  # the default: the local registry on 127.0.0.1:5000
    assert images["steps"].index(cache) < images["steps"].index(build)


def test_release_runs_on_semver_tags_and_signs_keyless() -> None:
    document = load(RELEASE)

    assert triggers(document) == {"push": {"tags": ["v*.*.*"]}}
    assert document["permissions"]["id-token"] == "write"
    assert document["permissions"]["contents"] == "write"
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
