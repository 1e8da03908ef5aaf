"""The pipeline's stages import one way only: release -> manifests -> images -> host -> base.

Every import in `src/pdp_pipeline` is read from the source (top-level and the lazy
ones inside functions), so an arrow that runs back up, or a cycle between two
modules, fails here before it becomes a tangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pdp_pipeline"

# A unit may import units of a lower rank only (and itself). `e2e`, `mutation`, `protos`
# and `testrun` stand alone: nothing in the pipeline imports them, they import
# nothing of it.
RANKS = {
    "log": 0,
    "platforms": 0,
    "platform_files": 1,  # writes files from the platform list; nothing imports it
    "host": 1,
    "images": 2,
    "manifests": 3,
    "release": 4,
    # Runs the workflow files with act; reads the Debian mirror the way images do.
    "rehearsal": 5,
}
ALONE = {"e2e", "mutation", "protos", "testrun"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_ours(module: str | None) -> bool:
    return module is not None and (module == "pdp_pipeline" or module.startswith("pdp_pipeline."))


def imports_of(path: Path) -> set[str]:
    """Modules of pdp_pipeline that `path` imports, as full dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pdp_pipeline.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and is_ours(node.module):
            # `from pdp_pipeline.images import build` imports the module images.build.
            candidates = {f"{node.module}.{a.name}" for a in node.names}
            found |= {c for c in candidates if c in MODULES} or {str(node.module)}
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def unit_of(module: str) -> str:
    """The stage (package or top-level module) a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that runs against the stage order, as `module -> target`."""
    upward = []
    for module in sorted(graph):
        source = unit_of(module)
        for target in sorted(graph[module]):
            goal = unit_of(target)
            if not source or goal in ("", source):
                continue
            if source in ALONE or goal in ALONE or RANKS[goal] >= RANKS[source]:
                upward.append(f"{module} -> {target}")
    return upward


def first_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of modules, or [] when there is none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        for target in sorted(graph.get(module, set())):
            found = visit(target, [*path, module])
            if found:
                return found
        done.add(module)
        return []

    for module in sorted(graph):
        found = visit(module, [])
        if found:
            return found
    return []


def test_every_stage_has_a_place_in_the_order() -> None:
    units = {unit_of(m) for m in MODULES} - {""}
    assert units <= set(RANKS) | ALONE, units - set(RANKS) - ALONE


def test_imports_only_run_down_the_stage_order() -> None:
    assert upward_imports(GRAPH) == []


def test_no_import_cycle_between_modules() -> None:
    assert first_cycle(GRAPH) == []


def test_an_upward_import_and_a_cycle_are_caught() -> None:
    graph = {
        "pdp_pipeline.host.probe": {"pdp_pipeline.images.build", "pdp_pipeline.platforms"},
        "pdp_pipeline.images.build": {"pdp_pipeline.images.record"},
        "pdp_pipeline.images.record": {"pdp_pipeline.images.build"},
        "pdp_pipeline.e2e.manifest": {"pdp_pipeline.manifests"},
    }
    assert upward_imports(graph) == [
        "pdp_pipeline.e2e.manifest -> pdp_pipeline.manifests",
        "pdp_pipeline.host.probe -> pdp_pipeline.images.build",
    ]
    assert first_cycle(graph) == [
        "pdp_pipeline.images.build",
        "pdp_pipeline.images.record",
        "pdp_pipeline.images.build",
    ]
