"""The sample workload: asks for the plugin's resource from a container with
no privileges, and its script shows the granted devices (readable only with
the device's group, as the README explains)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from pdp_pipeline import manifests

Rendered = Callable[[str], list[dict[str, Any]]]

VARIANTS = ("examples-openshift", "examples-kubernetes")
DISK_GID = 6
RESOURCE = "power-dev-plugin/dev"


def _workloads(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, pod spec) of the Pod and the Deployment."""
    pod = manifests.the_object(objects, "Pod")
    deployment = manifests.the_object(objects, "Deployment")
    return [("Pod", pod["spec"]), ("Deployment", deployment["spec"]["template"]["spec"])]


@pytest.fixture(params=VARIANTS)
def workloads(request: pytest.FixtureRequest, rendered: Rendered) -> list[Any]:
    return _workloads(rendered(request.param))


def test_there_is_a_pod_and_a_deployment(workloads: list[Any]) -> None:
    assert [kind for kind, _ in workloads] == ["Pod", "Deployment"]


def test_each_workload_requests_one_unit_of_the_plugin_resource(workloads: list[Any]) -> None:
    for kind, spec in workloads:
        (container,) = spec["containers"]
        assert container["resources"]["requests"][RESOURCE] == 1, kind
        assert container["resources"]["limits"][RESOURCE] == 1, kind


def test_each_workload_runs_without_privileges(workloads: list[Any]) -> None:
    for kind, spec in workloads:
        (container,) = spec["containers"]
        context = container["securityContext"]
        assert context["privileged"] is False, kind
        assert context["allowPrivilegeEscalation"] is False, kind
        assert context["readOnlyRootFilesystem"] is True, kind
        assert context["capabilities"] == {"drop": ["ALL"]}, kind
        assert context["runAsNonRoot"] is True, kind
        assert spec["securityContext"]["runAsNonRoot"] is True, kind
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        assert spec.get("automountServiceAccountToken") is False, kind
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), (kind, field)
        assert all("hostPath" not in volume for volume in spec.get("volumes", [])), kind


def test_each_workload_has_the_disk_group_to_read_a_granted_block_device(
    workloads: list[Any],
) -> None:
    for kind, spec in workloads:
        assert DISK_GID in spec["securityContext"]["supplementalGroups"], kind


def test_kubernetes_examples_pin_a_non_root_uid(rendered: Rendered) -> None:
    # OpenShift assigns a uid from the project's range; Kubernetes needs one set.
    for kind, spec in _workloads(rendered("examples-kubernetes")):
        assert spec["securityContext"]["runAsUser"] > 0, kind
    for kind, spec in _workloads(rendered("examples-openshift")):
        assert "runAsUser" not in spec["securityContext"], kind


@pytest.mark.parametrize("variant", VARIANTS)
def test_examples_namespace_enforces_the_restricted_pod_security_level(
    rendered: Rendered, variant: str
) -> None:
    namespace = rendered(variant)[0]
    assert namespace["kind"] in ("Project", "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_script_the_pods_run_is_the_one_in_the_repository(
    rendered: Rendered, variant: str, root: Path
) -> None:
    config_map = manifests.the_object(rendered(variant), "ConfigMap")
    script = (root / "examples" / "base" / "show-devices.sh").read_text()
    assert config_map["data"]["show-devices.sh"] == script
    for _, spec in _workloads(rendered(variant)):
        (container,) = spec["containers"]
        assert container["command"][:2] == ["/bin/sh", "/opt/example/show-devices.sh"]


# --- the script, run for real against a loop device ------------------------------


@pytest.fixture
def granted_block_device() -> Iterator[Path]:
    """A dev directory holding one root:disk 0660 block node, as a runtime grants it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a loop device and a device node")
    if not shutil.which("losetup"):
        pytest.skip("needs losetup (util-linux)")
    # World-traversable, so the script can run as an unprivileged uid.
    base = Path(tempfile.mkdtemp(prefix="pdp-example-"))
    base.chmod(0o755)
    backing = base / "backing.img"
    backing.write_bytes(b"power-dev-plugin example\n" * 2000)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if device.returncode != 0:
        shutil.rmtree(base)
        pytest.skip(f"no loop device available: {device.stderr.strip()}")
    loop = device.stdout.strip()
    try:
        dev = base / "dev"
        dev.mkdir(mode=0o755)
        node = dev / "dm-9"
        os.mknod(node, stat.S_IFBLK | 0o660, os.stat(loop).st_rdev)
        os.chown(node, 0, DISK_GID)
        node.chmod(0o660)
        os.mknod(dev / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        shutil.copy(Path(__file__).resolve().parents[2] / "examples/base/show-devices.sh", base)
        (base / "show-devices.sh").chmod(0o755)
        yield dev
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False)
        shutil.rmtree(base)


def _run_script_as_uid_1000(dev: Path, groups: str) -> str:
    script = dev.parent / "show-devices.sh"
    done = subprocess.run(
        ["setpriv", "--reuid=1000", "--regid=1000", f"--groups={groups}", "--inh-caps=-all",
         "/bin/sh", str(script)],
        capture_output=True, text=True, env={"DEV_DIR": str(dev), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.root
def test_script_reads_a_granted_block_device_with_the_disk_group(
    granted_block_device: Path,
) -> None:
    output = _run_script_as_uid_1000(granted_block_device, str(DISK_GID))
    assert f"granted: {granted_block_device}/dm-9 (block device): read 4096 bytes" in output
    assert "granted devices: 1" in output  # the runtime's /dev/null is not counted


@pytest.mark.root
def test_script_shows_the_read_failing_without_the_disk_group(
    granted_block_device: Path,
) -> None:
    output = _run_script_as_uid_1000(granted_block_device, "1000")
    assert f"granted: {granted_block_device}/dm-9 (block device): read FAILED" in output
