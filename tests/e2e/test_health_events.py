"""Health from kernel events, end to end: the plugin image run as the DaemonSet runs it
(its own network namespace, no capabilities, read-only root) hears the kernel's uevents
for real loop devices, and a device that loses its medium turns Unhealthy at the
kubelet within a second, and Healthy again within a second of getting one back.

`losetup -d` and a resize to 0 leave the node in /dev: inotify sees nothing, only
sysfs `size` changes, so before kernel events the kubelet saw it at the next
`scan-interval` rescan (60 s in the suite's config).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import pytest
from tests.e2e.loopdev import BACKING_FILE_BYTES, LoopDevice, LoopDevices
from tests.e2e.node import HEALTHY, UNHEALTHY, Figure, Node, plugin_config
from tests.integration.kubelet_stub import Devices

pytestmark = [
    pytest.mark.engine,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root"),
]

DEADLINE_SECONDS = 1.0
START_TIMEOUT = 30.0
# Long enough to tell "heard the event" from "waited for the rescan" (60 s).
SEEN_WITHIN = 5.0


def losetup(*args: str) -> None:
    result = subprocess.run(["losetup", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"losetup {' '.join(args)}: {result.stderr.strip()}"


def start(node: Node, loops: LoopDevices) -> tuple[LoopDevice, str, str]:
    """Two granted loop devices (per-device units), one excluded; (device, its unit,
    the other's unit) once the kubelet lists both Healthy."""
    devices = [loops.create(0), loops.create(1)]
    excluded = loops.create(9)
    node.write_config(plugin_config(loops.glob, [excluded]))
    node.start()
    try:
        node.kubelet.wait_for_registration(timeout=START_TIMEOUT)
        listed = node.wait_for_list(
            lambda d: sum(h == HEALTHY for h in d.values()) == 2, timeout=START_TIMEOUT
        )
    except TimeoutError as error:
        raise AssertionError(f"{error}\nplugin log:\n{node.plugin_logs()[-3000:]}") from None
    ids = node.ids_by_path(listed)
    return devices[0], ids[devices[0].path], ids[devices[1].path]


def health_is(unit: str, health: str, other: str) -> Callable[[Devices], bool]:
    def matches(devices: Devices) -> bool:
        return devices.get(unit) == health and devices.get(other) == HEALTHY

    return matches


def seen_after(node: Node, since: float, matches: Callable[[Devices], bool]) -> float:
    _, latency = node.first_list_after(since, matches, timeout=SEEN_WITHIN)
    return latency


def test_a_detached_loop_device_turns_unhealthy_and_a_reattached_one_healthy_within_a_second(
    node: Node, loops: LoopDevices, figure: Figure
) -> None:
    device, unit, other = start(node, loops)

    detached_at = time.monotonic()
    losetup("-d", device.path)
    to_unhealthy = seen_after(node, detached_at, health_is(unit, UNHEALTHY, other))
    attached_at = time.monotonic()
    losetup(device.path, str(device.backing_file))
    to_healthy = seen_after(node, attached_at, health_is(unit, HEALTHY, other))

    assert "no kernel uevents" not in node.plugin_logs()
    figure("detach_to_unhealthy_seconds", to_unhealthy)
    figure("attach_to_healthy_seconds", to_healthy)
    assert to_unhealthy <= DEADLINE_SECONDS, f"losetup -d seen after {to_unhealthy:.3f} s"
    assert to_healthy <= DEADLINE_SECONDS, f"re-attach seen after {to_healthy:.3f} s"


def test_a_loop_device_resized_to_zero_turns_unhealthy_and_a_new_size_healthy_within_a_second(
    node: Node, loops: LoopDevices, figure: Figure
) -> None:
    device, unit, other = start(node, loops)

    shrunk_at = time.monotonic()
    os.truncate(device.backing_file, 0)
    losetup("-c", device.path)
    to_unhealthy = seen_after(node, shrunk_at, health_is(unit, UNHEALTHY, other))
    grown_at = time.monotonic()
    os.truncate(device.backing_file, BACKING_FILE_BYTES)
    losetup("-c", device.path)
    to_healthy = seen_after(node, grown_at, health_is(unit, HEALTHY, other))

    figure("resize_to_zero_to_unhealthy_seconds", to_unhealthy)
    figure("resize_to_healthy_seconds", to_healthy)
    assert to_unhealthy <= DEADLINE_SECONDS, f"resize to 0 seen after {to_unhealthy:.3f} s"
    assert to_healthy <= DEADLINE_SECONDS, f"the new size seen after {to_healthy:.3f} s"
