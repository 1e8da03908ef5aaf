from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from pdp_pipeline import mutation

ROOT = Path(__file__).resolve().parents[2]

BODY = '''\
"""Say what went wrong."""
log.error("%s (%d)", problem, count)
raise ValueError(f"bad: {problem}")
'''


def _function(name: str, body: str) -> str:
    return f"def {name}(problem, count):\n" + textwrap.indent(body, "    ")


def _functions(source: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(textwrap.dedent(source))
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def _reason(mutant_body: str, original_body: str = BODY) -> str | None:
    """The rule for a mutant whose body is ``mutant_body``."""
    functions = _functions(
        _function("x_f__mutmut_orig", original_body) + _function("x_f__mutmut_1", mutant_body)
    )
    return mutation.cosmetic_reason(functions["x_f__mutmut_orig"], functions["x_f__mutmut_1"])


@pytest.mark.parametrize(
    "old, new",
    [
        ('"%s (%d)"', '"XX%s (%d)XX"'),  # message text
        ('"%s (%d)"', "None"),  # message replaced by None: logs "None"
        ("problem, count", "None, count"),  # an argument replaced by None
        ("problem, count", "problem"),  # an argument left out
    ],
)
def test_a_mutant_changing_only_a_log_lines_wording_is_cosmetic(old: str, new: str) -> None:
    assert _reason(BODY.replace(old, new, 1)) == "log message"


def test_a_mutant_changing_only_the_docstring_is_cosmetic() -> None:
    assert _reason(BODY.replace("Say what", "XXSay whatXX")) == "docstring"


@pytest.mark.parametrize(
    "old, new",
    [
        ('f"bad: {problem}"', 'f"XXbad: XX{problem}"'),  # an error message a caller sees
        ("raise ValueError", "raise TypeError"),
        ('log.error("%s (%d)", problem, count)', "log.error()"),  # raises TypeError
        ("log.error", "log.warning"),  # another level is not wording
        ("problem, count)", "problem, count + 1)"),  # a computed argument may raise
    ],
)
def test_a_mutant_that_callers_can_observe_is_not_cosmetic(old: str, new: str) -> None:
    assert _reason(BODY.replace(old, new, 1)) is None


def test_a_log_call_whose_result_is_used_is_not_cosmetic() -> None:
    original = BODY.replace("log.error(", "x = log.error(")
    assert _reason(original.replace("%s (%d)", "XX"), original) is None


def test_a_call_on_something_that_is_not_a_logger_is_not_cosmetic() -> None:
    assert _reason(BODY.replace("log.error", "warnings.error").replace("%s", "XX%s")) is None


def test_a_mutant_identical_to_the_original_is_not_cosmetic_by_rule() -> None:
    assert _reason(BODY) is None


def test_cosmetic_mutants_are_found_in_a_mutants_file_including_methods() -> None:
    source = textwrap.dedent(
        """
        class Box:
            def xǁBoxǁput__mutmut_orig(self):
                log.info("put")
                return 1
            def xǁBoxǁput__mutmut_1(self):
                log.info("PUT")
                return 1
            def xǁBoxǁput__mutmut_2(self):
                log.info("put")
                return 2
        """
    )
    keys = [
        "pkg.mod.xǁBoxǁput__mutmut_1",
        "pkg.mod.xǁBoxǁput__mutmut_2",
        "pkg.mod.x_gone__mutmut_1",
    ]
    assert mutation.cosmetic_mutants(source, keys) == {"pkg.mod.xǁBoxǁput__mutmut_1": "log message"}


def _results(*codes: tuple[int | None, str | None]) -> mutation.ModuleScore:
    return mutation.ModuleScore(
        "config",
        tuple(mutation.MutantResult(f"m.x_f__mutmut_{i}", c, r) for i, (c, r) in enumerate(codes)),
    )


def test_score_is_killed_over_all_but_cosmetic_survivors() -> None:
    score = _results(
        *[(1, None)] * 17, (36, None), (0, "log message"), (0, None), (33, None), (1, "docstring")
    )
    assert (score.mutants, score.killed, score.cosmetic, len(score.survivors)) == (22, 19, 1, 2)
    assert score.score == pytest.approx(19 / 21)
    assert not score.goal_met


def test_goal_is_met_at_95_percent_and_not_below() -> None:
    assert _results(*[(1, None)] * 19, (0, None)).goal_met  # 95.0 %
    assert not _results(*[(1, None)] * 18, (0, None), (5, None)).goal_met  # 90 %


def test_goal_is_not_met_while_mutants_are_unchecked() -> None:
    score = _results(*[(1, None)] * 99, (None, None))
    assert score.score == pytest.approx(0.99)
    assert score.unchecked == 1
    assert not score.goal_met


def test_table_and_json_line_report_every_column_and_the_survivors() -> None:
    scores = [_results((1, None), (0, None), (0, "log message"))]
    lines = mutation.table(scores)
    assert lines[0].split() == [
        "module",
        "mutants",
        "killed",
        "cosmetic",
        "survived",
        "score",
        "goal",
        "95%",
    ]
    assert lines[1].split() == ["config", "3", "1", "1", "1", "50.0", "%", "NOT", "met"]
    assert lines[2:] == ["survived: m.x_f__mutmut_1"]
    data = json.loads(mutation.json_line(scores))
    assert data == {
        "goal": 0.95,
        "modules": {
            "config": {
                "mutants": 3,
                "killed": 1,
                "cosmetic": 1,
                "survived": 1,
                "not_checked": 0,
                "score": 0.5,
                "goal_met": False,
            }
        },
    }


def test_select_reads_a_comma_list_and_refuses_unknown_modules() -> None:
    assert [t.module for t in mutation.select("")] == ["config", "devices", "discovery"]
    assert [t.module for t in mutation.select("devices, config,devices")] == ["devices", "config"]
    assert len(mutation.select("all")) == len(mutation.MODULES)
    with pytest.raises(mutation.UnknownModuleError, match="unknown module"):
        mutation.select("config,server")


def test_mutmut_is_run_over_every_mutant_of_the_selected_modules() -> None:
    command = mutation.mutmut_command(mutation.select("config,devices"), max_children=3)
    assert command == [
        "mutmut",
        "run",
        "--max-children",
        "3",
        "power_device_plugin.config.*",
        "power_device_plugin.devices.*",
    ]


def test_setup_cfg_mutates_every_module_and_runs_its_tests() -> None:
    assert mutation.setup_cfg_problems((ROOT / "setup.cfg").read_text()) == []


def test_setup_cfg_missing_a_module_or_its_tests_is_reported() -> None:
    text = (
        "[mutmut]\nsource_paths=src/power_device_plugin\n"
        "only_mutate=src/power_device_plugin/config.py\n"
    )
    problems = mutation.setup_cfg_problems(text)
    assert "only_mutate lacks src/power_device_plugin/devices.py" in problems
    assert any("lacks tests/unit/test_config.py" in p for p in problems)


def _mutants_tree(root: Path) -> None:
    mutated = root / "mutants" / "src" / "power_device_plugin"
    mutated.mkdir(parents=True)
    (root / "setup.cfg").write_text((ROOT / "setup.cfg").read_text())
    (mutated / "config.py").write_text(
        "def x_f__mutmut_orig():\n    log.info('a')\n    return 1\n"
        "def x_f__mutmut_1():\n    log.info('A')\n    return 1\n"
        "def x_f__mutmut_2():\n    log.info('a')\n    return 2\n"
    )
    codes = {
        "power_device_plugin.config.x_f__mutmut_1": 0,
        "power_device_plugin.config.x_f__mutmut_2": 1,
    }
    (mutated / "config.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))


def test_main_runs_mutmut_then_scores_from_its_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mutants_tree(tmp_path)
    commands: list[list[str]] = []

    def run(command: list[str]) -> int:
        commands.append(command)
        return 0

    assert mutation.main(tmp_path, "config", run, strict=True) == 0
    assert commands == [mutation.mutmut_command(mutation.select("config"))]
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:5] == ["config", "2", "1", "1", "0"]
    assert json.loads(out[-1])["modules"]["config"]["score"] == 1.0


def test_main_scores_nothing_when_mutmut_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _mutants_tree(tmp_path)
    assert mutation.main(tmp_path, "config", lambda command: 1) == 1
    assert "mutmut failed (exit status 1)" in capsys.readouterr().out


def test_main_fails_a_missed_goal_only_when_strict(tmp_path: Path) -> None:
    _mutants_tree(tmp_path)
    meta = tmp_path / "mutants/src/power_device_plugin/config.py.meta"
    meta.write_text(
        json.dumps({"exit_code_by_key": {"power_device_plugin.config.x_f__mutmut_2": 0}})
    )
    assert mutation.main(tmp_path, "config", lambda c: 0, report_only=True) == 0
    assert mutation.main(tmp_path, "config", lambda c: 0, report_only=True, strict=True) == 1


def test_main_without_results_says_to_run_mutmut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "setup.cfg").write_text((ROOT / "setup.cfg").read_text())
    assert mutation.main(tmp_path, "config", lambda c: 0, report_only=True) == 2
    assert "no mutmut results" in capsys.readouterr().out


def test_main_drops_mutmuts_test_map_before_a_run_but_not_for_a_report(tmp_path: Path) -> None:
    _mutants_tree(tmp_path)
    stats = tmp_path / mutation.STATS_FILE
    stats.write_text("{}")
    seen: list[bool] = []

    def run(command: list[str]) -> int:
        seen.append(stats.exists())
        return 0

    assert mutation.main(tmp_path, "config", run, report_only=True) == 0
    assert stats.exists() and seen == []
    assert mutation.main(tmp_path, "config", run) == 0
    assert seen == [False]
