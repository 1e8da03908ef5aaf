"""The DaemonSet drives the real plugin: its flags exist in the plugin's CLI,
its values are accepted, its mounts are where its flags point, and the config
it ships is one the plugin accepts and applies as intended."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import pytest
import yaml

from pdp_pipeline import manifests

Rendered = Callable[[str], list[dict[str, Any]]]


def _plugin_command() -> str:
    found = shutil.which("power-device-plugin")
    assert found, "power-device-plugin is not on PATH: run the tests through scripts/in-venv"
    return found


def _run_plugin(*args: str) -> subprocess.CompletedProcess[str]:
    # A wide terminal, so argparse does not wrap a flag name across lines.
    env = {**os.environ, "COLUMNS": "250"}
    env = {k: v for k, v in env.items() if not k.startswith("PDP_")}
    return subprocess.run(
        [_plugin_command(), *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture(scope="module")
def serve_help() -> str:
    done = _run_plugin("serve", "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flag_values(args: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            if "=" in arg:
                flag, value = arg.split("=", 1)
            else:
                flag, value = arg, args[index + 1]
            values[flag] = value
    return values


def _mount_for(pod_spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds PATH, with its volume."""
    volumes = {volume["name"]: volume for volume in pod_spec["volumes"]}
    best: dict[str, Any] = {}
    for mount in container["volumeMounts"]:
        mount_path = PurePosixPath(mount["mountPath"])
        holds = PurePosixPath(path) == mount_path or mount_path in PurePosixPath(path).parents
        if holds and (not best or len(mount["mountPath"]) > len(best["mountPath"])):
            best = {**mount, "volume": volumes[mount["name"]]}
    assert best, f"nothing is mounted at {path}"
    return best


def test_the_container_runs_the_serve_command(container: dict[str, Any]) -> None:
    assert "command" not in container, "the image's entrypoint is power-device-plugin"
    assert container["args"][0] == "serve"


def test_every_flag_the_daemonset_passes_exists_in_the_plugin_cli(
    container: dict[str, Any], serve_help: str
) -> None:
    known = manifests.help_flags(serve_help)
    used = manifests.flags_used(container["args"])
    assert used, "the DaemonSet passes no flags"
    assert sorted(set(used) - known) == []


def test_every_plugin_variable_the_daemonset_sets_exists_in_the_plugin_cli(
    container: dict[str, Any], serve_help: str
) -> None:
    names = [e["name"] for e in container.get("env", []) if e["name"].startswith("PDP_")]
    assert [name for name in names if name not in serve_help] == []


def test_the_plugin_cli_accepts_every_value_the_daemonset_passes(
    container: dict[str, Any],
) -> None:
    # argparse converts each value as it reads it, before it reaches --help.
    done = _run_plugin(*container["args"], "--help")
    assert done.returncode == 0, done.stderr


def test_the_cli_check_would_catch_a_flag_the_plugin_does_not_have(serve_help: str) -> None:
    assert "--dev-root" in manifests.help_flags(serve_help)
    assert "--devices-root" not in manifests.help_flags(serve_help)
    assert manifests.flags_used(["serve", "--devices-root=/x", "--listen", ":1"]) == [
        "--devices-root",
        "--listen",
    ]


def test_host_dev_sys_and_proc_are_mounted_read_only_where_the_flags_point(
    pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    flags = _flag_values(container["args"])
    for flag, host_path in (
        ("--dev-root", "/dev"),
        ("--sys-root", "/sys"),
        ("--host-proc", "/proc"),
    ):
        mount = _mount_for(pod_spec, container, flags[flag])
        assert mount["mountPath"] == flags[flag]
        assert mount["volume"]["hostPath"]["path"] == host_path
        assert mount["readOnly"] is True


def test_the_plugin_directory_is_the_kubelet_s_mounted_read_write(
    pod_spec: dict[str, Any], container: dict[str, Any]
) -> None:
    plugin_dir = _flag_values(container["args"])["--plugin-dir"]
    mount = _mount_for(pod_spec, container, plugin_dir)
    assert mount["mountPath"] == plugin_dir
    assert mount["volume"]["hostPath"]["path"] == "/var/lib/kubelet/device-plugins"
    assert not mount.get("readOnly", False)


def test_the_config_flag_points_at_a_key_of_the_mounted_config_map(
    pod_spec: dict[str, Any], container: dict[str, Any], plugin_objects: list[Any]
) -> None:
    config = PurePosixPath(_flag_values(container["args"])["--config"])
    mount = _mount_for(pod_spec, container, str(config))
    assert PurePosixPath(mount["mountPath"]) == config.parent
    config_map = manifests.the_object(plugin_objects, "ConfigMap")
    assert mount["volume"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert config.name in config_map["data"]


def test_probes_reach_the_port_the_plugin_listens_on(container: dict[str, Any]) -> None:
    listen = _flag_values(container["args"])["--listen"]
    port = int(listen.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        target = container[probe]["httpGet"]["port"]
        assert ports.get(target, target) == port, probe


def test_resource_and_socket_are_the_ones_the_kubelet_knows(container: dict[str, Any]) -> None:
    flags = _flag_values(container["args"])
    assert flags["--resource"] == "power-dev-plugin/dev"
    assert flags["--socket-name"] == "power-dev.csi.ibm.com-reg.sock"


def _shipped_config(plugin_objects: list[Any], container: dict[str, Any]) -> str:
    name = PurePosixPath(_flag_values(container["args"])["--config"]).name
    text: str = manifests.the_object(plugin_objects, "ConfigMap")["data"][name]
    return text


def test_the_shipped_config_parses_without_warnings(
    plugin_objects: list[Any], container: dict[str, Any]
) -> None:
    from power_device_plugin.config import parse_config

    config, warnings = parse_config(_shipped_config(plugin_objects, container), "configmap")
    assert warnings == []
    # Never "every block device": that would include the node's system disk.
    assert config.include_devices
    assert all(
        pattern.startswith(("/dev/dm-", "/dev/mapper/")) for pattern in config.include_devices
    )


def test_the_shipped_config_is_the_documented_sample(
    plugin_objects: list[Any], container: dict[str, Any], root: Path
) -> None:
    text = (root / "docs" / "configuration.md").read_text()
    section = text.split("## Sample ConfigMap", 1)[1]
    sample_yaml = section.split("```yaml", 1)[1].split("```", 1)[0]
    sample = yaml.safe_load(sample_yaml)
    config_map = manifests.the_object(plugin_objects, "ConfigMap")
    assert sample["metadata"]["name"] == config_map["metadata"]["name"]
    assert sample["metadata"]["namespace"] == config_map["metadata"]["namespace"]
    assert json.loads(_shipped_config(plugin_objects, container)) == json.loads(
        sample["data"]["config.json"]
    )


@pytest.mark.root
def test_the_plugin_run_with_the_daemonset_flags_and_config_advertises_only_dm_devices(
    plugin_objects: list[Any], container: dict[str, Any], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create device nodes with mknod")
    dev, sys_root = tmp_path / "dev", tmp_path / "sys"
    for name, minor in (("dm-0", 0), ("sda", 1)):
        (dev).mkdir(exist_ok=True)
        os.mknod(dev / name, stat.S_IFBLK | 0o660, os.makedev(250, minor))
        (sys_root / "block" / name).mkdir(parents=True)
        (sys_root / "block" / name / "dev").write_text(f"250:{minor}\n")
    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "mountinfo").write_text("22 1 0:21 / /proc rw - proc proc rw\n")
    (proc / "swaps").write_text("Filename Type Size Used Priority\n")
    config = tmp_path / "config.json"
    config.write_text(_shipped_config(plugin_objects, container))
    # The DaemonSet's own flags, then the paths of this fake node (later flags win).
    args = ["scan", *container["args"][1:], "--output", "json"]
    args += ["--dev-root", str(dev), "--sys-root", str(sys_root), "--config", str(config)]
    args += ["--host-proc", str(proc)]
    done = _run_plugin(*args)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    advertised = sorted(
        c["host_path"] for c in report["candidates"] if c["verdict"] == "advertised"
    )
    assert advertised == ["/dev/dm-0"]
    assert report["resource"] == "power-dev-plugin/dev"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.root
def test_uid_0_without_any_capability_serves_in_a_root_owned_plugin_directory(
    container: dict[str, Any], tmp_path: Path
) -> None:
    """Why the DaemonSet needs root but no capability: mode bits are enough."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to drop every capability")
    plugin_dir, dev, sys_root = tmp_path / "plugins", tmp_path / "dev", tmp_path / "sys"
    for directory in (plugin_dir, dev, sys_root / "block"):
        directory.mkdir(parents=True)
    plugin_dir.chmod(0o755)  # as the kubelet's directory: root:root 0755
    socket_name = _flag_values(container["args"])["--socket-name"]
    args = [*container["args"], "--plugin-dir", str(plugin_dir), "--dev-root", str(dev)]
    args += ["--sys-root", str(sys_root), "--config", str(tmp_path / "none.json")]
    args += ["--listen", f"127.0.0.1:{_free_port()}"]
    process = subprocess.Popen(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
         _plugin_command(), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (plugin_dir / socket_name).is_socket() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        assert (plugin_dir / socket_name).is_socket()
        status = Path(f"/proc/{process.pid}/status").read_text()
        assert "CapEff:\t0000000000000000" in status
    finally:
        process.terminate()
        process.communicate(timeout=10)
