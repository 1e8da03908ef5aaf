"""A fake node (real device nodes, needs root), a kubelet stand-in and the plugin process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.integration.kubelet_stub import KubeletStub
from tests.integration.plugin_process import FakeNode, PluginProcess, start_plugin

# One unit per device, matched by an include glob: each test's devices are
# exactly the nodes it creates.
PER_DEVICE_CONFIG: dict[str, Any] = {"include-devices": ["/dev/fake*"], "grant-mode": "per-device"}


@pytest.fixture
def node() -> Iterator[FakeNode]:
    if os.geteuid() != 0:
        pytest.skip("the fake node's device nodes are made with os.mknod, which needs root")
    fake = FakeNode()
    fake.write_config(PER_DEVICE_CONFIG)
    yield fake
    fake.cleanup()


@pytest.fixture
def kubelet(node: FakeNode) -> Iterator[KubeletStub]:
    with KubeletStub(node.plugin_dir) as stub:
        yield stub


@pytest.fixture
def plugin_factory(node: FakeNode) -> Iterator[Callable[..., PluginProcess]]:
    started: list[PluginProcess] = []

    def start(*args: str, **kwargs: Any) -> PluginProcess:
        process = start_plugin(node, *args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def plugin(plugin_factory: Callable[..., PluginProcess]) -> PluginProcess:
    return plugin_factory()
