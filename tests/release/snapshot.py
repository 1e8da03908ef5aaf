"""A throwaway git checkout of this working tree, for running the release on.

The release reads git (the tag on HEAD, a clean tree), so its tests need a
repository whose state they control. Copying the working tree (tracked and
untracked files, minus what .gitignore excludes) into a fresh repository lets
them tag, dirty and release it without touching this checkout's git state.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GIT_IDENTITY = ("-c", "user.name=release-test", "-c", "user.email=release-test@example.com")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_IDENTITY, *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def snapshot_checkout(dest: Path, tag: str | None, source: Path = ROOT) -> Path:
    """`dest` as a one-commit repository with source's files, HEAD tagged `tag` (annotated)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        check=True,
    ).stdout.decode()
    dest.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed.split("\0")):
        origin = source / name
        if origin.is_file():  # listed but deleted in the working tree: not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "snapshot of the working tree")
    if tag:
        git(dest, "tag", "-a", tag, "-m", tag)
    return dest


def invoke_in(repo: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`invoke ARGS` with this environment's invoke, in `repo` (its tasks.py, its src/)."""
    invoke = Path(sys.executable).parent / "invoke"
    # The debian root file systems and the host's build key (which signs runtimes) are
    # kept in this checkout's .cache, so one dry run's signed runtimes are reused by the next.
    env = {
        "PDP_RUNTIME_CACHE": str(ROOT / ".cache" / "runtime"),
        "PDP_BUILD_KEY_DIR": str(ROOT / ".cache" / "release" / "cosign-build"),
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [str(invoke), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )
