"""Mutation testing of the plugin's device logic: would the tests notice a wrong answer?

`invoke mutation` runs mutmut 3 over the modules in :data:`MODULES` (settings in
``setup.cfg``, ``[mutmut]``), then reads its results from ``mutants/`` and scores
each module:

    score = killed / (mutants - cosmetic survivors)

A mutant is *killed* when a test failed (or hung, or crashed) with it in place.
A surviving mutant is *cosmetic* only when nothing a user or caller can observe
changes beyond the wording of a log line (or a docstring). That is decided by
rules over the code (:func:`cosmetic_reason`), never by a list of mutant names:

- ``log message``: the mutant differs from the original only inside the
  arguments of a logging call statement (``log.info(...)``, ``logger.error(...)``,
  ...), each difference is a constant (the message text, a number, an argument
  replaced by ``None``) or a shorter argument list, and the call keeps its message.
- ``docstring``: the mutant differs only in the function's docstring.

Everything else counts: error messages returned to users (``ConfigError``
reasons, ``AllocationError`` messages, warnings a parser returns) are answers.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "power_device_plugin"
SOURCE_ROOT = Path("src") / PACKAGE
MUTANTS_DIR = Path("mutants")
# The share of non-cosmetic mutants the tests must kill (issue 9).
GOAL = 0.95


@dataclass(frozen=True)
class Target:
    """One module under mutation and the tests that exercise it."""

    module: str
    tests: tuple[str, ...]

    @property
    def source(self) -> Path:
        return SOURCE_ROOT / f"{self.module}.py"

    @property
    def mutant_glob(self) -> str:
        """mutmut's name pattern for every mutant of the module."""
        return f"{PACKAGE}.{self.module}.*"


# mutmut runs, per mutant, only the tests whose run covered the mutated function,
# so listing a test module here costs nothing for mutants it does not reach.
MODULES: tuple[Target, ...] = (
    Target(
        "config",
        (
            "tests/unit/test_config.py",
            "tests/unit/test_config_messages.py",
            "tests/unit/test_cli.py",
            "tests/unit/test_watch.py",
        ),
    ),
    Target(
        "devices",
        (
            "tests/unit/test_devices.py",
            "tests/unit/test_devices_edges.py",
            "tests/unit/test_server_logic.py",
            "tests/unit/test_grant_cdi.py",
        ),
    ),
    Target("discovery", ("tests/unit/test_discovery.py", "tests/unit/test_discovery_edges.py")),
    Target("cdi", ("tests/unit/test_cdi.py", "tests/unit/test_grant_cdi.py")),
    Target("host_use", ("tests/unit/test_host_use.py",)),
)
DEFAULT_MODULES = ("config", "devices", "discovery")


class UnknownModuleError(ValueError):
    pass


def select(names: str) -> tuple[Target, ...]:
    """The targets named in a comma list ("" or "default": config, devices, discovery;
    "all": every module in MODULES)."""
    by_name = {t.module: t for t in MODULES}
    text = names.strip()
    if text in ("", "default"):
        wanted: list[str] = list(DEFAULT_MODULES)
    elif text == "all":
        wanted = list(by_name)
    else:
        wanted = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UnknownModuleError(
            f"unknown module(s) {', '.join(unknown)}; known: {', '.join(by_name)}"
        )
    return tuple(by_name[n] for n in dict.fromkeys(wanted))


def mutmut_command(targets: Sequence[Target], max_children: int = 2) -> list[str]:
    """``mutmut run`` for the targets' mutants. Naming them makes mutmut check every
    one again instead of keeping results from an earlier run (tests may have changed)."""
    return [
        "mutmut",
        "run",
        "--max-children",
        str(max_children),
        *(t.mutant_glob for t in targets),
    ]


def setup_cfg_problems(text: str) -> list[str]:
    """What ``setup.cfg``'s ``[mutmut]`` section misses of MODULES (empty when in step)."""
    parser = configparser.ConfigParser()
    parser.read_string(text)
    if not parser.has_section("mutmut"):
        return ["setup.cfg has no [mutmut] section"]
    section = parser["mutmut"]
    mutated = set(section.get("only_mutate", "").split())
    tests = set(section.get("pytest_add_cli_args_test_selection", "").split())
    problems = []
    if section.get("source_paths", "").strip() != str(SOURCE_ROOT):
        # Only the whole package in mutants/ can shadow the installed one.
        problems.append(f"source_paths must be {SOURCE_ROOT}")
    for target in MODULES:
        if str(target.source) not in mutated:
            problems.append(f"only_mutate lacks {target.source}")
        problems.extend(
            f"pytest_add_cli_args_test_selection lacks {test} (tests {target.module})"
            for test in target.tests
            if test not in tests
        )
    return problems


# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code, 3.x), grouped
# by what they say about the tests. Anything else is "suspicious": not detected.
_DETECTED = {1: "killed", 3: "killed", 37: "type check", -24: "timeout", 24: "timeout"}
_DETECTED.update({152: "timeout", 255: "timeout", 36: "timeout", -11: "crash", -9: "crash"})
_UNCHECKED = {None: "not checked", 2: "interrupted", 34: "skipped"}


def detected(exit_code: int | None) -> bool:
    return exit_code in _DETECTED


def unchecked(exit_code: int | None) -> bool:
    return exit_code in _UNCHECKED


# --- cosmetic mutants ---------------------------------------------------------

LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
_LOGGER_NAME = re.compile(r"_?(log|logger|LOG|LOGGER)$")
_MUTANT_SUFFIX = re.compile(r"__mutmut_\d+$")


@dataclass(frozen=True)
class _Difference:
    """One place where a mutant differs: its ancestors in the mutant's tree, the
    field of the last ancestor that differs, and the two values there."""

    ancestors: tuple[ast.AST, ...]
    field: str
    original: object
    mutant: object


def _differences(
    original: object, mutant: object, ancestors: tuple[ast.AST, ...], field: str
) -> list[_Difference]:
    if type(original) is not type(mutant):
        return [_Difference(ancestors, field, original, mutant)]
    if isinstance(original, list) and isinstance(mutant, list):
        if len(original) != len(mutant):
            return [_Difference(ancestors, field, original, mutant)]
        found: list[_Difference] = []
        for a, b in zip(original, mutant):
            found.extend(_differences(a, b, ancestors, field))
        return found
    if isinstance(original, ast.AST) and isinstance(mutant, ast.AST):
        found = []
        inner = (*ancestors, mutant)
        for name in original._fields:
            found.extend(
                _differences(
                    getattr(original, name, None), getattr(mutant, name, None), inner, name
                )
            )
        return found
    return [] if original == mutant else [_Difference(ancestors, field, original, mutant)]


def function_differences(
    original: ast.FunctionDef | ast.AsyncFunctionDef,
    mutant: ast.FunctionDef | ast.AsyncFunctionDef,
) -> list[_Difference]:
    """Where the mutant's function differs from the original (names aside)."""
    found: list[_Difference] = []
    for name in original._fields:
        if name != "name":
            found.extend(
                _differences(getattr(original, name), getattr(mutant, name), (mutant,), name)
            )
    return found


def _is_logging_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in LOG_METHODS
        and isinstance(node.func.value, ast.Name)
        and _LOGGER_NAME.match(node.func.value.id) is not None
    )


def _in_log_message(difference: _Difference) -> bool:
    chain = difference.ancestors
    calls = [
        i
        for i, node in enumerate(chain)
        if _is_logging_call(node) and i > 0 and isinstance(chain[i - 1], ast.Expr)
    ]
    if not calls:
        return False
    index = calls[-1]
    call = chain[index]
    assert isinstance(call, ast.Call)
    if not call.args:
        return False  # the message itself is gone: the call raises TypeError
    if index == len(chain) - 1:
        # The call's own fields differ: an argument became a constant, or the
        # argument list got shorter (the message is still there).
        if difference.field not in ("args", "keywords"):
            return False
        if isinstance(difference.original, list) and isinstance(difference.mutant, list):
            return len(difference.mutant) < len(difference.original)
        return isinstance(difference.mutant, ast.Constant)
    below = chain[index + 1]
    if not (any(below is a for a in call.args) or any(below is k for k in call.keywords)):
        return False  # e.g. the logger or the method changed
    last = chain[-1]
    return isinstance(difference.mutant, ast.Constant) or isinstance(last, ast.Constant)


def _in_docstring(difference: _Difference) -> bool:
    chain = difference.ancestors
    if len(chain) < 3 or not isinstance(chain[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    body = chain[0].body
    first = body[0] if body else None
    return (
        chain[1] is first
        and isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )


def cosmetic_reason(
    original: ast.FunctionDef | ast.AsyncFunctionDef,
    mutant: ast.FunctionDef | ast.AsyncFunctionDef,
) -> str | None:
    """Why a mutant can change nothing but wording ("log message", "docstring"),
    or None when it may change what a user or caller observes."""
    found = function_differences(original, mutant)
    if not found:
        return None  # an equivalent mutant is not cosmetic by rule: look at it
    if all(_in_docstring(d) for d in found):
        return "docstring"
    if all(_in_log_message(d) or _in_docstring(d) for d in found):
        return "log message"
    return None


def _functions(tree: ast.AST) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def cosmetic_mutants(mutated_source: str, names: Iterable[str]) -> dict[str, str]:
    """Mutant key -> rule, for the cosmetic ones among ``names`` in a file of mutmut's
    ``mutants/`` tree (each mutant is a function ``<name>__mutmut_<n>`` beside
    ``<name>__mutmut_orig``)."""
    functions = _functions(ast.parse(mutated_source))
    cosmetic: dict[str, str] = {}
    for key in names:
        name = key.rpartition(".")[2]
        mutant = functions.get(name)
        original = functions.get(_MUTANT_SUFFIX.sub("__mutmut_orig", name))
        if mutant is None or original is None:
            continue
        reason = cosmetic_reason(original, mutant)
        if reason is not None:
            cosmetic[key] = reason
    return cosmetic


# --- results and scores -------------------------------------------------------


@dataclass(frozen=True)
class MutantResult:
    key: str
    exit_code: int | None
    cosmetic: str | None = None  # the rule, for a cosmetic mutant

    @property
    def detected(self) -> bool:
        return detected(self.exit_code)


@dataclass(frozen=True)
class ModuleScore:
    module: str
    results: tuple[MutantResult, ...]

    @property
    def mutants(self) -> int:
        return len(self.results)

    @property
    def killed(self) -> int:
        return sum(r.detected for r in self.results)

    @property
    def cosmetic(self) -> int:
        """Survivors that change only wording: left out of the score."""
        return sum(1 for r in self.results if not r.detected and r.cosmetic)

    @property
    def unchecked(self) -> int:
        return sum(1 for r in self.results if unchecked(r.exit_code))

    @property
    def survivors(self) -> tuple[MutantResult, ...]:
        """Mutants the tests did not notice that are not cosmetic (unchecked included)."""
        return tuple(r for r in self.results if not r.detected and not r.cosmetic)

    @property
    def score(self) -> float:
        counted = self.mutants - self.cosmetic
        return self.killed / counted if counted else 1.0

    @property
    def goal_met(self) -> bool:
        return self.score >= GOAL and self.unchecked == 0


def read_results(root: Path, target: Target) -> ModuleScore:
    """The module's results from ``mutants/`` after a run; raises FileNotFoundError
    when mutmut has not run over it."""
    mutated = root / MUTANTS_DIR / target.source
    meta = json.loads(mutated.with_name(mutated.name + ".meta").read_text(encoding="utf-8"))
    exit_codes: dict[str, int | None] = meta["exit_code_by_key"]
    cosmetic = cosmetic_mutants(mutated.read_text(encoding="utf-8"), exit_codes)
    return ModuleScore(
        target.module,
        tuple(MutantResult(k, exit_codes[k], cosmetic.get(k)) for k in sorted(exit_codes)),
    )


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def table(scores: Sequence[ModuleScore]) -> list[str]:
    """One line per module, then the survivors to look at (``mutmut show NAME``)."""
    header = ("module", "mutants", "killed", "cosmetic", "survived", "score", f"goal {GOAL:.0%}")
    rows = [header]
    for s in scores:
        goal = "met" if s.goal_met else "NOT met"
        if s.unchecked:
            goal += f" ({s.unchecked} not checked)"
        rows.append(
            (
                s.module,
                str(s.mutants),
                str(s.killed),
                str(s.cosmetic),
                str(len(s.survivors)),
                _percent(s.score),
                goal,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for s in scores:
        # Unchecked mutants are counted in the goal column, not listed one by one.
        lines.extend(f"survived: {r.key}" for r in s.survivors if not unchecked(r.exit_code))
    return lines


def json_line(scores: Sequence[ModuleScore]) -> str:
    """The scores as one JSON line (for CI and the docs)."""
    return json.dumps(
        {
            "goal": GOAL,
            "modules": {
                s.module: {
                    "mutants": s.mutants,
                    "killed": s.killed,
                    "cosmetic": s.cosmetic,
                    "survived": len(s.survivors),
                    "not_checked": s.unchecked,
                    "score": round(s.score, 4),
                    "goal_met": s.goal_met,
                }
                for s in scores
            },
        },
        sort_keys=True,
    )


def all_met(scores: Sequence[ModuleScore]) -> bool:
    return all(s.goal_met for s in scores)


# mutmut's record of which tests cover which functions (relative to the project root).
STATS_FILE = Path("mutants") / "mutmut-stats.json"


def main(
    root: Path,
    modules: str,
    run: Callable[[list[str]], int],
    *,
    max_children: int = 2,
    strict: bool = False,
    report_only: bool = False,
) -> int:
    """What ``invoke mutation`` does: run mutmut over the modules (``run`` runs a
    command in ``root`` and returns its exit status), print the table and the JSON
    line, and return the exit status: non-zero when mutmut failed, or, with
    ``strict``, when a module misses the goal."""
    try:
        targets = select(modules)
    except UnknownModuleError as error:
        print(f"mutation: {error}", flush=True)
        return 2
    problems = setup_cfg_problems((root / "setup.cfg").read_text(encoding="utf-8"))
    if problems:
        print("mutation: setup.cfg is out of step: " + "; ".join(problems), flush=True)
        return 2
    if not report_only:
        # mutmut keeps its map of which tests reach which function from the last run and
        # does not extend it for tests added since: a new test would never meet the
        # mutants it was written for. Dropping the map makes mutmut collect it anew.
        (root / STATS_FILE).unlink(missing_ok=True)
        status = run(mutmut_command(targets, max_children))
        if status != 0:
            # Results in mutants/ may be from an earlier run: score nothing.
            print(f"mutation: mutmut failed (exit status {status})", flush=True)
            return status
    try:
        scores = [read_results(root, t) for t in targets]
    except FileNotFoundError as error:
        print(f"mutation: no mutmut results ({error.filename}); run without --report-only")
        return 2
    print("\n".join(table(scores)), flush=True)
    print(json_line(scores), flush=True)
    return 1 if strict and not all_met(scores) else 0
