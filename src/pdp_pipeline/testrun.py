"""What `invoke lint` and `invoke test` run, and the one closing line of a test run.

The test run is split in two pytest sessions: the tests that need nothing but
Python and root come first (they fail in seconds), then the host is made ready,
the three-architecture images are built, and the tests that need the engine run.
The closing line adds up both sessions from their JUnit reports, so a reader
(or CI) sees one total.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ENGINE_MARK = "engine"


@dataclass(frozen=True)
class TestCounts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __add__(self, other: TestCounts) -> TestCounts:
        return TestCounts(
            self.passed + other.passed,
            self.failed + other.failed,
            self.skipped + other.skipped,
        )

    def closing_line(self) -> str:
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        return "total: " + line


def counts_from_junit(path: Path) -> TestCounts:
    """Counts from a pytest JUnit XML report; a missing report counts as one failure.

    A session that crashed before writing its report must not read as green.
    """
    if not path.is_file():
        return TestCounts(failed=1)
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = TestCounts()
    for suite in suites:
        tests = int(suite.get("tests", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped = int(suite.get("skipped", 0))
        total = total + TestCounts(tests - failed - skipped, failed, skipped)
    return total


def pytest_command(marker_expr: str, junit: Path, paths: tuple[str, ...] = ("tests",)) -> list[str]:
    """One pytest session over `paths`, selecting tests by marker expression."""
    return [
        "pytest",
        *paths,
        "-m",
        marker_expr,
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-ra",
    ]


LINT_COMMANDS: tuple[tuple[str, list[str]], ...] = (
    ("ruff lint", ["ruff", "check", "src", "tests", "bench", "tasks.py"]),
    ("ruff format", ["ruff", "format", "--check", "src", "tests", "bench", "tasks.py"]),
    ("mypy --strict", ["mypy", "src"]),
    # The workflows' supply chain (pins, permissions, credentials, injection), offline.
    ("zizmor", ["zizmor", "--offline", ".github/workflows", ".github/dependabot.yml"]),
)


def containerfiles(root: Path) -> list[Path]:
    """Every Containerfile under containers/, for hadolint."""
    return sorted(p for p in (root / "containers").glob("*Containerfile*") if p.is_file())
