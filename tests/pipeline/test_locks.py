"""Everything a token-holding job installs is pinned by hash: the runtime requirements fed to
`pip download`/`pip wheel`, and the development tools (`requirements/release.lock`,
`PDP_LOCKED=1 scripts/in-venv`). The locks must match pyproject.toml's dependencies."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from pdp_pipeline.images import bases, context, wheels
from pdp_pipeline.platforms import by_arch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "release.lock"
PIN = bases.BasePin("ubi9", "registry.access.redhat.com/ubi9/ubi:9.7", "sha256:" + "a" * 64, "3.12")


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _locked(path: Path) -> list[tuple[Requirement, list[str]]]:
    entries = []
    for line in wheels.requirements(path):
        words = line.split()
        spec = line.split(" --hash")[0].strip()
        hashes = [w.split("=", 1)[1] for w in words if w.startswith("--hash=")]
        entries.append((Requirement(spec), hashes))
    return entries


def _satisfied(
    requirement: Requirement, locked: list[tuple[Requirement, list[str]]], python: str
) -> bool:
    env = {"python_version": python, "python_full_version": python + ".0"}
    for pinned, _ in locked:
        if pinned.name.lower().replace("_", "-") != requirement.name.lower().replace("_", "-"):
            continue
        if pinned.marker is not None and not pinned.marker.evaluate(env):
            continue
        (spec,) = pinned.specifier
        if requirement.specifier.contains(Version(spec.version), prereleases=True):
            return True
    return False


def test_every_entry_of_the_release_lock_is_pinned_and_hashed() -> None:
    locked = _locked(LOCK)
    assert locked
    for requirement, hashes in locked:
        assert [s.operator for s in requirement.specifier] == ["=="], requirement
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), requirement


def test_the_release_lock_holds_every_dependency_of_pyproject() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    locked = _locked(LOCK)
    for python in ("3.9", "3.11", "3.12"):
        missing = []
        for text in wanted:
            requirement = Requirement(text)
            applies = requirement.marker is None or requirement.marker.evaluate(
                {"python_version": python}
            )
            if applies and not _satisfied(requirement, locked, python):
                missing.append(text)
        assert not missing, (
            f"requirements/release.lock lacks {missing} for Python {python}: regenerate it "
            "(docs/release.md, 'Hash-locked installs')"
        )


def test_the_runtime_requirements_are_pinned_by_hash_and_satisfy_pyproject() -> None:
    locked = _locked(wheels.REQUIREMENTS)
    for requirement, hashes in locked:
        assert [s.operator for s in requirement.specifier] == ["=="], requirement
        assert hashes, f"{requirement} in {wheels.REQUIREMENTS.name} has no --hash"
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    for text in project["dependencies"]:
        if Requirement(text).name in ("grpcio", "protobuf"):
            assert _satisfied(Requirement(text), locked, "3.12"), text


def test_pip_checks_the_hashes_wherever_runtime_requirements_are_fetched(tmp_path: Path) -> None:
    download = wheels.download_command(PIN, by_arch("amd64"), tmp_path, wheels.REQUIREMENTS)
    assert "--require-hashes" in download
    assert "--require-hashes" in context.download_command("python3", tmp_path / "r", tmp_path)
    compile_text = wheels.COMPILE_CONTAINERFILE.read_text()
    assert re.search(r"pip download --require-hashes", compile_text)


def test_in_venv_has_a_locked_mode_that_installs_with_require_hashes() -> None:
    script = (ROOT / "scripts" / "in-venv").read_text()
    assert "PDP_LOCKED" in script
    assert "--require-hashes" in script and "requirements/release.lock" in script
    assert "--no-deps" in script


def test_renovate_uses_manager_file_patterns_and_dependabot_watches_containers() -> None:
    renovate = json.loads((ROOT / "renovate.json").read_text())
    for manager in renovate.get("customManagers", []):
        assert "fileMatch" not in manager
        assert manager["managerFilePatterns"]
    text = (ROOT / ".github" / "dependabot.yml").read_text()
    assert re.search(r"directory: /containers\b", text), "Dependabot does not watch containers/"
    assert Marker("python_version >= '3.9'")  # packaging is what the test reads markers with
