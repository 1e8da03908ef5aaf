"""What a client of the plugin socket can do to the real plugin process, and what it
must not: starve the kubelet's calls, make it echo megabytes, make it build megabytes.

Each storm is bounded in count and in time.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from tests.integration.kubelet_stub import KubeletStub
from tests.integration.plugin_process import FakeNode, PluginProcess
from tests.integration.stream_storm import StreamStorm

from power_device_plugin.api import pb, rpc

STORM_STREAMS = 1000
STORM_SECONDS = 60.0
# Far above the goal (10 ms, see bench/rpc_storm.py for the figures): a starved call
# waits for a worker that never comes, which no deadline is long enough for.
CALL_DEADLINE_SECONDS = 1.0
SHORT = 1000  # characters: a status or a log line quoting client input stays under it


def started(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> tuple[PluginProcess, list[str]]:
    node.device("fake0")
    node.device("fake1")
    process = plugin_factory()
    kubelet.wait_for_registration(timeout=10)
    devices = kubelet.wait_for_list(lambda d: len(d) == 2, timeout=5)
    return process, sorted(devices)


def test_allocate_and_preferred_allocation_are_answered_while_1000_streams_open_and_drop(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process, units = started(node, kubelet, plugin_factory)
    storm = StreamStorm(process.socket_path, STORM_STREAMS).start()
    stub = kubelet.latest_connection().stub
    calls, failures = 0, []
    deadline = time.monotonic() + STORM_SECONDS
    try:
        while not storm.done.is_set() and time.monotonic() < deadline:
            try:
                kubelet.allocate([units[0]], timeout=CALL_DEADLINE_SECONDS)
                stub.GetPreferredAllocation(
                    pb.PreferredAllocationRequest(
                        container_requests=[
                            pb.ContainerPreferredAllocationRequest(
                                available_deviceIDs=units, allocation_size=1
                            )
                        ]
                    ),
                    timeout=CALL_DEADLINE_SECONDS,
                )
                calls += 1
            except grpc.RpcError as error:
                failures.append(error.code())
                if len(failures) >= 3:
                    break
            time.sleep(0.005)
    finally:
        storm.stop(STORM_SECONDS)
    counts = storm.counts
    assert failures == [], (failures, calls, counts, process.log()[-3000:])
    assert calls > 0 and counts.opened >= STORM_STREAMS
    # Streams beyond the bounds were ended by the plugin or waited in their client.
    assert counts.answered > 0 and counts.other_errors == 0, counts
    # The kubelet's own stream outlived the storm, and still carries updates.
    assert kubelet.latest_connection().stream_error is None
    node.device("fake2")
    kubelet.wait_for_list(lambda d: len(d) == 3, timeout=3)


def test_a_huge_device_id_gets_a_short_status_and_a_short_log_line(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process, units = started(node, kubelet, plugin_factory)
    # 512 KiB: within what the plugin takes off the wire (two of them, one bad
    # twice). Just under 4 MiB: what gRPC's default limit lets through.
    for length, ids in ((512 * 1024, 2), (4 * 1024 * 1024 - 64, 1)):
        huge = "x" * length
        request = [units[0], huge, huge[:-1]][: 1 + ids]
        with pytest.raises(grpc.RpcError) as caught:
            kubelet.allocate(request, timeout=5)
        details = str(caught.value.details())
        assert caught.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,  # refused as too large before any handler
        ), details[:SHORT]
        assert len(details) < SHORT, details[:SHORT]
        if ids == 2:
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "'xxxx" in details and f"({length} characters)" in details
            assert "2 of 3 IDs" in details
    kubelet.allocate([units[0]])  # still answering
    longest = max(process.log().splitlines(), key=len)
    assert len(longest) < SHORT, longest[:SHORT]


def test_100000_container_requests_are_refused_as_an_invalid_argument(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    # All mode: every unit grants both devices; short unit IDs, so 100 000 requests
    # fit in one message the plugin takes (~0.9 MB), and answering them all would
    # be ~17 MB.
    node.write_config({"include-devices": ["/dev/fake*"]})
    process, units = started(node, kubelet, plugin_factory)
    with pytest.raises(grpc.RpcError) as caught:
        kubelet.allocate(*([units[0]] for _ in range(100_000)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert re.search(r"more than \d+ container requests, at most \d+", str(caught.value.details()))
    response = kubelet.allocate([units[0]], [units[1]])
    assert len(response.container_responses) == 2
    _, metrics = process.http_get("/metrics")
    assert 'pdp_allocations_total{result="too_large"} 1' in metrics


def test_sigterm_with_streams_open_exits_within_one_second(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process, _ = started(node, kubelet, plugin_factory)
    with grpc.insecure_channel(f"unix://{process.socket_path}") as channel:
        stub = rpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
        extra = [stub.ListAndWatch(pb.Empty()) for _ in range(3)]
        for stream in extra:
            next(stream)
        process.signal(signal.SIGTERM)
        before = time.monotonic()
        code = process.wait(timeout=5)
        took = time.monotonic() - before
    assert code == 0, process.log()
    assert took <= 1.0, (took, process.log()[-2000:])
    assert not process.socket_path.exists()


def test_concurrent_calls_beside_the_stream_on_one_connection_are_all_answered(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    _, units = started(node, kubelet, plugin_factory)
    errors: list[grpc.StatusCode] = []

    def calls() -> None:
        for _ in range(25):
            try:
                kubelet.allocate([units[0]], timeout=10)
            except grpc.RpcError as error:
                errors.append(error.code())

    threads = [threading.Thread(target=calls) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


def test_a_restarted_kubelet_gets_its_stream_while_a_storm_fills_the_socket(
    node: FakeNode, kubelet: KubeletStub, plugin_factory: Callable[..., PluginProcess]
) -> None:
    process, _ = started(node, kubelet, plugin_factory)
    storm = StreamStorm(process.socket_path, STORM_STREAMS).start()
    try:
        time.sleep(0.2)  # the storm is under way: it fills the new socket at once
        kubelet.restart()
        kubelet.wait_for_registration(2, timeout=10)
        devices = kubelet.wait_for_list(lambda d: len(d) == 2, timeout=10)
        assert kubelet.latest_connection().stream_error is None, process.log()[-2000:]
        kubelet.allocate([sorted(devices)[0]], timeout=CALL_DEADLINE_SECONDS)
    finally:
        storm.stop(STORM_SECONDS)
