"""Fixtures of the image suite: one running container per architecture of a build record.

Each architecture's image is pulled from the registry BY DIGEST and started under
its own platform (QEMU for foreign ones) the way the DaemonSet runs it: read-only
root, every capability dropped, host network, and the host's /dev visible under
a bind mount — here a fake one with real device nodes and a planted symlink
that escapes it. The record comes from `--build-record` / PDP_BUILD_RECORD,
else `.cache/build/last-build.json`; `--image-arch` / PDP_IMAGE_ARCH narrows
the architectures.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdp_pipeline.images import record as build_record
from pdp_pipeline.images import registry, verify
from pdp_pipeline.platforms import PLATFORMS, by_arch

ROOT = Path(__file__).resolve().parents[2]

# The fake host tree, as the container sees it.
MOUNT = "/host"
DEV_ROOT = f"{MOUNT}/dev"
SYS_ROOT = f"{MOUNT}/sys"
CONFIG = f"{MOUNT}/config.json"
CHAR_NODE = "pdp-char0"
BLOCK_NODE = "pdp-block0"
ESCAPING_LINK = "pdp-escape"
# A character node is taken only when named exactly; a glob brings block nodes.
SCAN_CONFIG = {"include-devices": ["/dev/pdp-*", "/dev/pdp-char0"]}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("image suite")
    group.addoption("--build-record", default=None, help="build record to verify")
    group.addoption(
        "--image-arch", default=None, help="architectures to verify: comma list (default: all)"
    )


def _option(config: pytest.Config, name: str, env: str) -> str | None:
    # The options exist only when this directory is given on the command line.
    value = config.getoption(name, default=None)
    return str(value) if value else os.environ.get(env) or None


def _record_path(config: pytest.Config) -> Path:
    given = _option(config, "--build-record", verify.RECORD_ENV)
    return Path(given) if given else build_record.record_path(ROOT)


def _selected_archs(config: pytest.Config) -> list[str]:
    given = _option(config, "--image-arch", verify.ARCH_ENV)
    if given:
        return [by_arch(name.strip()).arch for name in given.split(",") if name.strip()]
    try:
        return [r.platform.arch for r in build_record.load_record(_record_path(config)).archs]
    except build_record.BuildError:
        # No record: parametrize over every platform so the `record` fixture fails
        # each check loudly, instead of collecting nothing and passing.
        return [p.arch for p in PLATFORMS]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch" in metafunc.fixturenames:
        archs = _selected_archs(metafunc.config)
        metafunc.parametrize("arch", archs, ids=archs, scope="session")


@pytest.fixture(scope="session")
def record(request: pytest.FixtureRequest) -> build_record.BuildRecord:
    path = _record_path(request.config)
    try:
        loaded = build_record.load_record(path)
    except build_record.BuildError as error:
        pytest.fail(str(error))
    if not loaded.pushed or not loaded.index_ref:
        pytest.fail(f"{path} records a --no-push build; the suite verifies pushed images")
    return loaded


@pytest.fixture(scope="session")
def result(record: build_record.BuildRecord, arch: str) -> build_record.ArchResult:
    try:
        return record.result_for(arch)
    except build_record.BuildError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=600)
    yield client
    client.close()


@dataclass(frozen=True)
class FakeHost:
    """The fake host tree on this side, and what a scan inside the container should say."""

    tree: Path
    char_node: str = f"/dev/{CHAR_NODE}"  # host paths, as the plugin reports them
    block_node: str = f"/dev/{BLOCK_NODE}"
    escaping_link: str = f"/dev/{ESCAPING_LINK}"
    scan_command: str = (
        f"power-device-plugin scan --dev-root {DEV_ROOT} --sys-root {SYS_ROOT}"
        f" --config {CONFIG} --output json"
    )


@pytest.fixture(scope="session")
def fake_host(tmp_path_factory: pytest.TempPathFactory) -> FakeHost:
    """A host tree with a char and a block node, and a link out of dev/ to a real node."""
    tree = tmp_path_factory.mktemp("fake-host")
    dev = tree / "dev"
    outside = tree / "outside"
    for directory in (dev, outside, tree / "sys" / "block"):
        directory.mkdir(parents=True)
    # 240: a char major for local use (1:3 is /dev/null, which the deny list refuses by number).
    os.mknod(dev / CHAR_NODE, 0o600 | stat.S_IFCHR, os.makedev(240, 3))
    os.mknod(dev / BLOCK_NODE, 0o600 | stat.S_IFBLK, os.makedev(7, 250))
    # The link's target is itself a device node: only escaping dev-root can refuse it.
    os.mknod(outside / "pdp-outside0", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    (dev / ESCAPING_LINK).symlink_to("../outside/pdp-outside0")
    (tree / "config.json").write_text(json.dumps(SCAN_CONFIG))
    return FakeHost(tree)


@pytest.fixture(scope="session")
def container(
    docker_client: Any, result: build_record.ArchResult, fake_host: FakeHost
) -> Iterator[Any]:
    """The image, pulled by digest, running `sleep` under its platform, locked down."""
    ref = result.digest_ref()
    docker_client.images.pull(ref, platform=result.platform.platform)
    running = docker_client.containers.run(
        ref,
        entrypoint=["sleep"],
        command=["infinity"],
        platform=result.platform.platform,
        detach=True,
        read_only=True,
        cap_drop=["ALL"],
        network_mode="host",
        volumes={str(fake_host.tree): {"bind": MOUNT, "mode": "ro"}},
        labels={"io.github.power-device-plugin.purpose": "image-suite"},
    )
    try:
        running.reload()
        yield running
    finally:
        running.remove(force=True)


@pytest.fixture(scope="session")
def image_host(container: Any) -> Any:
    import testinfra

    return testinfra.get_host(f"docker://{container.id}")


@pytest.fixture(scope="session")
def image_attrs(docker_client: Any, result: build_record.ArchResult) -> dict[str, Any]:
    attrs: dict[str, Any] = docker_client.images.get(result.digest_ref()).attrs
    return attrs


@pytest.fixture(scope="session")
def platform_digest(result: build_record.ArchResult) -> str:
    """The digest of the image manifest a runtime pulls for this platform.

    A build with provenance pushes each architecture as a small index (image plus
    attestation); without, the pushed digest is the manifest itself.
    """
    document = registry.raw_manifest(result.digest_ref(), log=lambda _: None)
    if "manifests" not in document:
        return result.digest
    entries = dict(registry.platforms_of_index(document))
    return entries[result.platform.platform]
