"""The text that spells the platform list out, written from `platforms.PLATFORMS`.

A few files must name every architecture: the DaemonSet's node affinity, the docs'
lists and tables. Each such place is a marked block, and only the block is ours:

    <!-- platforms:NAME -->…<!-- /platforms:NAME -->     Markdown, inline or on lines of its own
    # platforms:NAME … # /platforms:NAME                YAML, on lines of their own

`invoke platform-files` rewrites every block from RENDERERS[NAME]; `--check` (and
`tests/pipeline/test_platform_names.py`) fails when one is out of date. A block
whose markers stand on lines of their own gets one line per rendered line, indented
like its closing marker; an inline block gets the text as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pdp_pipeline.platforms import PLATFORMS, Platform

# The files that hold blocks (relative to the repository root).
FILES: tuple[str, ...] = (
    "README.md",
    "docs/architecture.md",
    "docs/deploy.md",
    "docs/host.md",
    "docs/pipeline.md",
    "docs/release.md",
    "manifests/base/daemonset.yaml",
)

_BLOCK = re.compile(
    r"(?P<open>(?:<!--|#) platforms:(?P<name>[a-z-]+)(?: -->)?)"
    r"(?P<body>.*?)"
    r"(?P<close>(?:<!--|#) /platforms:(?P=name)(?: -->)?)",
    re.DOTALL,
)


class PlatformFilesError(Exception):
    """A block names no renderer, or a file has an unclosed block."""


def spoken(items: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _code(items: Iterable[str]) -> list[str]:
    return [f"`{item}`" for item in items]


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _compiled(platforms: Sequence[Platform]) -> list[Platform]:
    return [p for p in platforms if not p.pypi_wheels]


def _wheels_source(p: Platform) -> str:
    if p.pypi_wheels:
        return f"PyPI's binary wheels (`invoke wheels --arch {p.arch}`)"
    return f"compiled once on a native builder (`invoke wheels --arch {p.arch} --compile`)"


def platform_table(platforms: Sequence[Platform] = PLATFORMS) -> str:
    """Every platform with each tool's spelling and where its ubi9 wheels come from."""
    header = ("platform", "hardware", "Debian arch", "`uname -m`", "grpcio for the ubi9 runtime")
    rows = (
        (f"`{p.platform}`", p.title, f"`{p.debian_arch}`", f"`{p.machine}`", _wheels_source(p))
        for p in platforms
    )
    return _table(header, rows)


def _fenced(*lines: str) -> str:
    return "\n".join(("```", *lines, "```"))


def example_summary(platforms: Sequence[Platform] = PLATFORMS) -> str:
    """`invoke build`'s closing table, as the docs show it (figures elided)."""
    width = max(len("architecture"), *(len(p.platform) for p in platforms))
    return _fenced(
        "tag v1.2.3-4-gabc1234  version 1.2.3.post4+gabc1234  revision abc1234def56",
        "index 127.0.0.1:5000/power-dev-plugin:v1.2.3-4-gabc1234@sha256:…",
        "base debian (FELL BACK from ubi9)",
        f"{'architecture':<{width}}  digest         size      runtime  verification",
        f"{'-' * width}  -------------  --------  -------  ------------",
        *(f"{p.platform:<{width}}  sha256:…       … MiB     reused   passed" for p in platforms),
    )


def foreign_machines(platforms: Sequence[Platform] = PLATFORMS) -> list[str]:
    """The machines QEMU runs on the docs' build host (the first platform's machine)."""
    return [p.machine for p in platforms[1:]]


def setup_ready() -> str:
    """What `invoke setup` prints on a ready x86 host."""
    return _fenced(
        "setup: ready: engine with buildx and the containerd store, QEMU for "
        + ", ".join(foreign_machines())
        + ", registry on 127.0.0.1:5000"
    )


def setup_missing() -> str:
    """What `invoke setup` prints on an x86 host that lacks QEMU and the registry."""
    return _fenced(
        "setup: this host cannot build yet:",
        f"  - missing QEMU user emulation for {', '.join(foreign_machines())}; fix: apt-get"
        " install -y --no-install-recommends qemu-user-static binfmt-support &&"
        " update-binfmts --enable (or: docker run --privileged --rm tonistiigi/binfmt"
        " --install all)",
        "  - missing a registry on 127.0.0.1:5000; fix: apt-get install -y"
        " --no-install-recommends docker-registry (or: docker run -d -p"
        " 127.0.0.1:5000:5000 registry:2)",
    )


RENDERERS: dict[str, Callable[[], str]] = {
    # the names, comma-separated
    "arch-list": lambda: ", ".join(p.arch for p in PLATFORMS),
    # the names in backticks, as a sentence says them
    "arch-words": lambda: spoken(_code(p.arch for p in PLATFORMS)),
    # what `--arch` takes
    "arch-choices": lambda: "|".join(("all", *(p.arch for p in PLATFORMS))),
    # the OCI platform strings
    "platform-list": lambda: spoken([p.platform for p in PLATFORMS]),
    # the hardware and its name
    "node-list": lambda: spoken([f"{p.title} ({p.arch})" for p in PLATFORMS]),
    # the platforms whose grpcio wheels are compiled, and those that take PyPI's
    "compiled-archs": lambda: spoken([p.arch for p in _compiled(PLATFORMS)]),
    "pypi-archs": lambda: spoken([p.arch for p in PLATFORMS if p.pypi_wheels]),
    # what QEMU runs on an x86 build host, as `invoke setup` says it
    "setup-ready": setup_ready,
    "setup-missing": setup_missing,
    "binfmt-entries": lambda: spoken(_code(f"qemu-{m}" for m in foreign_machines())),
    "platform-table": platform_table,
    "example-summary": example_summary,
    # the DaemonSet's `kubernetes.io/arch In` values
    "affinity": lambda: "\n".join(f"- {p.arch}" for p in PLATFORMS),
}


def render_text(text: str, where: str = "<text>") -> str:
    """`text` with every block rewritten from its renderer."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise PlatformFilesError(
                f"{where}: block platforms:{name} has no renderer; known: {', '.join(RENDERERS)}"
            )
        rendered = RENDERERS[name]()
        body = match["body"]
        if "\n" not in body:
            return f"{match['open']}{rendered}{match['close']}"
        line_start = text.rfind("\n", 0, match.start("close")) + 1
        indent = text[line_start : match.start("close")]
        if indent.strip():
            raise PlatformFilesError(
                f"{where}: the end of block platforms:{name} must stand on a line of its own"
            )
        lines = [indent + line if line else "" for line in rendered.split("\n")]
        return match["open"] + "\n" + "\n".join(lines) + "\n" + indent + match["close"]

    rendered = _BLOCK.sub(replace, text)
    unclosed = re.search(r"(?:<!--|#) platforms:([a-z-]+)", _BLOCK.sub("", rendered))
    if unclosed:
        raise PlatformFilesError(f"{where}: block platforms:{unclosed[1]} is never closed")
    return rendered


def blocks(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of every block in `text`, markers included."""
    return [(m.start(), m.end()) for m in _BLOCK.finditer(text)]


def sync(root: Path, *, check: bool = False) -> list[str]:
    """The files whose blocks were (with `check`: would be) rewritten."""
    stale = []
    for name in FILES:
        path = root / name
        text = path.read_text(encoding="utf-8")
        wanted = render_text(text, name)
        if wanted != text:
            stale.append(name)
            if not check:
                path.write_text(wanted, encoding="utf-8")
    return stale
