"""Each architecture's plugin image, run from the registry under its own platform."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from pdp_pipeline.images import record as build_record
from pdp_pipeline.images import tags

pytestmark = pytest.mark.engine

COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "clang++")
PACKAGE_CACHES = (
    "/var/lib/apt/lists",
    "/var/cache/apt",
    "/var/cache/dnf",
    "/var/cache/yum",
    "/root/.cache/pip",
    "/root/.cache",
)
# A script run by the image's own Python: every import the plugin needs, and the stubs.
IMPORT_PROBE = """
import importlib, json, pkgutil
import grpc, google.protobuf
import power_device_plugin.api as api
stubs = sorted(m.name for m in pkgutil.iter_modules(api.__path__))
for name in stubs:
    importlib.import_module("power_device_plugin.api." + name)
print(json.dumps({"grpc": grpc.__version__, "protobuf": google.protobuf.__version__,
                  "stubs": stubs}))
"""

# Run by the image's Python: each module under site-packages, and whether its bytecode is
# there for this interpreter (magic number), hash-based and unchecked (flags 0b01), and
# made from this very source (its hash).
BYTECODE_PROBE = """
import importlib.util, json, pathlib
site = pathlib.Path("/opt/power-device-plugin/site-packages")
report = {}
for source in sorted(site.rglob("*.py")):
    cached = pathlib.Path(importlib.util.cache_from_source(str(source)))
    if not cached.exists():
        report[str(source)] = "no bytecode"
        continue
    header = cached.read_bytes()[:16]
    if header[:4] != importlib.util.MAGIC_NUMBER:
        report[str(source)] = "bytecode of another Python"
    elif int.from_bytes(header[4:8], "little") != 0b01:
        report[str(source)] = "not unchecked hash-based bytecode"
    elif header[8:16] != importlib.util.source_hash(source.read_bytes()):
        report[str(source)] = "bytecode of another source"
    else:
        report[str(source)] = "ok"
print(json.dumps(report))
"""


def _ok(image_host: Any, command: str) -> str:
    result = image_host.run(command)
    assert result.rc == 0, f"`{command}` exited {result.rc}: {result.stderr or result.stdout}"
    return str(result.stdout)


def test_kernel_reports_the_images_machine(
    image_host: Any, result: build_record.ArchResult
) -> None:
    assert _ok(image_host, "uname -m").strip() == result.platform.machine


def test_image_config_declares_its_os_and_architecture(
    image_attrs: dict[str, Any], result: build_record.ArchResult
) -> None:
    assert (image_attrs["Os"], image_attrs["Architecture"]) == ("linux", result.platform.arch)


def test_python_imports_grpc_protobuf_metrics_and_the_stubs(image_host: Any) -> None:
    # `python3` as the launcher finds it (PATH), the interpreter the plugin runs on.
    found = json.loads(_ok(image_host, "python3 -c " + shlex.quote(IMPORT_PROBE)))
    assert any(name.endswith("_pb2_grpc") for name in found["stubs"]), found
    assert any(name.endswith("_pb2") for name in found["stubs"]), found


def test_pure_python_dependencies_from_the_context_import(image_host: Any) -> None:
    # inotify_simple has no Debian package and no RUN step installs it: it comes from the
    # build context (containers/context-requirements.txt), unpacked beside the plugin.
    # (It is one module, inotify_simple.py, not a package: its file sits in site-packages.)
    probe = "import inotify_simple; print(inotify_simple.__file__)"
    where = _ok(image_host, "python3 -c " + shlex.quote(probe)).strip()
    assert where.startswith("/opt/power-device-plugin/site-packages/inotify_simple"), where


def test_every_module_ships_bytecode_for_the_images_python(image_host: Any) -> None:
    # Without it each start compiles every module again (the root file system is
    # read-only): time and RSS on every node, see docs/plugin.md (Performance).
    report = json.loads(_ok(image_host, "python3 -c " + shlex.quote(BYTECODE_PROBE)))
    assert any(path.endswith("power_device_plugin/cli.py") for path in report), report
    assert {path: why for path, why in report.items() if why != "ok"} == {}


def test_version_is_the_builds_version(image_host: Any, record: build_record.BuildRecord) -> None:
    printed = _ok(image_host, "power-device-plugin --version").split()
    assert printed and printed[-1] == record.version


def _scan(image_host: Any, fake_host: Any) -> dict[str, Any]:
    scanned: dict[str, Any] = json.loads(_ok(image_host, fake_host.scan_command))
    return scanned


def _verdicts(scanned: dict[str, Any]) -> dict[str, str]:
    return {c["host_path"]: c["verdict"] for c in scanned["candidates"]}


def test_scan_finds_the_fake_device_nodes(image_host: Any, fake_host: Any) -> None:
    scanned = _scan(image_host, fake_host)
    verdicts = _verdicts(scanned)
    assert verdicts.get(fake_host.char_node) == "advertised", scanned
    assert verdicts.get(fake_host.block_node) == "advertised", scanned
    assert scanned["devices"], scanned


def test_scan_refuses_the_symlink_that_escapes_dev_root(image_host: Any, fake_host: Any) -> None:
    scanned = _scan(image_host, fake_host)
    refused = [c for c in scanned["candidates"] if c["host_path"] == fake_host.escaping_link]
    assert [c["verdict"] for c in refused] == ["refused"], scanned
    # Its target is a real device node: only leaving dev-root can be the reason.
    assert "escape" in refused[0]["reason"], refused
    advertised = [c["host_path"] for c in scanned["candidates"] if c["verdict"] == "advertised"]
    assert fake_host.escaping_link not in advertised
    assert not any("outside" in path for path in advertised)


def test_root_file_system_is_read_only(image_host: Any, container: Any) -> None:
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    for path in ("/pdp-write-probe", "/opt/power-device-plugin/pdp-write-probe", "/tmp/probe"):
        assert image_host.run(f"touch {path}").rc != 0, f"{path} was writable"


def test_every_capability_is_dropped(image_host: Any) -> None:
    status = image_host.file("/proc/1/status").content_string
    effective = [line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")]
    assert effective and int(effective[0], 16) == 0, status


def test_no_compiler_is_shipped(image_host: Any) -> None:
    present = [name for name in COMPILERS if image_host.run(f"command -v {name}").rc == 0]
    assert present == []
    leftovers = image_host.run(
        "find / -xdev \\( -name 'cc1' -o -name 'cc1plus' -o -name '*-linux-gnu-gcc*' \\)"
        " -print 2>/dev/null"
    ).stdout.split()
    assert leftovers == []


def test_no_package_manager_or_pip_cache_is_left(image_host: Any) -> None:
    listing = image_host.run(
        "find " + " ".join(PACKAGE_CACHES) + " -type f ! -name lock -print 2>/dev/null"
    ).stdout.split()
    assert listing == []


def test_oci_labels_name_the_build(
    image_attrs: dict[str, Any], record: build_record.BuildRecord, result: build_record.ArchResult
) -> None:
    labels = image_attrs["Config"]["Labels"] or {}
    missing = [key for key in tags.REQUIRED_LABELS if not labels.get(key)]
    assert missing == []
    assert labels[tags.LABEL_TITLE] == tags.TITLE
    assert labels[tags.LABEL_VERSION] == record.version
    assert labels[tags.LABEL_REVISION] == record.revision
    assert labels[tags.LABEL_SOURCE] == tags.SOURCE_URL
    assert labels[tags.LABEL_BASE_NAME] == result.runtime.base_name
    assert labels[tags.LABEL_BASE] == record.base
    assert labels[tags.LABEL_BASE_FALLBACK] == ("true" if record.fell_back else "false")
