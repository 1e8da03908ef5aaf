"""The platform list is the one place that names architectures.

`src/pdp_pipeline/platforms.py` lists the platforms we ship. Where a file must spell
that list out, it holds a block written from it (`pdp_pipeline.platform_files`,
`invoke platform-files`), and the blocks must be current. Anywhere else, an
architecture's name (any spelling: OCI, Debian, `uname -m`, any case) is allowed only
where the data below says so, with its reason: a fact of one machine, an example, a
measurement. So a new platform is one line again, and a hand-written list of
platforms fails here the day it is written.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pdp_pipeline import platform_files
from pdp_pipeline.platforms import PLATFORMS

ROOT = Path(__file__).resolve().parents[2]

# The platform list itself.
PLATFORM_LIST = "src/pdp_pipeline/platforms.py"

# Paths (a prefix ending in `/` is a folder) where any architecture may be named, and why.
EXAMPLES: dict[str, str] = {
    "tests/": "test data: one or a few architectures as examples; a test that means every"
    " platform takes platforms.PLATFORMS",
    "bench/": "benchmarks and their findings: the image of one architecture, as measured",
}

# Files that may name these architectures (and no others), and why. A file that would
# name every platform is a list: it gets a block instead (see the last test).
FACTS: dict[str, tuple[frozenset[str], str]] = {
    "src/power_device_plugin/small_files.py": (
        frozenset({"ppc64le"}),
        "64 KiB pages on ppc64le decide a buffer size",
    ),
    "src/pdp_pipeline/images/wheels.py": (
        frozenset({"amd64", "ppc64le", "s390x"}),
        "why wheels images exist: the machines PyPI has no grpcio wheel for; an example",
    ),
    "src/pdp_pipeline/images/runtime.py": (
        frozenset({"ppc64le", "s390x"}),
        "why runtimes are built once: the machines PyPI has no grpcio wheel for",
    ),
    "src/pdp_pipeline/images/registry.py": (frozenset({"ppc64le"}), "an example platform"),
    "src/pdp_pipeline/release/sbom.py": (frozenset({"ppc64le"}), "an example platform"),
    "src/pdp_pipeline/release/options.py": (
        frozenset({"ppc64le", "s390x"}),
        "the platforms the release workflow can give native builders",
    ),
    "containers/wheels-compile.Containerfile": (
        frozenset({"ppc64le", "s390x"}),
        "the machines PyPI has no grpcio wheel for, the reason this file exists",
    ),
    "pyproject.toml": (
        frozenset({"ppc64le", "s390x"}),
        "why a compiled dependency costs: it must be built for these",
    ),
    "docs/host.md": (frozenset({"s390x"}), "one binfmt entry to check by hand, an example"),
    "docs/plugin.md": (frozenset({"amd64"}), "the benchmark's image, as measured"),
    "docs/release.md": (
        frozenset({"amd64", "ppc64le", "s390x"}),
        "the native builders of the release workflow (ppc64le, s390x; amd64 stays on the"
        " runner), measurements, examples",
    ),
}

# Files with tables of measurements, a row per architecture measured: any architecture
# (a platform without a row has not been measured there yet), and why.
MEASUREMENTS: dict[str, str] = {
    "docs/e2e.md": "the node suite's timings per architecture, and `--arch` examples",
    "docs/pipeline.md": "build times and digests per architecture, as measured",
    "docs/rehearsal.md": "the rehearsal's runs on this host (its platform), as measured and"
    " logged, and why the architectures it does not build stay unproven",
}

# Files not yet derived from the platform list, with what will make them so. They still
# fail below (the gap shows); the message says what is pending.
# None today: the workflows take their matrix from `invoke platform-matrix` and
# `--arch native|all`.
PENDING: dict[str, str] = {}

WORDS = sorted({w for p in PLATFORMS for w in (p.arch, p.debian_arch, p.machine)}, key=len)
_WORD = re.compile(
    r"(?<![A-Za-z0-9])(" + "|".join(re.escape(w) for w in reversed(WORDS)) + r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_ARCH_OF = {w: p.arch for p in PLATFORMS for w in (p.arch, p.debian_arch, p.machine)}


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return sorted(name for name in listed if (ROOT / name).is_file())


def outside_blocks(text: str) -> str:
    for start, end in reversed(platform_files.blocks(text)):
        text = text[:start] + text[end:]
    return text


def named_archs(text: str) -> dict[str, list[int]]:
    """{architecture: [line numbers]} of every spelling of a platform in `text`."""
    found: dict[str, list[int]] = {}
    for match in _WORD.finditer(text):
        arch = _ARCH_OF[match[1].lower()]
        line = text.count("\n", 0, match.start()) + 1
        lines = found.setdefault(arch, [])
        if line not in lines:
            lines.append(line)
    return found


def allowed(name: str) -> frozenset[str] | None:
    """The architectures `name` may name; None when any."""
    if (
        name == PLATFORM_LIST
        or name in MEASUREMENTS
        or any(name.startswith(p) if p.endswith("/") else name == p for p in EXAMPLES)
    ):
        return None
    return FACTS[name][0] if name in FACTS else frozenset()


def _readable(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


FILES = tracked_files()


@pytest.mark.parametrize("name", FILES)
def test_a_file_names_no_architecture_outside_its_blocks_unless_allowed(name: str) -> None:
    text = _readable(name)
    may = allowed(name)
    if text is None or may is None:
        return
    named = named_archs(outside_blocks(text))
    unexpected = {arch: lines for arch, lines in named.items() if arch not in may}
    assert not unexpected, (
        f"{name} names {', '.join(f'{a} (lines {lines})' for a, lines in unexpected.items())}"
        f" outside src/pdp_pipeline/platforms.py and its blocks: derive it from PLATFORMS,"
        f" make it a `platforms:NAME` block (pdp_pipeline.platform_files), or, if it is a"
        f" fact of one machine, add it to FACTS in {Path(__file__).name} with the reason"
        + (f" (pending: {PENDING[name]})" if name in PENDING else "")
    )


def test_every_block_follows_the_platform_list() -> None:
    assert platform_files.sync(ROOT, check=True) == [], "run `invoke platform-files`"


def test_every_file_with_blocks_is_one_the_writer_rewrites() -> None:
    with_blocks = {name for name in FILES if platform_files.blocks(_readable(name) or "")}
    # These two show markers as examples (the writer's docstring, this file's tests).
    with_blocks -= {"src/pdp_pipeline/platform_files.py", "tests/pipeline/test_platform_names.py"}
    assert with_blocks == set(platform_files.FILES)


def lines_naming_every_platform(text: str) -> list[int]:
    every = {p.arch for p in PLATFORMS}
    lines = text.splitlines()
    return [n for n, line in enumerate(lines, 1) if set(named_archs(line)) >= every]


@pytest.mark.parametrize("name", [n for n in FILES if allowed(n) is not None])
def test_no_line_outside_the_blocks_lists_every_platform(name: str) -> None:
    """A hand-written list of every platform is stale the day a platform is added.

    FACTS allow names of some platforms, never a list of all of them on one line
    (examples in tests and benchmarks, and measurement tables, may show all).
    """
    text = _readable(name)
    lines = lines_naming_every_platform(outside_blocks(text)) if text is not None else []
    assert lines == [], (
        f"{name} lists every platform by hand (lines {lines}): make it a block or derive it"
        + (f" (pending: {PENDING[name]})" if name in PENDING else "")
    )


def test_every_allowance_is_still_used() -> None:
    stale = {}
    for name, (archs, _) in FACTS.items():
        named = set(named_archs(outside_blocks(_readable(name) or "")))
        if archs - named:
            stale[name] = sorted(archs - named)
    assert stale == {}, f"FACTS allow names these files no longer use: {stale}"


# --- the block writer ----------------------------------------------------------------


def test_an_inline_block_gets_the_rendered_text_between_its_markers() -> None:
    text = "on <!-- platforms:arch-list -->old<!-- /platforms:arch-list --> nodes"
    expected = ", ".join(p.arch for p in PLATFORMS)
    assert platform_files.render_text(text) == (
        f"on <!-- platforms:arch-list -->{expected}<!-- /platforms:arch-list --> nodes"
    )


def test_a_yaml_block_gets_one_line_per_platform_indented_like_its_end_marker() -> None:
    text = "values:\n  # platforms:affinity\n  - old\n  # /platforms:affinity\nnext: 1\n"
    rendered = platform_files.render_text(text)
    lines = [f"  - {p.arch}" for p in PLATFORMS]
    assert rendered.splitlines() == [
        "values:",
        "  # platforms:affinity",
        *lines,
        "  # /platforms:affinity",
        "next: 1",
    ]
    assert platform_files.render_text(rendered) == rendered


def test_a_block_without_a_renderer_or_an_end_is_refused_naming_the_file() -> None:
    with pytest.raises(platform_files.PlatformFilesError, match=r"x\.md: .*platforms:nope"):
        platform_files.render_text("<!-- platforms:nope -->a<!-- /platforms:nope -->", "x.md")
    with pytest.raises(platform_files.PlatformFilesError, match="never closed"):
        platform_files.render_text("<!-- platforms:arch-list -->a", "x.md")


def test_the_platform_table_has_a_row_per_platform_and_says_where_its_wheels_come_from() -> None:
    rows = platform_files.platform_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{p.platform}`" for p in PLATFORMS]
    for row, p in zip(rows, PLATFORMS):
        assert ("--compile" in row) is not p.pypi_wheels


def test_a_list_is_spoken_with_commas_and_a_last_and() -> None:
    assert platform_files.spoken([]) == ""
    assert platform_files.spoken(["a"]) == "a"
    assert platform_files.spoken(["a", "b"]) == "a and b"
    assert platform_files.spoken(["a", "b", "c"]) == "a, b and c"
