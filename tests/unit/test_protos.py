"""The committed stubs are what protoc (grpcio-tools 1.51) makes of protos/ today."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp_pipeline import protos

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "src" / protos.STUB_PACKAGE


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    fresh = protos.generate(ROOT, tmp_path)
    assert fresh, "protoc generated nothing"
    stale = protos.stale_stubs(COMMITTED, tmp_path / protos.STUB_PACKAGE)
    assert stale == [], f"stale stubs {stale}: run `invoke protos` and commit the result"


def test_stale_stubs_notices_an_edited_and_a_missing_file(tmp_path: Path) -> None:
    committed, fresh = tmp_path / "committed", tmp_path / "fresh"
    committed.mkdir()
    fresh.mkdir()
    (committed / "a_pb2.py").write_text("same")
    (fresh / "a_pb2.py").write_text("same")
    (committed / "a_pb2_grpc.py").write_text("old")
    (fresh / "a_pb2_grpc.py").write_text("new")
    (fresh / "a_pb2.pyi").write_text("only fresh")
    assert protos.stale_stubs(committed, fresh) == ["a_pb2.pyi", "a_pb2_grpc.py"]


def test_grpc_module_imports_its_messages_from_the_package() -> None:
    text = (COMMITTED / "deviceplugin_pb2_grpc.py").read_text()
    assert "from power_device_plugin.api import deviceplugin_pb2" in text


@pytest.mark.parametrize(
    ("service", "method"),
    [
        ("Registration", "Register"),
        ("DevicePlugin", "GetDevicePluginOptions"),
        ("DevicePlugin", "ListAndWatch"),
        ("DevicePlugin", "GetPreferredAllocation"),
        ("DevicePlugin", "Allocate"),
        ("DevicePlugin", "PreStartContainer"),
    ],
)
def test_method_paths_are_in_package_v1beta1(service: str, method: str) -> None:
    text = (COMMITTED / "deviceplugin_pb2_grpc.py").read_text()
    assert f"'/v1beta1.{service}/{method}'" in text


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("DevicePluginOptions", "pre_start_required", 1),
        ("DevicePluginOptions", "get_preferred_allocation_available", 2),
        ("RegisterRequest", "version", 1),
        ("RegisterRequest", "endpoint", 2),
        ("RegisterRequest", "resource_name", 3),
        ("RegisterRequest", "options", 4),
        ("ListAndWatchResponse", "devices", 1),
        ("TopologyInfo", "nodes", 1),
        ("NUMANode", "ID", 1),
        ("Device", "ID", 1),
        ("Device", "health", 2),
        ("Device", "topology", 3),
        ("PreStartContainerRequest", "devices_ids", 1),
        ("PreferredAllocationRequest", "container_requests", 1),
        ("ContainerPreferredAllocationRequest", "available_deviceIDs", 1),
        ("ContainerPreferredAllocationRequest", "must_include_deviceIDs", 2),
        ("ContainerPreferredAllocationRequest", "allocation_size", 3),
        ("PreferredAllocationResponse", "container_responses", 1),
        ("ContainerPreferredAllocationResponse", "deviceIDs", 1),
        ("AllocateRequest", "container_requests", 1),
        ("ContainerAllocateRequest", "devices_ids", 1),
        ("AllocateResponse", "container_responses", 1),
        ("ContainerAllocateResponse", "envs", 1),
        ("ContainerAllocateResponse", "mounts", 2),
        ("ContainerAllocateResponse", "devices", 3),
        ("ContainerAllocateResponse", "annotations", 4),
        ("ContainerAllocateResponse", "cdi_devices", 5),
        ("Mount", "container_path", 1),
        ("Mount", "host_path", 2),
        ("Mount", "read_only", 3),
        ("DeviceSpec", "container_path", 1),
        ("DeviceSpec", "host_path", 2),
        ("DeviceSpec", "permissions", 3),
        ("CDIDevice", "name", 1),
    ],
)
def test_wire_field_numbers_match_the_kubelet_api(message: str, field: str, number: int) -> None:
    from power_device_plugin.api import pb

    descriptor = pb.DESCRIPTOR.message_types_by_name[message]
    assert descriptor.full_name == f"v1beta1.{message}"
    assert descriptor.fields_by_name[field].number == number
