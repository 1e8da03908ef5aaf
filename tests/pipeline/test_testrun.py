from __future__ import annotations

from pathlib import Path

from pdp_pipeline import testrun


def _report(path: Path, tests: int, failures: int, errors: int, skipped: int) -> Path:
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites>'
        f'<testsuite name="pytest" tests="{tests}" failures="{failures}" '
        f'errors="{errors}" skipped="{skipped}"></testsuite></testsuites>'
    )
    return path


def test_counts_add_up_failures_and_errors_as_failed(tmp_path: Path) -> None:
    counts = testrun.counts_from_junit(_report(tmp_path / "r.xml", 10, 1, 2, 3))
    assert counts == testrun.TestCounts(passed=4, failed=3, skipped=3)


def test_a_missing_report_is_a_failure_not_a_green_run(tmp_path: Path) -> None:
    assert testrun.counts_from_junit(tmp_path / "absent.xml").failed == 1


def test_two_sessions_close_with_one_total_line(tmp_path: Path) -> None:
    a = testrun.counts_from_junit(_report(tmp_path / "a.xml", 5, 0, 0, 1))
    b = testrun.counts_from_junit(_report(tmp_path / "b.xml", 7, 1, 0, 0))
    assert (a + b).closing_line() == "total: 10 passed, 1 failed, 1 skipped"


def test_pytest_command_selects_by_marker_and_writes_junit(tmp_path: Path) -> None:
    command = testrun.pytest_command("not engine", tmp_path / "x.xml")
    assert command[command.index("-m") + 1] == "not engine"
    assert f"--junitxml={tmp_path / 'x.xml'}" in command


def test_containerfiles_lists_every_containerfile(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    for name in ("Containerfile", "runtime-ubi9.Containerfile", "README.md"):
        (tmp_path / "containers" / name).write_text("")
    names = [p.name for p in testrun.containerfiles(tmp_path)]
    assert names == ["Containerfile", "runtime-ubi9.Containerfile"]
