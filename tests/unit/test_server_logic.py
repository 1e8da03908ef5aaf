"""The servicer's request handling, called directly: an answer, or `Refused` with a status."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from tests.unit.conftest import config_of

from power_device_plugin import server
from power_device_plugin.api import pb
from power_device_plugin.devices import MAX_QUOTED_CHARS, DeviceState, device_id_for
from power_device_plugin.discovery import ADVERTISED, SOURCE_SYSFS, Candidate, ScanResult
from power_device_plugin.metrics import PluginMetrics
from power_device_plugin.server import (
    DevicePluginServicer,
    Refused,
    StreamBook,
    StreamCounter,
    allocate_response_wire,
    container_response,
)


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
    response = servicer.preferred_allocation(request)
    answers = [list(r.deviceIDs) for r in response.container_responses]
    assert answers == [[f"{sdb}-r1", f"{sda}-r0"], [f"{sda}-r0"]]


def test_preferred_allocation_refuses_a_negative_size_naming_the_field() -> None:
    servicer, units = servicer_with("")
    request = pb.PreferredAllocationRequest(container_requests=[preferred_request(units, [], -1)])
    with pytest.raises(Refused) as caught:
        servicer.preferred_allocation(request)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "container request 0: allocation_size is -1" in caught.value.details


def test_allocate_refusal_names_the_request_the_id_and_the_problem() -> None:
    servicer, units = servicer_with("", "device/state is offline")
    sdb_unit = f"{device_id_for('/dev/sdb')}-r0"
    request = pb.AllocateRequest(
        container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[units[0]]),
            pb.ContainerAllocateRequest(devices_ids=[sdb_unit]),
        ]
    )
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(request)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details == (
        f"container request 1 of 2 (devices_ids): device ID {sdb_unit!r} is Unhealthy: "
        "device/state is offline; nothing was allocated"
    )


def test_allocate_refuses_an_unknown_id_as_an_invalid_argument() -> None:
    servicer, _ = servicer_with("")
    request = pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=["nope-r0"])]
    )
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(request)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope-r0' is not advertised" in caught.value.details


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
    first = servicer.allocate_wire(request)
    again = servicer.allocate_wire(request)
    expected = built_answer(state, ["set-0"], ["set-1", "set-2"])
    assert first == again == expected.SerializeToString()
    parsed = pb.AllocateResponse.FromString(first)
    assert [len(c.devices) for c in parsed.container_responses] == [300, 300]
    # Field 1 with a multi-byte length: the hand-assembled framing is what protobuf writes.
    assert len(parsed.container_responses[0].SerializeToString()) > 127


def test_a_snapshot_change_replaces_the_cached_answer() -> None:
    servicer, state, candidates = all_mode_servicer(3)
    request = allocate_request(["set-0"])
    before = pb.AllocateResponse.FromString(servicer.allocate_wire(request))
    assert [d.host_path for d in before.container_responses[0].devices] == [
        "/dev/dm-0",
        "/dev/dm-1",
        "/dev/dm-2",
    ]
    state.update(ScanResult(candidates[1:]), config_of(permissions="r"))
    after = pb.AllocateResponse.FromString(servicer.allocate_wire(request))
    assert [(d.host_path, d.permissions) for d in after.container_responses[0].devices] == [
        ("/dev/dm-1", "r"),
        ("/dev/dm-2", "r"),
    ]
    assert after == built_answer(state, ["set-0"])


def test_per_device_answers_come_from_the_cache_per_device_and_still_refuse_unknown_ids() -> None:
    servicer, units = servicer_with("", "")
    request = allocate_request([units[0]], [units[1], units[2]])
    wire = servicer.allocate_wire(request)
    assert (
        wire == built_answer(servicer._state, [units[0]], [units[1], units[2]]).SerializeToString()
    )
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(allocate_request([units[0]], ["nope-r0"]))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope-r0'" in caught.value.details


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
        options = servicer.options()
    assert options.get_preferred_allocation_available is True
    assert "cdi only" in caplog.text
    assert "or a container gets no device" in caplog.text


def test_an_allocate_with_too_many_container_requests_is_refused_before_any_is_answered() -> None:
    servicer, _, _ = all_mode_servicer(2)
    request = allocate_request(*(["set-0"] for _ in range(server.MAX_CONTAINER_REQUESTS + 1)))
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(request)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details.startswith(
        f"Allocate has {server.MAX_CONTAINER_REQUESTS + 1} container requests, "
        f"at most {server.MAX_CONTAINER_REQUESTS}"
    )
    assert servicer._metrics.allocations.labels(result="too_large").samples()[0][2] == 1


def test_an_allocate_whose_answer_would_pass_the_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    servicer, _, _ = all_mode_servicer(300)
    one = len(servicer.allocate_wire(allocate_request(["set-0"])))
    monkeypatch.setattr(server, "MAX_ANSWER_BYTES", 3 * one)
    assert len(servicer.allocate_wire(allocate_request(*(["set-0"] for _ in range(3))))) == 3 * one
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(allocate_request(*(["set-0"] for _ in range(4))))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "would be more than" in caught.value.details
    assert "reached at container request 3" in caught.value.details


def test_a_long_unknown_id_is_quoted_as_a_prefix_and_the_bad_ones_are_counted() -> None:
    servicer, units = servicer_with("")
    huge = "y" * 1_000_000
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(allocate_request([units[0], huge, "nope", units[1]]))
    details = caught.value.details
    assert len(details) < 300
    assert f"{'y' * MAX_QUOTED_CHARS!r}... (1000000 characters)" in details
    assert "(2 of 4 IDs cannot be granted)" in details


def test_preferred_allocation_logs_outside_ids_by_count_and_one_short_prefix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer, units = servicer_with("", "")
    request = pb.PreferredAllocationRequest(
        container_requests=[preferred_request(units, ["z" * 100_000, "z" * 99_999], 1)]
    )
    with caplog.at_level("WARNING", logger="power_device_plugin.server"):
        response = servicer.preferred_allocation(request)
    assert len(response.container_responses[0].deviceIDs) == 1
    (line,) = caplog.messages
    assert "2 must_include_deviceIDs" in line and "(99999 characters)" in line
    assert len(line) < 300


class _Counter(StreamCounter):
    def __init__(self) -> None:
        super().__init__(PluginMetrics())


def test_the_stream_book_refuses_extra_streams_when_full_but_never_the_kubelets_stream() -> None:
    async def scenario() -> None:
        book = StreamBook(_Counter(), limit=3)
        early = book.open()  # before any registration: not the kubelet's
        extras = [book.open(), book.open()]
        assert early is not None and not early.kubelet
        assert book.open() is None  # full: a new extra stream is refused
        book.expect_kubelet()  # registered
        assert book.open("grpc-go/1.65") is None  # no options call first: not the kubelet
        book.options_asked("grpc-go/1.65")
        assert book.open("grpc-python/1.85") is None  # another client: not the kubelet
        kubelet = book.open("grpc-go/1.65")  # full, but the kubelet's: the oldest other ends
        assert kubelet is not None and kubelet.kubelet
        assert early.ended and early.wake.is_set()
        assert [s is not None and s.ended == "" for s in extras] == [True, True]
        assert len(book) == 3
        assert book.open() is None
        book.close(extras[0])
        book.close(early)  # ended already: counted once
        assert len(book) == 2
        assert book.open() is not None
        book.end_all()
        assert kubelet.ended == "the plugin is stopping" and len(book) == 0

    asyncio.run(scenario())


def test_top_level_fields_are_counted_as_protobuf_writes_them() -> None:
    for count in (0, 1, 255, 256, 257, 1000):
        request = allocate_request(*(["x" * (i % 300)] for i in range(count)))
        data = request.SerializeToString()
        assert server.more_top_level_fields(data, 256) is (count > 256), count
    # Varints, fixed64/fixed32 and a cut-short message: counted or left to protobuf.
    assert server.more_top_level_fields(b"\x08\x96\x01\x11" + b"\0" * 8 + b"\x1d\0\0\0\0", 2)
    assert not server.more_top_level_fields(b"\x0a\xff\xff\xff\xff\x0f", 1)
    assert not server.more_top_level_fields(b"\x0f" * 10, 5)  # wire type 7: malformed


def test_a_request_with_too_many_parts_is_refused_unparsed() -> None:
    servicer, units = servicer_with("")
    deserialize = server.bounded_parts(pb.AllocateRequest.FromString, 2)
    assert isinstance(
        deserialize(allocate_request([units[0]]).SerializeToString()), pb.AllocateRequest
    )
    too_many = deserialize(allocate_request(*([units[0]] for _ in range(3))).SerializeToString())
    assert isinstance(too_many, server.TooManyParts)
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(too_many)
    assert caught.value.details.startswith("Allocate has more than 2 container requests")
    with pytest.raises(Refused):
        servicer.preferred_allocation(too_many)


def test_a_container_request_naming_more_ids_than_any_snapshot_has_is_refused() -> None:
    servicer, units = servicer_with("")
    ids = [units[0]] * (server.MAX_IDS_PER_CONTAINER + 1)
    with pytest.raises(Refused) as caught:
        servicer.allocate_wire(allocate_request(ids))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"devices_ids names {len(ids)} device IDs" in caught.value.details
    request = pb.PreferredAllocationRequest(container_requests=[preferred_request(ids, [], 1)])
    with pytest.raises(Refused):
        servicer.preferred_allocation(request)
