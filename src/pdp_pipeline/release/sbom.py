"""A CycloneDX SBOM for one image, from the packages the image itself lists.

buildx's own SBOM (`--sbom=true`) runs a scanner image that cannot be pulled
on an offline build host, so the release asks the image instead: it runs the
image once with a small shell script (`INVENTORY_SCRIPT`) that prints the OS
release, the OS packages (`dpkg-query` or `rpm`) and the Python distributions
the image's interpreter sees. Parsing that output and writing the CycloneDX
document are pure functions; only `collect_inventory` touches the engine.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.bom_ref import BomRef
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

# The predicate type `cosign attest --type cyclonedx` records; verifiers ask for it.
CYCLONEDX_PREDICATE_TYPE = "https://cyclonedx.org/bom"

_SECTION = "### "

# Runs inside the image under its own platform, with `/bin/sh` as entrypoint.
# Each section is printed even when its tool is missing, so an empty section
# means "this image has no such packages", never "the script stopped early".
INVENTORY_SCRIPT = r"""
echo '### os-release'
cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null
echo '### dpkg'
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n'
fi
echo '### rpm'
if command -v rpm >/dev/null 2>&1; then
  rpm -qa --qf '%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\n'
fi
echo '### python'
python3 -c 'import importlib.metadata as m
for d in m.distributions():
    print(d.metadata["Name"], d.version, sep="\t")'
echo '### end'
""".strip()


class SbomError(Exception):
    """The image's package listing could not be read or turned into an SBOM."""


@dataclass(frozen=True)
class Package:
    """One installed package, as its own package manager names it."""

    ecosystem: str  # "deb", "rpm" or "pypi" (the purl type)
    name: str
    version: str
    arch: str | None = None


@dataclass(frozen=True)
class Inventory:
    """What one image says is installed in it."""

    distro_id: str  # os-release ID: debian, rhel, ...
    distro_version: str  # os-release VERSION_ID: 12, 9.4, ...
    distro_name: str  # os-release PRETTY_NAME, for people
    os_packages: tuple[Package, ...]
    python_packages: tuple[Package, ...]


@dataclass(frozen=True)
class ImageSubject:
    """The image an SBOM describes."""

    repository: str  # registry/name, e.g. 127.0.0.1:5000/power-dev-plugin
    digest: str  # sha256:… of the per-architecture image manifest
    platform: str  # linux/ppc64le


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith(_SECTION):
            current = sections.setdefault(line[len(_SECTION) :].strip(), [])
        elif current is not None and line.strip():
            current.append(line)
    return sections


def _os_release(lines: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    return values


def _rpm_version(raw: str) -> str:
    # rpm prints epoch 0 for packages without one; purls and people omit it.
    epoch, sep, rest = raw.partition(":")
    return rest if sep and epoch == "0" else raw


def _packages(lines: list[str], ecosystem: str, where: str) -> list[Package]:
    packages = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise SbomError(
                f"{where} line {number}: expected name<TAB>version, got {line!r}; "
                "the inventory script's output is not what this parser reads"
            )
        version = _rpm_version(fields[1]) if ecosystem == "rpm" else fields[1]
        arch = fields[2] if len(fields) > 2 and fields[2] else None
        packages.append(Package(ecosystem, fields[0], version, arch))
    return packages


def _pypi_name(name: str) -> str:
    # PEP 503 normalisation, which is also what purl's pypi type expects.
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_inventory(text: str) -> Inventory:
    """The packages listed by `INVENTORY_SCRIPT`'s output.

    Refuses output that lacks the closing marker (the script was cut short),
    an OS release, or OS packages: an SBOM missing a whole layer of the image
    would look complete and be wrong.
    """
    sections = _sections(text)
    if "end" not in sections:
        raise SbomError(
            "the inventory output has no '### end' marker: the script inside the image "
            "stopped early (is python3 missing?); no SBOM written"
        )
    release = _os_release(sections.get("os-release", []))
    if "ID" not in release:
        raise SbomError("the image has no /etc/os-release with an ID line; no SBOM written")
    os_packages = _packages(sections.get("dpkg", []), "deb", "dpkg-query output")
    os_packages += _packages(sections.get("rpm", []), "rpm", "rpm -qa output")
    if not os_packages:
        raise SbomError(
            f"the image ({release.get('PRETTY_NAME', release['ID'])}) lists no OS packages: "
            "neither dpkg-query nor rpm answered; no SBOM written"
        )
    python = {
        (_pypi_name(p.name), p.version): Package("pypi", _pypi_name(p.name), p.version)
        for p in _packages(sections.get("python", []), "pypi", "python distributions")
    }
    return Inventory(
        distro_id=release["ID"],
        distro_version=release.get("VERSION_ID", ""),
        distro_name=release.get("PRETTY_NAME", release["ID"]),
        os_packages=tuple(sorted(set(os_packages), key=lambda p: (p.name, p.version))),
        python_packages=tuple(sorted(python.values(), key=lambda p: (p.name, p.version))),
    )


def package_url(package: Package, inventory: Inventory) -> PackageURL:
    """The purl of one package: distro-qualified for OS packages, plain for PyPI."""
    if package.ecosystem == "pypi":
        return PackageURL(type="pypi", name=package.name, version=package.version)
    qualifiers = {"distro": f"{inventory.distro_id}-{inventory.distro_version}".rstrip("-")}
    if package.arch:
        qualifiers["arch"] = package.arch
    return PackageURL(
        type=package.ecosystem,
        namespace=inventory.distro_id,
        name=package.name,
        version=package.version,
        qualifiers=qualifiers,
    )


def image_url(subject: ImageSubject) -> PackageURL:
    """The purl of the image itself (`pkg:oci/NAME@DIGEST?…`)."""
    name = subject.repository.rsplit("/", 1)[-1]
    return PackageURL(
        type="oci",
        name=name,
        version=subject.digest,
        qualifiers={
            "arch": subject.platform.rsplit("/", 1)[-1],
            "repository_url": subject.repository,
        },
    )


def _component(purl: PackageURL, kind: ComponentType, name: str, version: str) -> Component:
    # The purl is the bom-ref, so the same image always yields the same document.
    return Component(
        name=name, version=version, type=kind, purl=purl, bom_ref=BomRef(purl.to_string())
    )


def cyclonedx_document(
    inventory: Inventory,
    subject: ImageSubject,
    created: datetime,
    properties: Mapping[str, str] | None = None,
) -> str:
    """The CycloneDX 1.6 JSON document for one image.

    The image is the metadata component; the OS, its packages and the Python
    distributions are its components, and the image depends on all of them.
    `properties` (e.g. a dry-run mark) are recorded on the image component.
    """
    image_purl = image_url(subject)
    image = _component(image_purl, ComponentType.CONTAINER, subject.repository, subject.digest)
    image.properties.update(
        Property(name=key, value=value) for key, value in sorted((properties or {}).items())
    )
    os_purl = PackageURL(
        type="generic", namespace=inventory.distro_id, name="os", version=inventory.distro_version
    )
    operating_system = Component(
        name=inventory.distro_id,
        version=inventory.distro_version,
        type=ComponentType.OPERATING_SYSTEM,
        description=inventory.distro_name,
        bom_ref=BomRef(os_purl.to_string()),
    )
    packages: list[Component] = []
    for package in (*inventory.os_packages, *inventory.python_packages):
        purl = package_url(package, inventory)
        packages.append(_component(purl, ComponentType.LIBRARY, package.name, package.version))

    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, image_purl.to_string()))
    bom.metadata.timestamp = created
    bom.metadata.component = image
    bom.components.update([operating_system, *packages])
    bom.register_dependency(image, [operating_system, *packages])
    return str(JsonV1Dot6(bom).output_as_string(indent=2))


def collect_inventory(image: str, platform: str) -> str:
    """Runs `INVENTORY_SCRIPT` once inside `image` (a ref by digest) under `platform`.

    The container gets no network and a read-only root: listing packages needs
    neither, and the image is run the way it will be deployed.
    """
    import docker  # the engine is only needed here; parsing stays importable without it
    from docker.errors import DockerException

    try:
        client = docker.from_env()
        output = client.containers.run(
            image,
            command=["-c", INVENTORY_SCRIPT],
            entrypoint=["/bin/sh"],
            platform=platform,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            remove=True,
            stdout=True,
            stderr=False,
        )
    except DockerException as error:
        raise SbomError(
            f"could not list the packages of {image} ({platform}): {error}; no SBOM written"
        ) from error
    return bytes(output).decode("utf-8", errors="replace")
