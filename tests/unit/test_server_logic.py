"""The servicer's request handling, called directly with a stand-in gRPC context."""

from __future__ import annotations

import threading
from typing import NoReturn

import grpc
import pytest
from tests.unit.conftest import config_of

from power_device_plugin.api import pb
from power_device_plugin.devices import DeviceState, device_id_for
from power_device_plugin.discovery import ADVERTISED, SOURCE_SYSFS, Candidate, ScanResult
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.server import (
    DevicePluginServicer,
    allocate_response_wire,
    container_response,
)


class Aborted(Exception):
    pass


class FakeContext:
    """Records what ``abort`` was called with and raises, as grpc does."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.code, self.details = code, details
        raise Aborted(details)


def servicer_with(*problems: str) -> tuple[DevicePluginServicer, list[str]]:
    """A per-device servicer, two units per device; device i has problems[i]."""
    candidates = tuple(
        Candidate(
            path=f"/host/dev/sd{chr(97 + i)}",
            host_path=f"/dev/sd{chr(97 + i)}",
            verdict=ADVERTISED,
            rule="sysfs block",
            reason="block device node",
            kind="block",
            source=SOURCE_SYSFS,
            problem=problem,
        )
        for i, problem in enumerate(problems)
    )
    state = DeviceState()
    state.update(ScanResult(candidates), config_of(grant_mode="per-device", upper_limit=2))
    servicer = DevicePluginServicer(state, PluginMetrics(), threading.Event())
    return servicer, [d.id for d in state.current().devices]


def preferred_request(
    available: list[str], must_include: list[str], size: int
) -> pb.ContainerPreferredAllocationRequest:
    return pb.ContainerPreferredAllocationRequest(
        available_deviceIDs=available, must_include_deviceIDs=must_include, allocation_size=size
    )


def test_preferred_allocation_answers_each_container_request_from_its_own_fields() -> None:
    servicer, units = servicer_with("", "")
    sda, sdb = device_id_for("/dev/sda"), device_id_for("/dev/sdb")
    request = pb.PreferredAllocationRequest(
        container_requests=[
            preferred_request(units, [f"{sdb}-r1"], 2),
            preferred_request([f"{sda}-r0", f"{sda}-r1"], [], 1),
        ]
    )
    response = servicer.GetPreferredAllocation(request, FakeContext())  # type: ignore[arg-type]
    answers = [list(r.deviceIDs) for r in response.container_responses]
    assert answers == [[f"{sdb}-r1", f"{sda}-r0"], [f"{sda}-r0"]]


def test_preferred_allocation_refuses_a_negative_size_naming_the_field() -> None:
    servicer, units = servicer_with("")
    context = FakeContext()
    request = pb.PreferredAllocationRequest(container_requests=[preferred_request(units, [], -1)])
    with pytest.raises(Aborted):
        servicer.GetPreferredAllocation(request, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "container request 0: allocation_size is -1" in context.details


def test_allocate_refusal_names_the_request_the_id_and_the_problem() -> None:
    servicer, units = servicer_with("", "device/state is offline")
    sdb_unit = f"{device_id_for('/dev/sdb')}-r0"
    context = FakeContext()
    request = pb.AllocateRequest(
        container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[units[0]]),
            pb.ContainerAllocateRequest(devices_ids=[sdb_unit]),
        ]
    )
    with pytest.raises(Aborted):
        servicer.Allocate(request, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.FAILED_PRECONDITION
    assert context.details == (
        f"container request 1 (devices_ids): device ID {sdb_unit!r} is Unhealthy: "
        "device/state is offline; nothing was allocated"
    )


def test_allocate_refuses_an_unknown_id_as_an_invalid_argument() -> None:
    servicer, _ = servicer_with("")
    context = FakeContext()
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["nope-r0"])]
    )
    with pytest.raises(Aborted):
        servicer.Allocate(request, context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope-r0' is not advertised" in context.details


def all_mode_servicer(
    count: int,
) -> tuple[DevicePluginServicer, DeviceState, tuple[Candidate, ...]]:
    candidates = tuple(
        Candidate(
            path=f"/host/dev/dm-{i}",
            host_path=f"/dev/dm-{i}",
            verdict=ADVERTISED,
            rule="include /dev/dm-*",
            reason="block device node",
            kind="block",
            source=SOURCE_SYSFS,
        )
        for i in range(count)
    )
    state = DeviceState()
    state.update(ScanResult(candidates), config_of())
    return DevicePluginServicer(state, PluginMetrics(), threading.Event()), state, candidates


def allocate_request(*containers: list[str]) -> pb.AllocateRequest:
    return pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=ids) for ids in containers]
    )


def built_answer(state: DeviceState, *containers: list[str]) -> pb.AllocateResponse:
    """The answer built the plain way, message by message, from the same snapshot."""
    snapshot = state.current()
    return pb.AllocateResponse(
        container_responses=[container_response(snapshot.allocate(ids)) for ids in containers]
    )


def test_the_cached_all_mode_answer_is_byte_for_byte_the_built_one() -> None:
    servicer, state, _ = all_mode_servicer(300)
    request = allocate_request(["set-0"], ["set-1", "set-2"])
    first = servicer.allocate_wire(request, FakeContext())  # type: ignore[arg-type]
    again = servicer.allocate_wire(request, FakeContext())  # type: ignore[arg-type]
    expected = built_answer(state, ["set-0"], ["set-1", "set-2"])
    assert first == again == expected.SerializeToString()
    parsed = pb.AllocateResponse.FromString(first)
    assert [len(c.devices) for c in parsed.container_responses] == [300, 300]
    # Field 1 with a multi-byte length: the hand-assembled framing is what protobuf writes.
    assert len(parsed.container_responses[0].SerializeToString()) > 127


def test_a_snapshot_change_replaces_the_cached_answer() -> None:
    servicer, state, candidates = all_mode_servicer(3)
    request = allocate_request(["set-0"])
    before = pb.AllocateResponse.FromString(servicer.allocate_wire(request, FakeContext()))  # type: ignore[arg-type]
    assert [d.host_path for d in before.container_responses[0].devices] == [
        "/dev/dm-0",
        "/dev/dm-1",
        "/dev/dm-2",
    ]
    state.update(ScanResult(candidates[1:]), config_of(permissions="r"))
    after = pb.AllocateResponse.FromString(servicer.allocate_wire(request, FakeContext()))  # type: ignore[arg-type]
    assert [(d.host_path, d.permissions) for d in after.container_responses[0].devices] == [
        ("/dev/dm-1", "r"),
        ("/dev/dm-2", "r"),
    ]
    assert after == built_answer(state, ["set-0"])


def test_per_device_answers_come_from_the_cache_per_device_and_still_refuse_unknown_ids() -> None:
    servicer, units = servicer_with("", "")
    request = allocate_request([units[0]], [units[1], units[2]])
    wire = servicer.allocate_wire(request, FakeContext())  # type: ignore[arg-type]
    assert (
        wire == built_answer(servicer._state, [units[0]], [units[1], units[2]]).SerializeToString()
    )
    context = FakeContext()
    with pytest.raises(Aborted):
        servicer.allocate_wire(allocate_request([units[0]], ["nope-r0"]), context)  # type: ignore[arg-type]
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope-r0'" in context.details


def test_allocate_response_wire_matches_protobuf_for_every_length_class() -> None:
    for size in (0, 1, 127, 128, 16_383, 16_384, 2_100_000):
        part = pb.ContainerAllocateResponse(envs={"A": "x" * size}).SerializeToString()
        expected = pb.AllocateResponse(
            container_responses=[pb.ContainerAllocateResponse.FromString(part)]
        ).SerializeToString()
        assert allocate_response_wire([part]) == expected


def test_get_device_plugin_options_says_what_the_cdi_mode_needs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer, state, candidates = all_mode_servicer(1)
    state.update(ScanResult(candidates), config_of(cdi="only"))
    with caplog.at_level("INFO", logger="power_device_plugin.server"):
        options = servicer.GetDevicePluginOptions(pb.Empty(), FakeContext())  # type: ignore[arg-type]
    assert options.get_preferred_allocation_available is True
    assert "cdi only" in caplog.text
    assert "or a container gets no device" in caplog.text
