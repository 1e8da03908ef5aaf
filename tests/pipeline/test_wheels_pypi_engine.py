"""Every platform PyPI has grpcio wheels for gets its wheels image from PyPI, no compile.

The ubi9 runtime installs grpcio and protobuf from a wheels image of its platform
(`pdp_pipeline.images.wheels`). For a platform with `pypi_wheels` that image is made
by `invoke wheels --arch ARCH` from PyPI's binary wheels: a `FROM scratch` image,
built for that platform without running anything in it. The base pin only enters the
key and the labels, so a stand-in pin with the ubi9 Python serves here.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

from pdp_pipeline.images import bases, wheels
from pdp_pipeline.platforms import PLATFORMS, Platform

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "127.0.0.1:5000"
REPOSITORY = f"pdp-test-pypi-wheels-{uuid.uuid4().hex[:8]}"
PIN = bases.BasePin("ubi9", "stand-in/ubi9:test", "sha256:" + "0" * 64, "3.12")


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    host_setup.setup(host_setup.HostPaths(cache=ROOT / ".cache"), log=lambda _: None)
    return LOCAL


def _wheel_names(platform: Platform, ref: str) -> list[str]:
    """The files under /wheels of a FROM-scratch image (created, never run)."""
    created = subprocess.run(
        ["docker", "create", "--platform", platform.platform, ref, "/none"],
        capture_output=True,
        text=True,
        check=True,
    )
    container = created.stdout.strip()
    try:
        listing = subprocess.run(
            ["docker", "cp", f"{container}:/wheels", "-"], capture_output=True, check=True
        ).stdout
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=False)
        subprocess.run(["docker", "image", "rm", ref], capture_output=True, check=False)
    with tempfile.TemporaryFile() as archive:
        archive.write(listing)
        archive.seek(0)
        with tarfile.open(fileobj=archive) as tar:
            return sorted(Path(m.name).name for m in tar.getmembers() if m.isfile())


@pytest.mark.parametrize("platform", [p for p in PLATFORMS if p.pypi_wheels], ids=lambda p: p.arch)
def test_a_platform_with_pypi_wheels_gets_binary_wheels_for_its_machine(
    local_registry: str, platform: Platform
) -> None:
    lines: list[str] = []
    image = wheels.make_wheels_image(
        PIN, platform, local_registry, REPOSITORY, source="pypi", log=lines.append
    )
    assert image.built and f"-wheels:py3.12-{platform.arch}-" in image.ref
    assert not any(wheels.COMPILE_CONTAINERFILE.name in line for line in lines)
    names = _wheel_names(platform, image.pinned)
    assert all(n.endswith(".whl") for n in names), names  # nothing to compile
    assert any(n.startswith("grpcio-") and platform.machine in n for n in names), names
    assert all(platform.machine in n or n.endswith("-none-any.whl") for n in names), names
    found = wheels.find_wheels_image(PIN, platform, local_registry, REPOSITORY, log=lines.append)
    assert found.digest == image.digest
