"""The build context of the plugin image: the wheel, built once, unpacked on the host.

The plugin is pure Python, so its wheel is built once on the build platform with
the tag's version and unpacked (`pip install --no-deps --target`) next to the
launcher; every architecture's image then only copies this context. Pure-Python
dependencies no runtime image carries (`containers/context-requirements.txt`,
`py3-none-any` wheels, hashes pinned) are fetched and unpacked beside it the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pdp_pipeline.images.record import BuildError, last_lines
from pdp_pipeline.log import Log

LAUNCHER = Path("containers") / "power-device-plugin"
# Pure-Python dependencies the runtimes lack, pinned by version and sha256.
CONTEXT_REQUIREMENTS = Path("containers") / "context-requirements.txt"
# Where the image expects the unpacked plugin (ENV PYTHONPATH in the Containerfile).
SITE_PACKAGES = "site-packages"


def wheel_command(python: str, root: Path, outdir: Path) -> list[str]:
    # No isolation: the build backend comes from the project's own environment, so
    # a build needs no package index (air-gapped hosts) and spends no time on one.
    return [python, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(outdir), str(root)]


def wheel_env(version: str, env: Mapping[str, str], epoch: int | None = None) -> dict[str, str]:
    """The environment that makes setuptools-scm use our version, not its own guess.

    With `epoch` (the commit time) as SOURCE_DATE_EPOCH the wheel's zip entries
    carry that time, not the build's: the same commit builds the same wheel.
    """
    fixed = {"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {}
    return {
        **env,
        **fixed,
        "SETUPTOOLS_SCM_PRETEND_VERSION": version,
        "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_POWER_DEVICE_PLUGIN": version,
    }


def stage_command(python: str, wheel: Path, site_packages: Path) -> list[str]:
    """Unpack the wheel for the image: no dependencies, no index, no bytecode."""
    return [
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-index",
        "--no-compile",
        "--target",
        str(site_packages),
        str(wheel),
    ]


def download_command(python: str, requirements: Path, dest: Path) -> list[str]:
    """Fetch the pinned pure-Python wheels: any Python 3, any platform, never a source build.

    `--platform any --abi none --implementation py` admits only `py3-none-any` wheels, so
    what is fetched runs on every base and architecture; `--require-hashes` refuses a
    file whose sha256 is not the one in the requirements file.
    """
    return [
        python,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--no-deps",
        "--require-hashes",
        # The oldest Python the project supports: Requires-Python is checked against it
        # (a bare "3" reads as 3.0), and a py3-none-any wheel for it runs on any later one.
        "--python-version",
        "3.9",
        "--implementation",
        "py",
        "--abi",
        "none",
        "--platform",
        "any",
        "--dest",
        str(dest),
        "-r",
        str(requirements),
    ]


def fetch_dependency_wheels(root: Path, dest: Path, log: Log = print) -> list[Path]:
    """The wheels of `containers/context-requirements.txt`, downloaded into `dest`."""
    requirements = root / CONTEXT_REQUIREMENTS
    if not requirements.exists():
        return []
    dest.mkdir(parents=True, exist_ok=True)
    _run_step(
        download_command(sys.executable, requirements, dest),
        "fetching " + str(requirements),
        log=log,
    )
    wheels = sorted(dest.glob("*.whl"))
    impure = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
    if impure:
        raise BuildError(f"{requirements}: {impure} are not pure-Python wheels; none were staged")
    return wheels


def build_wheel(
    root: Path, version: str, outdir: Path, log: Log = print, *, epoch: int | None = None
) -> Path:
    """Build the plugin wheel once, with `version` as its version (and `epoch` its time)."""
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    argv = wheel_command(sys.executable, root, outdir)
    _run_step(argv, "the plugin wheel", env=wheel_env(version, os.environ, epoch), log=log)
    wheels = sorted(outdir.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one wheel in {outdir} after `{' '.join(argv)}`, found {wheels}")
    return wheels[0]


def stage_context(
    root: Path,
    wheel: Path,
    context: Path,
    log: Log = print,
    *,
    epoch: int | None = None,
    dependencies: tuple[Path, ...] = (),
) -> Path:
    """The build context of containers/Containerfile: site-packages/ and the launcher.

    `dependencies` (pure-Python wheels, `fetch_dependency_wheels`) are unpacked into the
    same site-packages, with the same treatment (no bytecode, no install path, mtimes).

    Nothing in it depends on where or when it was staged: pip's record of the wheel's
    path (`direct_url.json`) is dropped and, with `epoch`, every mtime is set to
    it (COPY keeps mtimes, so they would otherwise carry the clone's time into the layer).
    """
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    site_packages = context / SITE_PACKAGES
    _run_step(stage_command(sys.executable, wheel, site_packages), "staging the wheel", log=log)
    for dependency in dependencies:
        _run_step(
            stage_command(sys.executable, dependency, site_packages),
            f"staging {dependency.name}",
            log=log,
        )
    # The console script pip writes points at this host's Python (the clone's .venv, a path
    # that differs from clone to clone); the image has its own launcher. Its RECORD line
    # (with the script's hash) goes too, or the clone's path would reach the layer that way.
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
    drop_record_lines(site_packages, "../../bin/")
    launcher = context / LAUNCHER.name
    shutil.copyfile(root / LAUNCHER, launcher)
    launcher.chmod(0o755)
    drop_install_location(site_packages)
    if epoch is not None:
        pin_mtimes(context, epoch)
    return context


def drop_install_location(site_packages: Path) -> None:
    """Remove `direct_url.json` (it names the wheel's absolute path) and its RECORD line."""
    for dist_info in site_packages.glob("*.dist-info"):
        direct_url = dist_info / "direct_url.json"
        if not direct_url.exists():
            continue
        direct_url.unlink()
        record = dist_info / "RECORD"
        if record.exists():
            entry = f"{dist_info.name}/direct_url.json,"
            lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
            record.write_text(
                "".join(line for line in lines if not line.startswith(entry)), encoding="utf-8"
            )


def drop_record_lines(site_packages: Path, prefix: str) -> None:
    """Remove the RECORD lines of files under `prefix` (paths relative to site-packages)."""
    for record in site_packages.glob("*.dist-info/RECORD"):
        lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if not line.startswith(prefix)]
        if kept != lines:
            record.write_text("".join(kept), encoding="utf-8")


def pin_mtimes(tree: Path, epoch: int) -> None:
    """Set the mtime of `tree` and everything in it to `epoch` (links themselves too)."""
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def _run_step(
    argv: list[str], what: str, *, env: Mapping[str, str] | None = None, log: Log = print
) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=dict(env) if env else None
    )
    if result.returncode != 0:
        raise BuildError(
            f"{what}: `{' '.join(argv)}` exited with {result.returncode}; last lines:\n"
            + last_lines(result.stdout + result.stderr)
        )
