"""Fixtures of the node suite: the engine, the plugin image, the rendered DaemonSet, loop devices.

Settings (environment, so `invoke e2e` and plain pytest read the same):
- `PDP_E2E_ARCHS`: architectures to run the plugin image of (default: this host's own,
  `platforms.native()`; a comma list of `platforms.PLATFORMS` names; foreign ones run
  under QEMU and are slower);
- `PDP_BUILD_RECORD`: the build record to take images from (default
  `.cache/build/last-build.json`; an architecture it lacks is built, debian base);
- `PDP_E2E_MANIFESTS`: the kustomization to render (default `manifests`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from tests.e2e.loopdev import LoopDevices
from tests.e2e.node import Figure, Node, remove_leftover_containers

from pdp_pipeline import manifests
from pdp_pipeline.e2e import manifest as e2e_manifest
from pdp_pipeline.images import build
from pdp_pipeline.images import record as build_record
from pdp_pipeline.platforms import by_arch, native

ROOT = Path(__file__).resolve().parents[2]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch" in metafunc.fixturenames:
        archs = [a.strip() for a in os.environ.get("PDP_E2E_ARCHS", native().arch).split(",")]
        metafunc.parametrize("arch", [by_arch(a).arch for a in archs if a], scope="session")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        pytest.fail(f"no Docker engine answers ({error}); bring it up with `invoke setup`")
    remove_leftover_containers(client)
    yield client
    client.close()


def _record_path() -> Path:
    return Path(os.environ.get("PDP_BUILD_RECORD", str(build_record.record_path(ROOT))))


@pytest.fixture(scope="session")
def plugin_image(docker_client: docker.DockerClient, arch: str) -> str:
    """The plugin image of the last build for `arch`, pulled by digest; built if absent."""
    path = _record_path()
    try:
        record = build_record.load_record(path)
        result = record.result_for(arch)
    except build_record.BuildError as missing:
        print(f"e2e: {missing}; building {arch} on the debian base")
        options = build.BuildOptions(archs=(by_arch(arch),), base="debian", verify=False)
        record = build.run_build(options, root=ROOT)
        result = record.result_for(arch)
    if not record.pushed:
        return result.image_ref
    reference = result.digest_ref()
    repository, digest = reference.split("@", 1)
    docker_client.images.pull(repository, tag=digest, platform=result.platform.platform)
    return reference


@pytest.fixture(scope="session")
def rendered() -> list[dict[str, Any]]:
    """Every object of the kustomization, rendered by kustomize."""
    return manifests.render(ROOT / os.environ.get("PDP_E2E_MANIFESTS", "manifests"))


@pytest.fixture(scope="session")
def daemonset(rendered: list[dict[str, Any]]) -> Mapping[str, Any]:
    return e2e_manifest.find_daemonset(rendered)


@pytest.fixture
def figure(record_testsuite_property: Callable[[str, object], None], arch: str) -> Figure:
    """Record a measured figure (seconds) in the JUnit report, named by architecture."""

    def record(name: str, seconds: float) -> None:
        record_testsuite_property(f"e2e.{arch}.{name}", f"{seconds:.3f}")
        print(f"e2e {arch}: {name} = {seconds:.3f}")

    return record


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopDevices]:
    devices = LoopDevices(tmp_path / "loops")
    devices.workdir.mkdir()
    yield devices
    problems = devices.cleanup()
    assert not problems, f"loop devices left behind: {problems}"


@pytest.fixture
def node(
    docker_client: docker.DockerClient,
    tmp_path: Path,
    daemonset: Mapping[str, Any],
    plugin_image: str,
    arch: str,
) -> Iterator[Node]:
    """A node for one test; not started (the test writes the config first)."""
    the_node = Node(
        docker_client,
        tmp_path / "node",
        daemonset,
        plugin_image,
        platform=by_arch(arch).platform,
    )
    yield the_node
    problems = the_node.close()
    assert not problems, f"containers left behind: {problems}"
