"""The command line: flags, their PDP_ twins, bad values, scan output, version, logging."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from power_device_plugin import __version__, cli
from power_device_plugin.health import ListenAddress, parse_listen


def test_defaults_are_the_documented_ones() -> None:
    args = cli.parse_args(["serve"], {})
    assert args.config == Path("/etc/power-device-plugin/config.json")
    assert args.plugin_dir == Path("/var/lib/kubelet/device-plugins")
    assert args.dev_root == Path("/dev")
    assert args.sys_root == Path("/sys")
    assert args.host_proc == Path("/proc")
    assert args.resource == "power-dev-plugin/dev"
    assert args.socket_name == "power-dev.csi.ibm.com-reg.sock"
    assert args.listen == ":8080"
    assert args.log_level == "info"
    assert args.log_format == "text"


@pytest.mark.parametrize(
    ("flag", "env", "value", "dest", "expected"),
    [
        ("--config", "PDP_CONFIG", "/c.json", "config", Path("/c.json")),
        ("--plugin-dir", "PDP_PLUGIN_DIR", "/p", "plugin_dir", Path("/p")),
        ("--dev-root", "PDP_DEV_ROOT", "/host/dev", "dev_root", Path("/host/dev")),
        ("--sys-root", "PDP_SYS_ROOT", "/host/sys", "sys_root", Path("/host/sys")),
        ("--host-proc", "PDP_HOST_PROC", "/host/proc", "host_proc", Path("/host/proc")),
        ("--resource", "PDP_RESOURCE", "example.com/disk", "resource", "example.com/disk"),
        ("--socket-name", "PDP_SOCKET_NAME", "x.sock", "socket_name", "x.sock"),
        ("--listen", "PDP_LISTEN", "127.0.0.1:9100", "listen", "127.0.0.1:9100"),
        ("--log-level", "PDP_LOG_LEVEL", "DEBUG", "log_level", "debug"),
        ("--log-format", "PDP_LOG_FORMAT", "json", "log_format", "json"),
    ],
)
def test_every_flag_has_an_environment_twin_and_the_flag_wins(
    flag: str, env: str, value: str, dest: str, expected: object
) -> None:
    from_env = cli.parse_args(["serve"], {env: value})
    assert getattr(from_env, dest) == expected
    from_flag = cli.parse_args(["serve", flag, value], {env: "!!bad value ignored!!"})
    assert getattr(from_flag, dest) == expected


@pytest.mark.parametrize(
    ("flag", "env", "value", "words"),
    [
        ("--resource", "PDP_RESOURCE", "nodomain", "domain/name"),
        ("--resource", "PDP_RESOURCE", "kubernetes.io/disk", "kubernetes.io"),
        ("--resource", "PDP_RESOURCE", "Example.com/disk", "DNS subdomain"),
        ("--resource", "PDP_RESOURCE", "example.com/-disk", "name"),
        ("--socket-name", "PDP_SOCKET_NAME", "a/b.sock", "without '/'"),
        ("--socket-name", "PDP_SOCKET_NAME", "kubelet.sock", "kubelet's own"),
        ("--listen", "PDP_LISTEN", "8080", "no port"),
        ("--listen", "PDP_LISTEN", ":99999", "0 to 65535"),
        ("--log-level", "PDP_LOG_LEVEL", "loud", "debug, info"),
        ("--log-format", "PDP_LOG_FORMAT", "xml", "text, json"),
        ("--plugin-dir", "PDP_PLUGIN_DIR", "", "empty"),
    ],
)
def test_a_bad_value_exits_2_naming_the_flag_or_variable(
    flag: str, env: str, value: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as by_flag:
        cli.parse_args(["serve", f"{flag}={value}"], {})
    assert by_flag.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and words in err

    with pytest.raises(SystemExit) as by_env:
        cli.parse_args(["serve"], {env: value})
    assert by_env.value.code == 2
    err = capsys.readouterr().err
    assert env in err and words in err


def test_an_unknown_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.parse_args(["serve", "--no-such-flag"], {})
    assert caught.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit) as caught:
        cli.parse_args([], {})
    assert caught.value.code == 2


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"], {})
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"power-device-plugin {__version__}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":8080", ListenAddress("", 8080)),
        ("127.0.0.1:9000", ListenAddress("127.0.0.1", 9000)),
        ("[::1]:8080", ListenAddress("::1", 8080)),
        ("0.0.0.0:0", ListenAddress("0.0.0.0", 0)),
    ],
)
def test_listen_addresses_parse_host_and_port(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected


def _fake_tree(tmp_path: Path) -> tuple[Path, Path]:
    import os
    import stat

    if os.geteuid() != 0:
        pytest.skip("device nodes for the fake /dev are made with os.mknod, which needs root")
    dev, sys_root = tmp_path / "dev", tmp_path / "sys"
    (sys_root / "block" / "sda").mkdir(parents=True)
    dev.mkdir()
    os.mknod(dev / "sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
    (sys_root / "block" / "sdb").mkdir()
    (dev / "sdb").write_text("a regular file, not a device node")
    os.mknod(dev / "sdc", stat.S_IFBLK | 0o660, os.makedev(8, 32))
    (sys_root / "block" / "sdc").mkdir()
    (tmp_path / "proc" / "1").mkdir(parents=True)
    (tmp_path / "proc" / "1" / "mountinfo").write_text(
        "27 1 8:32 / /sysroot rw,relatime - xfs /dev/sdc rw\n"
    )
    (tmp_path / "proc" / "swaps").write_text("Filename Type Size Used Priority\n")
    (tmp_path / "config.json").write_text("{}")
    return dev, sys_root


def _scan_flags(tmp_path: Path) -> list[str]:
    return [
        f"--dev-root={tmp_path / 'dev'}",
        f"--sys-root={tmp_path / 'sys'}",
        f"--host-proc={tmp_path / 'proc'}",
        f"--config={tmp_path / 'config.json'}",
    ]


def test_scan_json_reports_devices_and_every_candidate_with_its_verdict(
    tmp_path: Path,
) -> None:
    dev, _ = _fake_tree(tmp_path)
    args = cli.parse_args(["scan", "--output", "json", *_scan_flags(tmp_path)], {})
    out = io.StringIO()
    assert cli.run_scan(args, out) == 0
    report = json.loads(out.getvalue())
    assert report["resource"] == "power-dev-plugin/dev"
    assert [d["health"] for d in report["devices"]] != []
    assert set(report["devices"][0]) == {"id", "health", "numa_nodes"}
    verdicts = {c["host_path"]: c["verdict"] for c in report["candidates"]}
    assert verdicts == {"/dev/sda": "advertised", "/dev/sdb": "refused", "/dev/sdc": "refused"}
    for candidate in report["candidates"]:
        assert set(candidate) == {
            "path", "host_path", "verdict", "rule", "reason", "kind", "rdev", "identity", "problem",
            "numa_nodes",
        }  # fmt: skip
    assert report["candidates"][0]["path"] == str(dev / "sda")
    assert report["candidates"][0]["rdev"] == "8:0"


def test_scan_names_the_in_use_rule_for_a_disk_mounted_on_the_host(tmp_path: Path) -> None:
    _fake_tree(tmp_path)
    args = cli.parse_args(["scan", "--output", "json", *_scan_flags(tmp_path)], {})
    out = io.StringIO()
    assert cli.run_scan(args, out) == 0
    (sdc,) = [c for c in json.loads(out.getvalue())["candidates"] if c["host_path"] == "/dev/sdc"]
    assert (sdc["verdict"], sdc["rule"], sdc["reason"]) == (
        "refused",
        "in use",
        "in use: mounted at /sysroot",
    )


def test_scan_with_a_missing_config_exits_2_saying_the_file_does_not_exist(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_tree(tmp_path)
    missing = tmp_path / "missing.json"
    args = cli.parse_args(["scan", *_scan_flags(tmp_path), f"--config={missing}"], {})
    out = io.StringIO()
    with caplog.at_level(logging.ERROR):
        assert cli.run_scan(args, out) == 2
    assert f"{missing}: <document>: does not exist" in caplog.text
    assert out.getvalue() == ""


def test_scan_table_names_each_candidate_and_the_advertised_count(tmp_path: Path) -> None:
    _fake_tree(tmp_path)
    args = cli.parse_args(["scan", *_scan_flags(tmp_path)], {})
    out = io.StringIO()
    assert cli.run_scan(args, out) == 0
    table = out.getvalue()
    assert "VERDICT" in table
    assert "/dev/sda" in table and "advertised" in table
    assert "/dev/sdb" in table and "refused" in table
    assert "power-dev-plugin/dev: " in table


def test_scan_with_an_invalid_config_exits_2_naming_the_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"permissions": "rwz"}')
    args = cli.parse_args(["scan", f"--config={config}", f"--dev-root={tmp_path}"], {})
    with caplog.at_level(logging.ERROR):
        assert cli.run_scan(args, io.StringIO()) == 2
    assert "permissions" in caplog.text


def test_json_logs_are_one_object_per_line() -> None:
    stream = io.StringIO()
    cli.configure_logging("info", "json", stream)
    try:
        logging.getLogger("power_device_plugin.test").info("hello %s", "world")
        logging.getLogger("power_device_plugin.test").debug("hidden")
    finally:
        cli.configure_logging("warning", "text")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "hello world"
    assert entry["level"] == "info"
    assert entry["logger"] == "power_device_plugin.test"


def test_the_flag_table_in_docs_is_the_one_the_code_has() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugin.md").read_text()
    assert cli.options_table() in docs, "docs/plugin.md flag table is out of date"


def test_health_server_answers_on_ipv6_loopback() -> None:
    import urllib.request

    from power_device_plugin.health import HealthServer, Probes
    from power_device_plugin.metrics import PluginMetrics

    try:
        server = HealthServer(
            parse_listen("[::1]:0"), Probes(not_ready=lambda: "x"), PluginMetrics()
        )
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    server.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=2) as reply:
            assert reply.status == 200
    finally:
        server.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_healthz_fails_naming_the_loop_that_stopped_making_progress() -> None:
    from power_device_plugin.health import STALL_SECONDS, HealthServer, Heartbeat, Probes, stalled
    from power_device_plugin.metrics import PluginMetrics

    now = [100.0]
    lifecycle = Heartbeat("kubelet lifecycle loop", clock=lambda: now[0])
    watcher = Heartbeat("device watcher", clock=lambda: now[0])
    probes = Probes(not_ready=lambda: None, not_live=lambda: stalled((lifecycle, watcher)))
    server = HealthServer(parse_listen("127.0.0.1:0"), probes, PluginMetrics())
    server.start()
    try:
        assert _get(server.port, "/healthz") == (200, "ok\n")
        now[0] += STALL_SECONDS + 1
        lifecycle.beat()
        status, body = _get(server.port, "/healthz")
        assert status == 503
        assert "device watcher has made no progress for 61s" in body
        assert "kubelet lifecycle loop" not in body
        watcher.beat()
        assert _get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()


def test_readyz_body_says_why_it_is_not_ready() -> None:
    from power_device_plugin.health import HealthServer, Probes
    from power_device_plugin.metrics import PluginMetrics

    probes = Probes(not_ready=lambda: "no valid config yet, nothing is advertised (x)")
    server = HealthServer(parse_listen("127.0.0.1:0"), probes, PluginMetrics())
    server.start()
    try:
        assert _get(server.port, "/readyz") == (
            503,
            "not ready: no valid config yet, nothing is advertised (x)\n",
        )
    finally:
        server.stop()


def test_health_server_makes_room_for_a_probe_beyond_its_connection_bound() -> None:
    import socket

    from power_device_plugin.health import HealthServer, Probes
    from power_device_plugin.metrics import PluginMetrics

    server = HealthServer(
        parse_listen("127.0.0.1:0"),
        Probes(not_ready=lambda: None),
        PluginMetrics(),
        max_connections=2,
        timeout=0.5,
    )
    server.start()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        # Both slots are held by connections that never send a head: the probe is
        # still answered, by closing the oldest of them to make room.
        assert _get(server.port, "/healthz")[0] == 200
        idle[0].settimeout(5)
        assert idle[0].recv(100) == b""
        # The other idle connection is closed by the head timeout: recv sees EOF.
        idle[1].settimeout(5)
        assert idle[1].recv(100) == b""
        assert _get(server.port, "/healthz")[0] == 200
    finally:
        for connection in idle:
            connection.close()
        server.stop()


def test_scan_with_resources_groups_the_report_by_resource_and_says_who_owns_a_device(
    tmp_path: Path,
) -> None:
    _fake_tree(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "resources": [
                    {"name": "a.com/first", "include-devices": ["/dev/sda"]},
                    {"name": "a.com/second", "include-devices": ["/dev/sd*"]},
                ]
            }
        )
    )
    args = cli.parse_args(["scan", "--output", "json", *_scan_flags(tmp_path)], {})
    out = io.StringIO()
    assert cli.run_scan(args, out) == 0
    first, second = json.loads(out.getvalue())["resources"]
    assert (first["resource"], second["resource"]) == ("a.com/first", "a.com/second")
    assert len(first["devices"]) == 1 and second["devices"] == []
    sda = next(c for c in second["candidates"] if c["host_path"] == "/dev/sda")
    assert (sda["verdict"], sda["rule"]) == ("refused", "resources")
    assert "granted by a.com/first" in sda["reason"]
    table_args = cli.parse_args(["scan", *_scan_flags(tmp_path)], {})
    table = io.StringIO()
    assert cli.run_scan(table_args, table) == 0
    text = table.getvalue()
    assert "a.com/first: 1 device IDs would be advertised" in text
    assert "a.com/second: 0 device IDs would be advertised" in text
