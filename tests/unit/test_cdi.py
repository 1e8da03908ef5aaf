"""The CDI spec writer: names, spec content, the file on disk, and the grant as env/annotation."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from power_device_plugin import cdi
from power_device_plugin.cdi import CdiDevice, CdiNode, DeviceOwner

KIND = "power-dev-plugin.ibm.com/dev"
RESOURCE = "power-dev-plugin/dev"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "cdi-spec.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def node(name: str, minor: int, kind: str = "block", permissions: str = "rw") -> CdiNode:
    return CdiNode(f"/dev/{name}", f"/dev/{name}", kind, 253, minor, permissions)


ALL_MODE_UNITS = (
    CdiDevice("set-0", (node("dm-0", 0), node("dm-3", 3), node("crypto/nx-gzip", 7, "char"))),
    CdiDevice("set-1", (node("dm-0", 0), node("dm-3", 3), node("crypto/nx-gzip", 7, "char"))),
)
PER_DEVICE_UNITS = (
    CdiDevice("dm-3-0badf00d-r0", (node("dm-3", 3, permissions="r"),)),
    CdiDevice("dm-0-1c2d3e4f-r0", (node("dm-0", 0, permissions="r"),)),
    CdiDevice("dm-0-1c2d3e4f-r1", (node("dm-0", 0, permissions="r"),)),
)


# --- spec content -----------------------------------------------------------------


def test_all_mode_unit_lists_every_node_with_type_numbers_and_permissions() -> None:
    spec = cdi.build_spec(KIND, ALL_MODE_UNITS[:1], None)
    assert spec == {
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "devices": [
            {
                "name": "set-0",
                "containerEdits": {
                    "deviceNodes": [
                        {
                            "path": "/dev/dm-0",
                            "hostPath": "/dev/dm-0",
                            "type": "b",
                            "major": 253,
                            "minor": 0,
                            "permissions": "rw",
                        },
                        {
                            "path": "/dev/dm-3",
                            "hostPath": "/dev/dm-3",
                            "type": "b",
                            "major": 253,
                            "minor": 3,
                            "permissions": "rw",
                        },
                        {
                            "path": "/dev/crypto/nx-gzip",
                            "hostPath": "/dev/crypto/nx-gzip",
                            "type": "c",
                            "major": 253,
                            "minor": 7,
                            "permissions": "rw",
                        },
                    ]
                },
            }
        ],
    }


def test_per_device_units_are_one_cdi_device_each_in_the_order_given() -> None:
    spec = cdi.build_spec(KIND, PER_DEVICE_UNITS, None)
    assert [d["name"] for d in spec["devices"]] == [u.name for u in PER_DEVICE_UNITS]
    assert [
        [(n["hostPath"], n["minor"], n["permissions"]) for n in d["containerEdits"]["deviceNodes"]]
        for d in spec["devices"]
    ] == [[("/dev/dm-3", 3, "r")], [("/dev/dm-0", 0, "r")], [("/dev/dm-0", 0, "r")]]


def test_container_path_and_host_path_are_kept_apart() -> None:
    moved = CdiDevice("set-0", (CdiNode("/dev/data", "/dev/dm-9", "block", 253, 9, "rw"),))
    (entry,) = cdi.build_spec(KIND, [moved], None)["devices"][0]["containerEdits"]["deviceNodes"]
    assert (entry["path"], entry["hostPath"]) == ("/dev/data", "/dev/dm-9")


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        (None, {}),
        (DeviceOwner(), {}),
        (DeviceOwner(uid=1000), {"uid": 1000}),
        (DeviceOwner(gid=0), {"gid": 0}),
        (DeviceOwner(mode=0o660), {"fileMode": 0o660}),
        (DeviceOwner(1000, 2000, 0o600), {"uid": 1000, "gid": 2000, "fileMode": 0o600}),
    ],
)
def test_owner_members_appear_on_every_node_only_when_set(
    owner: DeviceOwner | None, expected: dict[str, int]
) -> None:
    spec = cdi.build_spec(KIND, ALL_MODE_UNITS, owner)
    for device in spec["devices"]:
        for entry in device["containerEdits"]["deviceNodes"]:
            assert {k: entry[k] for k in ("uid", "gid", "fileMode") if k in entry} == expected


def test_a_class_with_a_dot_asks_for_the_version_that_allows_it() -> None:
    assert cdi.build_spec("example.com/dev.v2", ALL_MODE_UNITS, None)["cdiVersion"] == "0.6.0"
    assert cdi.build_spec(KIND, ALL_MODE_UNITS, None)["cdiVersion"] == cdi.CDI_VERSION


@pytest.mark.parametrize(
    ("devices", "reason"),
    [
        ((), "at least one"),
        ((ALL_MODE_UNITS[0], ALL_MODE_UNITS[0]), "listed twice"),
        ((CdiDevice("set-0", ()),), "no device nodes"),
        ((CdiDevice("-set", (node("dm-0", 0),)),), "'-set'"),
        ((CdiDevice("set-0", (node("dm-0", 0, kind="fifo"),)),), "'fifo'"),
        ((CdiDevice("set-0", (node("dm-0", 0, permissions="rx"),)),), "'rx'"),
        ((CdiDevice("set-0", (node("dm-0", 0, permissions="rr"),)),), "'rr'"),
        ((CdiDevice("set-0", (node("dm-0", 0, permissions=""),)),), "permissions"),
        ((CdiDevice("set-0", (CdiNode("dev/x", "/dev/x", "char", 1, 1, "r"),)),), "'dev/x'"),
        ((CdiDevice("set-0", (CdiNode("/dev/x", "/dev/x", "char", -1, 1, "r"),)),), "major"),
    ],
)
def test_build_spec_refuses_what_would_make_an_invalid_spec(
    devices: tuple[CdiDevice, ...], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        cdi.build_spec(KIND, devices, None)


def test_render_is_stable_sorted_json_with_a_final_newline() -> None:
    spec = cdi.build_spec(KIND, PER_DEVICE_UNITS, DeviceOwner(uid=1000))
    rendered = cdi.render_spec(spec)
    shuffled = dict(reversed(list(copy.deepcopy(spec).items())))
    assert cdi.render_spec(shuffled) == rendered
    assert rendered.endswith(b"}\n")
    assert json.loads(rendered) == spec
    assert (
        rendered.index(b'"cdiVersion"') < rendered.index(b'"devices"') < rendered.index(b'"kind"')
    )


ESCAPED_NODE = CdiNode('/dev/q"\\uote', "/dev/h\u00e9", "char", 1, 2, "m")


@pytest.mark.parametrize(
    ("kind", "devices", "owner"),
    [
        (KIND, ALL_MODE_UNITS, None),
        (KIND, PER_DEVICE_UNITS, DeviceOwner(uid=1000)),
        (KIND, ALL_MODE_UNITS, DeviceOwner(1000, 2000, 0o660)),
        ("example.com/dev.v2", PER_DEVICE_UNITS[:1], DeviceOwner(gid=0)),
        # Names and paths that JSON must escape, and text beyond ASCII (kept as UTF-8).
        (
            KIND,
            (
                CdiDevice("a_b.c-1", (ESCAPED_NODE,)),
                CdiDevice("all", (ESCAPED_NODE, node("dm-0", 0))),
            ),
            None,
        ),
    ],
)
def test_spec_content_is_the_rendered_spec_byte_for_byte(
    kind: str, devices: tuple[CdiDevice, ...], owner: DeviceOwner | None
) -> None:
    assert cdi.spec_content(kind, devices, owner) == cdi.render_spec(
        cdi.build_spec(kind, devices, owner)
    )


def test_spec_content_of_a_thousand_device_all_mode_snapshot_is_the_rendered_spec() -> None:
    per_device = [CdiDevice(f"dm-{i}-0a0b0c0d", (node(f"dm-{i}", i),)) for i in range(1000)]
    devices = (*per_device, CdiDevice("all", tuple(d.nodes[0] for d in per_device)))
    owner = DeviceOwner(uid=1000)
    content = cdi.spec_content(KIND, devices, owner)
    assert content == cdi.render_spec(cdi.build_spec(KIND, devices, owner))
    assert len(json.loads(content)["devices"][-1]["containerEdits"]["deviceNodes"]) == 1000


@pytest.mark.parametrize(
    ("devices", "reason"),
    [
        ((), "no devices"),
        ((CdiDevice("set-0", ()),), "no device nodes"),
        ((PER_DEVICE_UNITS[0], PER_DEVICE_UNITS[0]), "listed twice"),
        ((CdiDevice("set-0", (CdiNode("/dev/x", "/dev/x", "char", -1, 1, "r"),)),), "major"),
    ],
)
def test_spec_content_refuses_what_build_spec_refuses(
    devices: tuple[CdiDevice, ...], reason: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        cdi.spec_content(KIND, devices, None)


# --- device-owner -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0660", "660", "0o660", " 0660 "])
def test_mode_is_read_as_octal_in_every_spelling(text: str) -> None:
    assert cdi.parse_device_owner({"mode": text}).mode == 0o660


def test_every_member_is_optional() -> None:
    assert cdi.parse_device_owner({}) == DeviceOwner()
    assert not cdi.parse_device_owner({}).is_set
    assert cdi.parse_device_owner({"uid": 1000, "gid": 1000, "mode": "0600"}) == DeviceOwner(
        1000, 1000, 0o600
    )
    assert cdi.parse_device_owner({"uid": 0, "gid": 2**32 - 2}) == DeviceOwner(0, 2**32 - 2)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"uid": True}, ("device-owner.uid", "boolean")),
        ({"uid": -1}, ("device-owner.uid", "-1")),
        ({"uid": 2**32 - 1}, ("device-owner.uid", "4294967295")),
        ({"uid": "1000"}, ("device-owner.uid", "a string")),
        ({"gid": 1000.0}, ("device-owner.gid", "a number")),
        ({"gid": None}, None),
        ({"mode": 660}, ("device-owner.mode", "a number")),
        ({"mode": "0968"}, ("device-owner.mode", "'0968'")),
        ({"mode": "rw-rw----"}, ("device-owner.mode", "'rw-rw----'")),
        ({"mode": ""}, ("device-owner.mode", "octal")),
        ({"mode": "04660"}, ("device-owner.mode", "0777")),
        ({"owner": 1000, "uid": 1}, ("device-owner", "'owner'", "uid, gid, mode")),
        ([1000], ("device-owner", "a list")),
        ("1000:1000", ("device-owner", "a string")),
    ],
)
def test_refusals_name_the_member_and_what_was_wrong(
    value: object, names: tuple[str, ...] | None
) -> None:
    if names is None:  # null is "not set", like a missing member
        assert cdi.parse_device_owner(value) == DeviceOwner()
        return
    with pytest.raises(ValueError) as caught:
        cdi.parse_device_owner(value)
    for name in names:
        assert name in str(caught.value)


def test_the_field_name_given_is_the_one_reported() -> None:
    with pytest.raises(ValueError, match=r"^config\.json: device-owner\.uid:"):
        cdi.parse_device_owner({"uid": -5}, field="config.json: device-owner")


# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "kind"),
    [
        ("power-dev-plugin/dev", "power-dev-plugin.ibm.com/dev"),
        ("example.com/gpu", "example.com/gpu"),
        ("acme/Block_Dev", "acme.ibm.com/Block_Dev"),
        ("storage.example.org/dev.v2", "storage.example.org/dev.v2"),
    ],
)
def test_kind_is_the_resource_with_a_vendor_domain(resource: str, kind: str) -> None:
    assert cdi.cdi_kind_for(resource) == kind


@pytest.mark.parametrize(
    "resource",
    [
        "dev",
        "/dev",
        "power-dev-plugin/",
        "Example.com/gpu",
        "example.com/3d",
        "example.com/gpu-",
        "example.com/a/b",
        "example..com/gpu",
        "9vendor.com/gpu",
        "example.com/" + "x" * 64,
        "a" * 250 + ".com/gpu",
    ],
)
def test_a_resource_that_cannot_make_a_valid_kind_is_refused(resource: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(resource))):
        cdi.cdi_kind_for(resource)


def test_spec_file_name_is_vendor_and_class() -> None:
    assert cdi.spec_file_name(KIND) == "power-dev-plugin.ibm.com-dev.json"
    assert cdi.spec_file_name("example.com/gpu") == "example.com-gpu.json"
    with pytest.raises(ValueError):
        cdi.spec_file_name("../etc/passwd")


def test_qualified_name_joins_kind_and_unit_id() -> None:
    assert cdi.qualified_name(KIND, "set-0") == "power-dev-plugin.ibm.com/dev=set-0"
    assert cdi.qualified_name(KIND, "dm-0-1c2d3e4f-r1") == f"{KIND}=dm-0-1c2d3e4f-r1"
    for bad in ("", "set 0", "set=0", "-set", "set/0"):
        with pytest.raises(ValueError):
            cdi.qualified_name(KIND, bad)


def test_cdi_modes_and_default() -> None:
    assert cdi.CDI_MODES == ("off", "both", "only")
    assert cdi.CDI_CHOICES == ("off", "both", "only", "auto")
    assert cdi.CDI_DEFAULT_MODE == "auto"


def test_auto_is_both_with_a_device_owner_and_off_without() -> None:
    assert cdi.resolve_mode("auto", cdi.DeviceOwner()) == "off"
    assert cdi.resolve_mode("auto", cdi.DeviceOwner(uid=1000)) == "both"
    assert cdi.resolve_mode("auto", cdi.DeviceOwner(mode=0o600)) == "both"
    for chosen in cdi.CDI_MODES:
        assert cdi.resolve_mode(chosen, cdi.DeviceOwner()) == chosen
        assert cdi.resolve_mode(chosen, cdi.DeviceOwner(uid=0)) == chosen


# --- the schema ---------------------------------------------------------------------


@pytest.mark.parametrize("units", [ALL_MODE_UNITS, PER_DEVICE_UNITS], ids=["all", "per-device"])
@pytest.mark.parametrize("owner", [None, DeviceOwner(1000, 1000, 0o660)], ids=["bare", "owned"])
def test_every_written_spec_validates_against_the_cdi_schema(
    tmp_path: Path,
    validator: jsonschema.protocols.Validator,
    units: tuple[CdiDevice, ...],
    owner: DeviceOwner | None,
) -> None:
    path = cdi.write_spec(tmp_path, KIND, cdi.build_spec(KIND, units, owner))
    validator.validate(json.loads(path.read_bytes()))


def _good_spec() -> dict[str, Any]:
    return cdi.build_spec(KIND, ALL_MODE_UNITS, DeviceOwner(1000, 1000, 0o660))


def _first_node(spec: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = spec["devices"][0]["containerEdits"]["deviceNodes"][0]
    return node


BROKEN_SPECS: dict[str, Callable[[dict[str, Any]], object]] = {
    "no cdiVersion": lambda s: s.pop("cdiVersion"),
    "version not semver": lambda s: s.update(cdiVersion="0.5"),
    "kind without class": lambda s: s.update(kind="power-dev-plugin.ibm.com"),
    "kind with two slashes": lambda s: s.update(kind="vendor.com/foo/bar"),
    "kind with upper-case vendor": lambda s: s.update(kind="Vendor.com/foo"),
    "no devices": lambda s: s.update(devices=[]),
    "device name with a space": lambda s: s["devices"][0].update(name="set 0"),
    "device without edits": lambda s: s["devices"][0].update(containerEdits={}),
    "node without path": lambda s: _first_node(s).pop("path"),
    "relative host path": lambda s: _first_node(s).update(hostPath="dev/dm-0"),
    "unknown node type": lambda s: _first_node(s).update(type="block"),
    "negative minor": lambda s: _first_node(s).update(minor=-1),
    "permission letter x": lambda s: _first_node(s).update(permissions="rx"),
    "repeated permission": lambda s: _first_node(s).update(permissions="rwr"),
    "uid over uint32": lambda s: _first_node(s).update(uid=2**32),
    "gid as string": lambda s: _first_node(s).update(gid="1000"),
    "fileMode as octal string": lambda s: _first_node(s).update(fileMode="0660"),
    "misspelt field": lambda s: _first_node(s).update(filemode=0o660),
    "env without =": lambda s: s["devices"][0]["containerEdits"].update(env=["PDP_DEVICES"]),
    "annotation not a string": lambda s: s.update(annotations={"a": 1}),
}


@pytest.mark.parametrize("breakage", list(BROKEN_SPECS), ids=list(BROKEN_SPECS))
def test_the_schema_rejects_a_broken_spec(
    validator: jsonschema.protocols.Validator, breakage: str
) -> None:
    spec = _good_spec()
    validator.validate(spec)
    BROKEN_SPECS[breakage](spec)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(spec)


def test_the_schema_accepts_the_optional_fields_of_other_writers(
    validator: jsonschema.protocols.Validator,
) -> None:
    spec = _good_spec()
    spec["annotations"] = {"vendor.com/info": "x"}
    spec["containerEdits"] = {"env": ["A=1"], "mounts": [{"hostPath": "/a", "containerPath": "/b"}]}
    spec["devices"][0]["containerEdits"]["env"] = ["PDP_DEVICES=/dev/dm-0"]
    validator.validate(spec)


# --- the file on disk --------------------------------------------------------------


@pytest.fixture
def spec() -> dict[str, Any]:
    return cdi.build_spec(KIND, ALL_MODE_UNITS, DeviceOwner(uid=1000))


@pytest.fixture
def umask_077() -> Iterator[None]:
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_write_creates_the_directory_and_a_0644_file_named_for_the_kind(
    tmp_path: Path, spec: dict[str, Any], umask_077: None
) -> None:
    directory = tmp_path / "var" / "run" / "cdi"
    path = cdi.write_spec(directory, KIND, spec)
    assert path == directory / "power-dev-plugin.ibm.com-dev.json"
    assert path.read_bytes() == cdi.render_spec(spec)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(directory) == [path.name]


def test_temporary_is_hidden_from_cdi_registries(
    tmp_path: Path, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def recording_replace(src: Any, dst: Any) -> None:
        seen.append(os.path.basename(src))
        assert os.path.dirname(src) == os.path.dirname(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    cdi.write_spec(tmp_path, KIND, spec)
    (temp,) = seen
    assert temp.startswith(".")
    assert not temp.endswith((".json", ".yaml"))


def test_the_file_and_the_directory_are_synced_before_and_after_the_rename(
    tmp_path: Path, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def recording_replace(src: Any, dst: Any) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    cdi.write_spec(tmp_path, KIND, spec)
    assert events == ["file", "replace", "dir"]


def test_a_failed_replace_leaves_the_old_spec_whole_and_no_temporary(
    tmp_path: Path, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = cdi.write_spec(tmp_path, KIND, cdi.build_spec(KIND, PER_DEVICE_UNITS, None))
    old = path.read_bytes()

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError) as caught:
        cdi.write_spec(tmp_path, KIND, spec)
    assert str(path) in str(caught.value)
    assert caught.value.errno == 28
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == [path.name]


def test_unchanged_content_is_not_rewritten(
    tmp_path: Path, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = cdi.write_spec(tmp_path, KIND, spec)
    before = path.stat()

    def no_replace(src: Any, dst: Any) -> None:
        raise AssertionError("an unchanged spec was written again")

    monkeypatch.setattr(os, "replace", no_replace)
    assert cdi.write_spec(tmp_path, KIND, copy.deepcopy(spec)) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_changed_content_replaces_the_file(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = cdi.write_spec(tmp_path, KIND, spec)
    inode = path.stat().st_ino
    smaller = cdi.build_spec(KIND, ALL_MODE_UNITS[:1], None)
    cdi.write_spec(tmp_path, KIND, smaller)
    assert json.loads(path.read_bytes()) == smaller
    assert path.stat().st_ino != inode  # a new file, renamed over the old one
    assert os.listdir(tmp_path) == [path.name]


def test_write_error_names_the_path(tmp_path: Path, spec: dict[str, Any]) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(OSError) as caught:
        cdi.write_spec(not_a_directory, KIND, spec)
    assert str(not_a_directory / cdi.spec_file_name(KIND)) in str(caught.value)


def _other_vendors(directory: Path) -> dict[str, bytes]:
    files = {
        "nvidia.com-gpu.json": b'{"kind": "nvidia.com/gpu"}\n',
        "power-dev-plugin.ibm.com-dev.yaml": b"kind: someone/else\n",
        "example.com-dev.json": b"{}\n",
        ".nvidia.com-gpu.json.tmp-1234": b"half",
        ".power-dev-plugin.ibm.com-dev2.json.tmp-1234": b"half",
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return files


def _contents(directory: Path, names: dict[str, bytes]) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in names}


def test_write_and_remove_never_touch_other_files(tmp_path: Path, spec: dict[str, Any]) -> None:
    others = _other_vendors(tmp_path)
    path = cdi.write_spec(tmp_path, KIND, spec)
    cdi.write_spec(tmp_path, KIND, cdi.build_spec(KIND, PER_DEVICE_UNITS, None))
    assert _contents(tmp_path, others) == others
    assert cdi.remove_spec(tmp_path, KIND) is True
    assert not path.exists()
    assert _contents(tmp_path, others) == others
    assert sorted(os.listdir(tmp_path)) == sorted(others)


def test_remove_cleans_our_stale_temporaries_only(tmp_path: Path, spec: dict[str, Any]) -> None:
    others = _other_vendors(tmp_path)
    ours = [
        tmp_path / ".power-dev-plugin.ibm.com-dev.json.tmp-0a1b2c3d",
        tmp_path / (".power-dev-plugin.ibm.com-dev.json.tmp-ffff"),
    ]
    for temp in ours:
        temp.write_bytes(b"half-written")
    assert cdi.remove_spec(tmp_path, KIND) is False  # no spec, but temporaries went
    assert not any(temp.exists() for temp in ours)
    assert _contents(tmp_path, others) == others


def test_remove_of_a_missing_spec_or_directory_is_false(tmp_path: Path) -> None:
    assert cdi.remove_spec(tmp_path, KIND) is False
    assert cdi.remove_spec(tmp_path / "absent", KIND) is False


def test_keep_spec_writes_units_and_removes_the_spec_when_none_are_left(tmp_path: Path) -> None:
    path = cdi.keep_spec(tmp_path, KIND, PER_DEVICE_UNITS, None)
    assert path is not None and path.exists()
    assert cdi.keep_spec(tmp_path, KIND, (), None) is None
    assert os.listdir(tmp_path) == []


# --- the grant, readable from inside ---------------------------------------------


def test_env_lists_the_container_paths_comma_separated() -> None:
    assert cdi.grant_env(["/dev/dm-0", "/dev/dm-3"]) == {"PDP_DEVICES": "/dev/dm-0,/dev/dm-3"}
    assert cdi.grant_env(["/dev/dm-3", "/dev/dm-0", "/dev/dm-3"]) == {
        "PDP_DEVICES": "/dev/dm-3,/dev/dm-0"
    }


def test_annotation_carries_the_same_list_under_a_key_from_the_kind() -> None:
    assert cdi.grant_annotations(["/dev/dm-0", "/dev/dm-3"], RESOURCE) == {
        "power-dev-plugin.ibm.com/dev-devices": "/dev/dm-0,/dev/dm-3"
    }
    assert cdi.grant_annotations(["/dev/sda"], "example.com/disk") == {
        "example.com/disk-devices": "/dev/sda"
    }


_K8S_ANNOTATION_KEY = re.compile(
    r"(?P<prefix>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
    r"(?P<name>[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)"
)


@pytest.mark.parametrize(
    "resource",
    [RESOURCE, "example.com/gpu", "acme/" + "d" * 63, "acme/" + "a" * 54 + "_" + "b" * 8],
)
def test_annotation_key_is_a_valid_kubernetes_annotation_key(resource: str) -> None:
    (key,) = cdi.grant_annotations(["/dev/x"], resource)
    match = _K8S_ANNOTATION_KEY.fullmatch(key)
    assert match is not None, key
    assert len(match["prefix"]) <= 253
    assert len(match["name"]) <= 63


def test_annotation_for_an_invalid_resource_is_refused() -> None:
    with pytest.raises(ValueError):
        cdi.grant_annotations(["/dev/x"], "no-slash")
