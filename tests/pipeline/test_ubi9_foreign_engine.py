"""The ubi9 runtime of a foreign platform with PyPI wheels is built from them, under QEMU.

`test_ubi9_engine.py` proves the ubi9 path on this host's own platform. Here the same
path (`runtime.ensure_runtime_image("ubi9", …)` over a wheels image from PyPI) runs for
every other platform PyPI has grpcio wheels for: a stand-in base of Debian packages
(Python and pip, no compiler) for that platform, its wheels image from PyPI, and the
runtime built from both with the runtime Containerfile's `pip install --no-index`
running emulated. Nothing is compiled; the runtime imports grpc and protobuf under its
own platform and carries no compiler.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from pdp_pipeline.images import bases, registry, runtime, wheels
from pdp_pipeline.platforms import PLATFORMS, Platform, native

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "127.0.0.1:5000"
REPOSITORY = f"pdp-test-ubi9-foreign-{uuid.uuid4().hex[:8]}"
BASE_PACKAGES = ("python3", "python3-pip")
BASE_PYTHON = "3.11"  # bookworm's python3
FOREIGN_WITH_WHEELS = [p for p in PLATFORMS if p.pypi_wheels and p != native()]
IMPORTS = "import grpc, google.protobuf, platform; print(grpc.__version__, platform.machine())"
NO_COMPILER = "for c in gcc cc c++ g++ clang; do command -v $c && exit 10; done; echo none"


def _run(argv: list[str], timeout: float = 900.0) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stdout[-2000:]}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    host_setup.setup(host_setup.HostPaths(cache=ROOT / ".cache"), log=lambda _: None)
    return LOCAL


def _stand_in_base(platform: Platform, registry_addr: str) -> bases.BasePin:
    """Debian's Python and pip for `platform` (mmdebstrap under QEMU), pushed, as the pin."""
    tar = ROOT / ".cache" / "test-base" / f"bookworm-{'-'.join(BASE_PACKAGES)}-{platform.arch}.tar"
    if not tar.exists():
        tar.parent.mkdir(parents=True, exist_ok=True)
        partial = tar.with_suffix(".partial.tar")
        _run(
            [
                "mmdebstrap",
                f"--arch={platform.debian_arch}",
                "--variant=apt",
                "--include=" + ",".join(BASE_PACKAGES),
                "--aptopt=Acquire::Retries 3",
                "bookworm",
                str(partial),
                f"deb {runtime.debian_mirror()} bookworm main",
            ]
        )
        partial.rename(tar)
    image = f"{registry_addr}/{REPOSITORY}-base:bookworm-{platform.arch}"
    _run(["docker", "import", "--platform", platform.platform, str(tar), image])
    registry.with_retries(
        lambda: _run(["docker", "push", image]), what=f"push of {image}", log=lambda _: None
    )
    digest = registry.manifest_digest(image, log=lambda _: None)
    subprocess.run(["docker", "image", "rm", image], capture_output=True, check=False)
    return bases.BasePin("ubi9", image, digest, BASE_PYTHON)


@pytest.mark.skipif(not FOREIGN_WITH_WHEELS, reason="no foreign platform has PyPI wheels")
@pytest.mark.parametrize("platform", FOREIGN_WITH_WHEELS, ids=lambda p: p.arch)
def test_the_ubi9_runtime_of_a_foreign_platform_installs_pypi_wheels_without_compiling(
    local_registry: str, platform: Platform
) -> None:
    pin = _stand_in_base(platform, local_registry)
    made = wheels.make_wheels_image(pin, platform, local_registry, REPOSITORY, source="pypi")
    lines: list[str] = []
    image = runtime.ensure_runtime_image(
        "ubi9", platform, local_registry, REPOSITORY, base_pin=pin, log=lines.append
    )
    commands = [line for line in lines if "docker buildx build" in line]
    assert len(commands) == 1 and f"--platform {platform.platform}" in commands[0], lines
    assert f"WHEELS_IMAGE={made.pinned}" in commands[0]
    assert not image.reused
    pinned = f"{image.ref.rsplit(':', 1)[0]}@{image.digest}"
    script = f'python3 -c "{IMPORTS}" && {NO_COMPILER}'
    run = ["docker", "run", "--rm", "--network", "host", "--platform", platform.platform]
    out = _run([*run, pinned, "/bin/sh", "-c", script])
    version, machine, compiler = out.split()
    assert (machine, compiler) == (platform.machine, "none")
    assert version.count(".") == 2
