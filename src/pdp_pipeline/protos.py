"""Generate the kubelet API stubs with protoc from grpcio-tools 1.51.

Why 1.51: code from that protoc imports and runs on both the floor (Debian's
grpcio 1.51 / protobuf 4.21) and the newest grpcio / protobuf on PyPI. That
grpcio-tools pins protobuf<5, so it cannot share the project's .venv: it lives
in its own tool venv under `.cache/`, created once and reused.
"""

from __future__ import annotations

import fcntl
import filecmp
import os
import subprocess
import sys
import venv
from pathlib import Path

GRPCIO_TOOLS = "grpcio-tools==1.51.3"

# The proto sits under protos/power_device_plugin/api/ so protoc writes
# `from power_device_plugin.api import deviceplugin_pb2` into the grpc module.
PROTO_ROOT = Path("protos")
PROTO_FILES = (Path("power_device_plugin/api/deviceplugin.proto"),)
STUB_PACKAGE = Path("power_device_plugin/api")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class ProtocError(RuntimeError):
    """protoc, or the tool venv that carries it, failed."""


def tool_venv_dir(root: Path) -> Path:
    """Where the grpcio-tools venv lives (ignored by git, kept between runs)."""
    return root / ".cache" / "protoc-venv"


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def ensure_tool_venv(root: Path) -> Path:
    """Create the grpcio-tools venv unless it already holds GRPCIO_TOOLS; return its python.

    A lock file keeps two runs at once (a test and `invoke protos`) from
    building the same venv over each other.
    """
    venv_dir = tool_venv_dir(root)
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(venv_dir.with_name(venv_dir.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_tool_venv_locked(venv_dir)


def _ensure_tool_venv_locked(venv_dir: Path) -> Path:
    stamp = venv_dir / ".installed"
    python = venv_python(venv_dir)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == GRPCIO_TOOLS:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    install = [str(python), "-m", "pip", "install", "--quiet", "--progress-bar", "off"]
    result = subprocess.run([*install, GRPCIO_TOOLS], capture_output=True, text=True)
    if result.returncode != 0:
        raise ProtocError(
            f"installing {GRPCIO_TOOLS} into {venv_dir} failed "
            f"(exit {result.returncode}); nothing was generated:\n{result.stderr.strip()}"
        )
    stamp.write_text(GRPCIO_TOOLS + "\n")
    return python


def protoc_command(python: Path, proto_root: Path, out_dir: Path) -> list[str]:
    """The protoc command line: Python messages, type stubs and the gRPC module."""
    return [
        str(python),
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(proto_root / proto) for proto in PROTO_FILES),
    ]


def generate(root: Path, out_dir: Path) -> list[Path]:
    """Run protoc into `out_dir` (a `src`-like root); return the generated files."""
    python = ensure_tool_venv(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = protoc_command(python, root / PROTO_ROOT, out_dir)
    # The tool venv must not see the project's own packages or site settings.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)
    if result.returncode != 0:
        raise ProtocError(
            f"protoc failed on {', '.join(map(str, PROTO_FILES))} "
            f"(exit {result.returncode}); stubs left as they were:\n{result.stderr.strip()}"
        )
    return generated_files(out_dir / STUB_PACKAGE)


def generated_files(package_dir: Path) -> list[Path]:
    """The generated stub files in a package directory, sorted by name."""
    if not package_dir.is_dir():
        return []
    return sorted(
        p for p in package_dir.iterdir() if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def stale_stubs(committed_dir: Path, fresh_dir: Path) -> list[str]:
    """Names of stub files that differ between the committed and a fresh generation.

    A file present on only one side counts as stale too.
    """
    committed = {p.name: p for p in generated_files(committed_dir)}
    fresh = {p.name: p for p in generated_files(fresh_dir)}
    stale = sorted(set(committed) ^ set(fresh))
    for name in sorted(set(committed) & set(fresh)):
        if not filecmp.cmp(committed[name], fresh[name], shallow=False):
            stale.append(name)
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    """Regenerate the committed stubs under src/ (what `invoke protos` runs)."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2]
    for path in generate(root, root / "src"):
        print(path.relative_to(root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
