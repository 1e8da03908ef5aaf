"""A node, as far as the plugin can tell: a kubelet stand-in, a ConfigMap, a container runtime.

`Node` puts together, for one test:
- a temp device plugin directory served by the kubelet stand-in
  (`tests/integration/kubelet_stub.py`),
- a directory that stands in for the ConfigMap volume, laid out and updated the
  way the kubelet's atomic writer does (`..data` symlink swap),
- the plugin container, run by the Docker engine with exactly the settings of
  the rendered DaemonSet (`pdp_pipeline.e2e.plugin_run.plugin_run`),
- workload containers started from `Allocate` answers
  (`pdp_pipeline.e2e.workload.workload_run`),
and removes every container it started, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from tests.e2e.loopdev import LoopDevice
from tests.integration.kubelet_stub import Devices, KubeletStub

from pdp_pipeline.e2e import container as e2e_container
from pdp_pipeline.e2e import manifest as e2e_manifest
from pdp_pipeline.e2e import plugin_run as e2e_plugin_run
from pdp_pipeline.e2e import workload as e2e_workload
from power_device_plugin.api import pb

SUITE_LABEL = "io.power-dev-plugin.e2e"
WORKLOAD_USER = "1000:1000"
# Records a measured figure in seconds (the `figure` fixture of conftest.py).
Figure = Callable[[str, float], None]
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

# What the workload runs: for every path given, whether it exists, what its
# first bytes are (or the errno of the failed read), and, in `write` mode,
# the errno of an attempt to open it for writing. Plus who it ran as, so a
# test can tell a permission failure from a missing grant.
WORKLOAD_SCRIPT = r"""
import errno, json, os, sys
mode, length, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def err(e):
    return errno.errorcode.get(e.errno, str(e.errno))
report = {"uid": os.getuid(), "groups": sorted(os.getgroups()),
          "dev": sorted(os.listdir("/dev")), "devices": {}}
for path in paths:
    entry = {"exists": os.path.exists(path)}
    if entry["exists"]:
        st = os.stat(path)
        entry["owner"] = [st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)]
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            entry["read"] = os.read(fd, length).hex()
        finally:
            os.close(fd)
    except OSError as e:
        entry["read_error"] = err(e)
    if mode == "write":
        try:
            fd = os.open(path, os.O_WRONLY)
            os.close(fd)
            entry["write_error"] = None
        except OSError as e:
            entry["write_error"] = err(e)
    report["devices"][path] = entry
with open("/proc/self/status") as status:
    report["cap_eff"] = [l.split()[1] for l in status if l.startswith("CapEff")][0]
print(json.dumps(report))
"""


class ConfigMapDir:
    """A ConfigMap volume's directory, written the way the kubelet updates it.

    Keys live in a timestamped directory; `..data` points at it; each key is a
    symlink `KEY -> ..data/KEY`. An update writes a new directory and swaps
    `..data` with one rename, so a reader never sees half an update.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, files: Mapping[str, str]) -> None:
        stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{uuid.uuid4().hex[:8]}"
        target = self.root / stamp
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        temporary = self.root / "..data_tmp"
        temporary.unlink(missing_ok=True)
        os.symlink(stamp, temporary)
        os.replace(temporary, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)
        if old is not None and old != stamp:
            shutil.rmtree(self.root / old, ignore_errors=True)


def grant_view(response: pb.ContainerAllocateResponse) -> e2e_workload.ContainerGrantView:
    """One container's Allocate answer as plain data."""
    return e2e_workload.ContainerGrantView(
        devices=tuple(
            e2e_workload.GrantedDevice(d.container_path, d.host_path, d.permissions)
            for d in response.devices
        ),
        envs=dict(response.envs),
        mounts=tuple(
            e2e_container.BindMount(m.host_path, m.container_path, m.read_only)
            for m in response.mounts
        ),
        annotations=dict(response.annotations),
        cdi_devices=tuple(d.name for d in response.cdi_devices),
    )


@dataclass(frozen=True)
class WorkloadReport:
    """What the workload container saw."""

    exit_code: int
    uid: int
    groups: tuple[int, ...]
    dev_entries: tuple[str, ...]
    devices: Mapping[str, Mapping[str, Any]]
    cap_eff: str
    output: str

    def read_bytes(self, path: str) -> bytes | None:
        entry = self.devices[path]
        return bytes.fromhex(entry["read"]) if "read" in entry else None

    def read_marker(self, device: LoopDevice) -> bytes | None:
        """The first bytes read from the device, as many as its marker has."""
        data = self.read_bytes(device.path)
        return None if data is None else data[: len(device.marker)]


class Node:
    """One test's node. Use as a context manager; `close()` removes what it started."""

    def __init__(
        self,
        client: docker.DockerClient,
        workdir: Path,
        daemonset: Mapping[str, Any],
        image: str,
        platform: str | None = None,
    ) -> None:
        self.client = client
        self.workdir = workdir
        self.daemonset = daemonset
        self.image = image
        self.platform = platform
        self.run_id = uuid.uuid4().hex[:10]
        # Short on purpose: a unix socket path may hold at most 107 bytes, and
        # pytest's tmp_path alone can be longer than that.
        self.plugin_dir = Path(tempfile.mkdtemp(prefix="pdp-e2e-"))
        self.config = ConfigMapDir(workdir / "configmap")
        self.plugin_run = e2e_plugin_run.plugin_run(
            daemonset,
            image,
            host_paths={e2e_plugin_run.PLUGIN_SETTINGS["--plugin-dir"][1]: str(self.plugin_dir)},
            config_maps={config_map_name(daemonset): str(self.config.root)},
            field_values={"spec.nodeName": os.uname().nodename},
            labels={SUITE_LABEL: self.run_id},
        )
        self._check_stand_ins()
        self.kubelet = KubeletStub(self.plugin_dir)
        self.plugin: Any = None
        self._containers: list[Any] = []

    def _check_stand_ins(self) -> None:
        """The DaemonSet's plugin dir and config must be the stand-ins, or nothing is tested."""
        plugin_dir = e2e_plugin_run.plugin_setting(self.plugin_run, "--plugin-dir")
        if self.plugin_run.host_path_of(plugin_dir) != str(self.plugin_dir):
            raise e2e_manifest.ManifestShapeError(
                f"--plugin-dir {plugin_dir} is not on the device-plugins hostPath volume "
                f"(binds: {[b.docker_spec() for b in self.plugin_run.binds]})"
            )
        config = e2e_plugin_run.plugin_setting(self.plugin_run, "--config")
        host_config = self.plugin_run.host_path_of(config)
        if host_config is None or Path(host_config).parent != self.config.root:
            raise e2e_manifest.ManifestShapeError(
                f"--config {config} is not a key of the ConfigMap volume "
                f"(binds: {[b.docker_spec() for b in self.plugin_run.binds]})"
            )

    # -- what the test sets up ----------------------------------------------

    @property
    def config_key(self) -> str:
        return Path(e2e_plugin_run.plugin_setting(self.plugin_run, "--config")).name

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config.write({self.config_key: json.dumps(config, indent=2)})

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / e2e_plugin_run.plugin_setting(self.plugin_run, "--socket-name")

    def start(self) -> None:
        """Start the kubelet stand-in, then the plugin container as the DaemonSet runs it."""
        self.kubelet.start()
        kwargs = self.plugin_run.docker_kwargs()
        self.plugin = self._start_container(name=f"pdp-e2e-plugin-{self.run_id}", **kwargs)

    def _start_container(self, **kwargs: Any) -> Any:
        if self.platform is not None:
            kwargs["platform"] = self.platform
        container = self.client.containers.run(detach=True, **kwargs)
        self._containers.append(container)
        return container

    def plugin_logs(self) -> str:
        if self.plugin is None:
            return "(plugin container not started)"
        try:
            return str(self.plugin.logs().decode(errors="replace"))
        except docker.errors.APIError as error:
            return f"(logs unavailable: {error})"

    def stop_plugin(self) -> tuple[int, float]:
        """`docker stop` with the pod's grace period; (exit code, seconds it took)."""
        started = time.monotonic()
        self.plugin.stop(timeout=self.plugin_run.stop_grace_seconds)
        took = time.monotonic() - started
        status = self.plugin.wait(timeout=30)
        return int(status["StatusCode"]), took

    def plugin_process_status(self) -> dict[str, str]:
        """`/proc/PID/status` of the plugin process, read from the host."""
        self.plugin.reload()
        pid = int(self.plugin.attrs["State"]["Pid"])
        status: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            status[key] = value.strip()
        return status

    def plugin_http_status(self, path: str, port: int) -> int:
        """GET a plugin endpoint the way the kubelet probes it: from outside the container,
        in the pod's network namespace (entered with nsenter; we are root).

        Not `docker exec`: a second process inside the container counts against
        its memory limit, and under QEMU that alone went over 128 Mi.
        """
        self.plugin.reload()
        pid = int(self.plugin.attrs["State"]["Pid"])
        probe = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            "    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code)\n"
        )
        url = f"http://127.0.0.1:{port}{path}"
        result = subprocess.run(
            ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", probe, url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        text = result.stdout.strip()
        if result.returncode != 0 or not text.isdigit():
            raise AssertionError(
                f"probe {url} in the plugin's network namespace failed "
                f"(exit {result.returncode}): {text} {result.stderr.strip()}"
            )
        return int(text)

    # -- the kubelet side ---------------------------------------------------

    def wait_for_list(self, matches: Callable[[Devices], bool], timeout: float = 10.0) -> Devices:
        return self.kubelet.wait_for_list(matches, timeout=timeout)

    def first_list_after(
        self, since: float, matches: Callable[[Devices], bool], timeout: float = 5.0
    ) -> tuple[Devices, float]:
        """The first ListAndWatch list after `since` that matches, and how long after it came."""

        def found() -> tuple[Devices, float] | None:
            for connection in reversed(self.kubelet.connections):
                for received_at, devices in connection.lists:
                    if received_at >= since and matches(devices):
                        return devices, received_at - since
            return None

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = found()
            if hit is not None:
                return hit
            time.sleep(0.01)
        raise AssertionError(
            f"no matching ListAndWatch list within {timeout} s; lists: {self.kubelet.lists()}\n"
            f"plugin log:\n{self.plugin_logs()[-3000:]}"
        )

    def granted_paths(self, device_id: str) -> tuple[str, ...]:
        """The host paths one unit grants (Allocate has no side effects)."""
        response = self.kubelet.allocate([device_id])
        return tuple(d.host_path for d in response.container_responses[0].devices)

    def ids_by_path(self, devices: Devices) -> dict[str, str]:
        """Host path → unit ID, for per-device mode lists."""
        mapping: dict[str, str] = {}
        for device_id, health in devices.items():
            if health == HEALTHY:
                for path in self.granted_paths(device_id):
                    mapping[path] = device_id
        return mapping

    def allocate(self, ids: Sequence[str]) -> e2e_workload.ContainerGrantView:
        response = self.kubelet.allocate(list(ids))
        return grant_view(response.container_responses[0])

    # -- the workload side --------------------------------------------------

    def run_workload(
        self,
        grant: e2e_workload.ContainerGrantView,
        paths: Sequence[str],
        *,
        group_add: Sequence[str] | None = None,
        write: bool = False,
        read_length: int = 64,
        via: str = e2e_workload.VIA_DEVICE_SPECS,
    ) -> WorkloadReport:
        """Run the least-privilege workload with the grant applied; report what it saw."""
        groups = (
            e2e_workload.device_groups([d.host_path for d in grant.devices], node_group)
            if group_add is None
            else tuple(group_add)
        )
        run = e2e_workload.workload_run(
            grant,
            self.image,
            user=WORKLOAD_USER,
            group_add=groups,
            entrypoint=("python3", "-c", WORKLOAD_SCRIPT),
            command=("write" if write else "read", str(read_length), *paths),
            labels={SUITE_LABEL: self.run_id},
            via=via,
        )
        container = self._start_container(
            name=f"pdp-e2e-workload-{self.run_id}-{len(self._containers)}", **run.docker_kwargs()
        )
        status = container.wait(timeout=120)
        output = container.logs().decode(errors="replace")
        try:
            data = json.loads(output.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise AssertionError(
                f"workload exited {status['StatusCode']} without a report:\n{output}"
            ) from None
        return WorkloadReport(
            exit_code=int(status["StatusCode"]),
            uid=int(data["uid"]),
            groups=tuple(data["groups"]),
            dev_entries=tuple(data["dev"]),
            devices=data["devices"],
            cap_eff=str(data["cap_eff"]),
            output=output,
        )

    # -- teardown -----------------------------------------------------------

    def close(self) -> list[str]:
        """Remove every container started and stop the stand-in; returns problems."""
        problems: list[str] = []
        for container in self._containers:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as error:
                problems.append(f"container {container.name}: {error}")
        self._containers.clear()
        self.kubelet.stop()
        shutil.rmtree(self.plugin_dir, ignore_errors=True)
        return problems


def node_group(path: str) -> int:
    return os.stat(path).st_gid


def config_map_name(daemonset: Mapping[str, Any]) -> str:
    """The ConfigMap the plugin container mounts (the one the suite stands in for)."""
    container = e2e_manifest.plugin_container(daemonset)
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"].get("volumes") or []}
    names = [
        volumes[m["name"]]["configMap"]["name"]
        for m in container.get("volumeMounts") or []
        if "configMap" in volumes.get(m["name"], {})
    ]
    if len(names) != 1:
        raise e2e_manifest.ManifestShapeError(
            f"the plugin container mounts {len(names)} ConfigMaps ({names}); the suite expects one"
        )
    return str(names[0])


def remove_leftover_containers(client: docker.DockerClient) -> int:
    """Remove containers an interrupted earlier run left behind (by the suite's label)."""
    leftovers = client.containers.list(all=True, filters={"label": SUITE_LABEL})
    for container in leftovers:
        container.remove(force=True)
    return len(leftovers)


def plugin_config(
    loops_glob: str,
    excluded: Sequence[LoopDevice],
    *,
    permissions: str = "rw",
    grant_mode: str = "per-device",
) -> dict[str, Any]:
    """The suite's config.json, in the IBM-compatible keys the ConfigMap carries."""
    return {
        "nx-gzip": False,
        "permissions": permissions,
        "include-devices": [loops_glob],
        "exclude-devices": [d.path for d in excluded],
        "discovery-strategy": "default",
        "scan-interval": "60s",
        "grant-mode": grant_mode,
    }


@contextmanager
def started(node: Node) -> Iterator[Node]:
    try:
        node.start()
        yield node
    finally:
        node.close()
