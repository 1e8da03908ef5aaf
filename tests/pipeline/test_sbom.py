from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timezone

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from pdp_pipeline.release import sbom

DEBIAN_LISTING = """\
### os-release
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
### dpkg
python3-grpcio\t1.51.1-3+b1\ts390x
libc6\t2.36-9+deb12u9\ts390x
python3-minimal\t3.11.2-1+b1\ts390x
### rpm
### python
grpcio\t1.51.1
protobuf\t4.21.12
prometheus_client\t0.16.0
Prometheus-Client\t0.16.0
power-device-plugin\t1.2.3
### end
"""

UBI_LISTING = """\
### os-release
ID="rhel"
VERSION_ID="9.4"
PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"
### dpkg
### rpm
bash\t0:5.1.8-9.el9\tppc64le
openssl-libs\t1:3.0.7-27.el9\tppc64le
### python
grpcio\t1.62.1
### end
"""

SUBJECT = sbom.ImageSubject(
    repository="127.0.0.1:5000/power-dev-plugin",
    digest="sha256:" + "ab" * 32,
    platform="linux/s390x",
)
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_debian_listing_gives_os_and_python_packages() -> None:
    inventory = sbom.parse_inventory(DEBIAN_LISTING)

    assert (inventory.distro_id, inventory.distro_version) == ("debian", "12")
    assert inventory.distro_name == "Debian GNU/Linux 12 (bookworm)"
    assert sbom.Package("deb", "python3-grpcio", "1.51.1-3+b1", "s390x") in inventory.os_packages
    assert [p.name for p in inventory.os_packages] == sorted(p.name for p in inventory.os_packages)
    names = [p.name for p in inventory.python_packages]
    # PEP 503 names, each distribution once even when it is listed twice.
    assert names == ["grpcio", "power-device-plugin", "prometheus-client", "protobuf"]


def test_rpm_listing_drops_epoch_zero_and_keeps_real_epochs() -> None:
    inventory = sbom.parse_inventory(UBI_LISTING)

    versions = {p.name: p.version for p in inventory.os_packages}
    assert versions == {"bash": "5.1.8-9.el9", "openssl-libs": "1:3.0.7-27.el9"}
    assert {p.ecosystem for p in inventory.os_packages} == {"rpm"}
    assert inventory.distro_id == "rhel"


def test_listing_cut_short_is_refused() -> None:
    truncated = DEBIAN_LISTING.replace("### end\n", "")

    with pytest.raises(sbom.SbomError, match="no '### end' marker"):
        sbom.parse_inventory(truncated)


def test_listing_without_os_packages_is_refused() -> None:
    empty = DEBIAN_LISTING.split("### dpkg")[0] + "### dpkg\n### rpm\n### python\n### end\n"

    with pytest.raises(sbom.SbomError, match="lists no OS packages"):
        sbom.parse_inventory(empty)


def test_malformed_package_line_names_its_section_and_line() -> None:
    broken = DEBIAN_LISTING.replace("libc6\t2.36-9+deb12u9\ts390x", "libc6 without tabs")

    with pytest.raises(sbom.SbomError, match=r"dpkg-query output line 2"):
        sbom.parse_inventory(broken)


def test_purls_carry_distro_and_architecture() -> None:
    inventory = sbom.parse_inventory(DEBIAN_LISTING)
    grpc_deb = next(p for p in inventory.os_packages if p.name == "python3-grpcio")
    grpc_py = next(p for p in inventory.python_packages if p.name == "grpcio")

    assert sbom.package_url(grpc_deb, inventory).to_string() == (
        "pkg:deb/debian/python3-grpcio@1.51.1-3%2Bb1?arch=s390x&distro=debian-12"
    )
    assert sbom.package_url(grpc_py, inventory).to_string() == "pkg:pypi/grpcio@1.51.1"


def test_document_is_valid_cyclonedx_describing_the_image() -> None:
    inventory = sbom.parse_inventory(DEBIAN_LISTING)

    text = sbom.cyclonedx_document(inventory, SUBJECT, CREATED, {"dry-run": "true"})

    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    image = document["metadata"]["component"]
    assert image["type"] == "container"
    assert image["version"] == SUBJECT.digest
    assert image["purl"].startswith("pkg:oci/power-dev-plugin@sha256")
    assert "ab" * 32 in image["purl"] and "arch=s390x" in image["purl"]
    assert {"name": "dry-run", "value": "true"} in image["properties"]
    assert document["metadata"]["timestamp"].startswith("2026-01-02T03:04:05")
    components = {c["name"]: c for c in document["components"]}
    expected = {p.name for p in (*inventory.os_packages, *inventory.python_packages)} | {"debian"}
    assert set(components) == expected
    assert components["debian"]["type"] == "operating-system"
    (image_dependencies,) = [d for d in document["dependencies"] if d["ref"] == image["bom-ref"]]
    assert len(image_dependencies["dependsOn"]) == len(document["components"])


def test_same_image_gives_the_same_document() -> None:
    inventory = sbom.parse_inventory(DEBIAN_LISTING)
    other = sbom.ImageSubject(SUBJECT.repository, "sha256:" + "cd" * 32, SUBJECT.platform)

    first = sbom.cyclonedx_document(inventory, SUBJECT, CREATED)
    again = sbom.cyclonedx_document(inventory, SUBJECT, CREATED)
    different = sbom.cyclonedx_document(inventory, other, CREATED)

    assert first == again
    assert json.loads(first)["serialNumber"] != json.loads(different)["serialNumber"]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian-family host")
def test_inventory_script_runs_in_a_real_shell_and_parses() -> None:
    # The same script the release runs inside each image, here on this Debian host.
    output = subprocess.run(
        ["/bin/sh", "-c", sbom.INVENTORY_SCRIPT], capture_output=True, text=True, check=True
    ).stdout

    inventory = sbom.parse_inventory(output)

    assert inventory.distro_id == "debian"
    assert any(p.name == "dpkg" for p in inventory.os_packages)
    assert any(p.name == "pytest" for p in inventory.python_packages) or any(
        p.name == "pip" for p in inventory.python_packages
    )
