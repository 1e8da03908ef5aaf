"""The rehearsal's decisions (pure) and its proxy; `invoke rehearse` runs the real thing."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from pdp_pipeline.rehearsal import netproxy, plan, runner

ROOT = Path(__file__).resolve().parents[2]
ACTIONS = ROOT / "tests" / "rehearsal" / "actions"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_pinned_action_of_the_workflows_has_a_stand_in_at_that_exact_commit(
    path: Path,
) -> None:
    text = path.read_text(encoding="utf-8")

    mapped = plan.action_map(text, ACTIONS)

    pins = plan.pinned_actions(text)
    assert [m.split("=", 1)[0] for m in mapped] == [f"{repo}@{ref}" for repo, ref in pins]
    for value in mapped:
        assert (Path(value.split("=", 1)[1]) / "action.yml").is_file()


def test_an_action_without_a_stand_in_stops_the_rehearsal_before_act_could_fetch_it() -> None:
    text = "      - uses: some/action@0123456789012345678901234567890123456789 # v1.0.0\n"

    with pytest.raises(plan.RehearsalError, match=r"some/action@0123.*nothing may be fetched"):
        plan.action_map(text, ACTIONS)


@pytest.mark.parametrize("name", sorted(set(plan.STAND_INS.values())))
def test_each_stand_in_is_a_local_action_act_can_run(name: str) -> None:
    action = yaml.safe_load((ACTIONS / name / "action.yml").read_text(encoding="utf-8"))

    using = action["runs"]["using"]
    assert using == "composite" or (using.startswith("node") and action["runs"]["main"])
    if using == "composite":
        assert all("shell" in step for step in action["runs"]["steps"])


def test_act_runs_on_this_host_offline_with_every_action_mapped_and_the_mirror_set(
    tmp_path: Path,
) -> None:
    job = next(j for j in plan.JOBS if j.name == "ci-ubi9")
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")

    argv = plan.act_argv("act", job, text, ACTIONS, tmp_path / "e.json", tmp_path / "c", "m@d")

    assert argv[:2] == ["act", "push"]
    assert "ubuntu-24.04=-self-hosted" in argv
    assert {"--action-offline-mode", "--no-skip-checkout", "--no-cache-server"} <= set(argv)
    assert argv[argv.index("--matrix") + 1] == "base:ubi9"
    assert f"{plan.MIRROR_VARIABLE}=m@d" in argv
    assert argv.count("--local-repository") == len(plan.pinned_actions(text))


def test_the_release_is_rehearsed_as_a_push_of_its_tag() -> None:
    job = next(j for j in plan.JOBS if j.name == "release")

    payload = plan.event_payload(job, "abc")

    assert payload["ref"] == f"refs/tags/{plan.RELEASE_TAG}" and payload["after"] == "abc"
    assert ("RELEASE_REGISTRY", plan.REMOTE_REGISTRY) in job.variables
    # kept on this host: the host's platform, on the stand-in base
    assert ("RELEASE_ARCH", "native") in job.variables
    assert job.mirror_variables == ("RELEASE_BASE_IMAGE",)


def test_jobs_are_chosen_by_name_and_an_unknown_one_is_named() -> None:
    assert [j.name for j in plan.select_jobs("all")] == [j.name for j in plan.JOBS]
    assert [j.name for j in plan.select_jobs("release,wheels-native")] == [
        "wheels-native",
        "release",
    ]
    with pytest.raises(plan.RehearsalError, match="unknown nope"):
        plan.select_jobs("nope")


def test_the_runner_environment_is_a_runner_s_and_not_this_shell_s(tmp_path: Path) -> None:
    env = plan.runner_env(
        home=tmp_path / "home",
        state=tmp_path / "state",
        store=tmp_path / "store",
        tools=tmp_path / "tools",
        shims=tmp_path / "shims",
        repo=tmp_path / "repo",
        host_python_dir=tmp_path / "py",
        pipeline_python="/venv/bin/python",
        pipeline_src="/src",
        proxy_port=3128,
        extra={},
    )

    assert env["PATH"].startswith(f"{tmp_path / 'shims'}:") and "venv" not in env["PATH"]
    assert env["DOCKER_HOST"] == f"unix://{tmp_path / 'state' / 'docker.sock'}"
    assert "GITHUB_ACTIONS" not in env  # act sets it, as GitHub does
    assert {"127.0.0.1", "::1"} <= set(env["NO_PROXY"].split(","))


def test_the_runner_engine_starts_as_docker_ce_on_ubuntu_24_04_does(tmp_path: Path) -> None:
    argv = runner.dockerd_argv(tmp_path, "/etc/docker/daemon.json")

    assert runner.RUNNER_DAEMON_JSON.strip() == "{}"  # classic store, no features
    for own in ("--data-root", "--exec-root", "--pidfile"):
        assert str(tmp_path) in argv[argv.index(own) + 1]
    assert argv[argv.index("-H") + 1] == f"unix://{tmp_path / 'docker.sock'}"


def test_the_systemctl_shim_knows_only_the_docker_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(runner.STATE_ENV, str(tmp_path))

    assert runner.systemctl(["is-active", "--quiet", "docker-registry"]) == 3
    assert runner.systemctl(["stop", "docker-registry"]) == 5
    assert runner.systemctl(["is-active", "docker"]) == 3  # no dockerd pid in this state
    assert runner.systemctl(["daemon-reload"]) == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"CONNECT pypi.org:443 HTTP/1.1\r\n", ("CONNECT", "pypi.org", 443, b"")),
        (
            b"GET http://deb.debian.org/debian/dists/bookworm/InRelease HTTP/1.1\r\n",
            ("GET", "deb.debian.org", 80, b"GET /debian/dists/bookworm/InRelease HTTP/1.1\r\n"),
        ),
    ],
)
def test_proxy_request_lines_become_a_tunnel_or_an_origin_request(
    line: bytes, expected: tuple[str, str, int, bytes]
) -> None:
    assert netproxy.parse_request_line(line) == expected


@pytest.mark.parametrize("line", [b"GET /relative HTTP/1.1\r\n", b"CONNECT nohost HTTP/1.1\r\n"])
def test_proxy_refuses_what_it_cannot_route(line: bytes) -> None:
    with pytest.raises(ValueError):
        netproxy.parse_request_line(line)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_request_crosses_the_forwarder_and_the_unix_socket_proxy(tmp_path: Path) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    origin = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    sock = tmp_path / "proxy.sock"
    port = _free_port()
    proxy = netproxy.serve_proxy(sock)
    forward = netproxy.forward_tcp(sock, port)
    try:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"})
        )
        url = f"http://127.0.0.1:{origin.server_port}/x?y=1"
        with opener.open(url, timeout=10) as reply:
            assert reply.read() == b"hello /x?y=1"
    finally:
        forward.stop()
        proxy.stop()
        origin.shutdown()


def test_the_actions_of_a_called_workflow_get_their_stand_ins_too() -> None:
    root = Path(__file__).resolve().parents[2]
    release = (root / ".github/workflows/release.yml").read_text(encoding="utf-8")
    text = plan.with_called_workflows(release, lambda path: (root / path).read_text())
    repos = {repo for repo, _ in plan.pinned_actions(text)}
    # actions/cache is used by wheels.yml (its compile legs) only, not by release.yml
    assert "actions/cache" in repos
    assert "actions/cache" not in {repo for repo, _ in plan.pinned_actions(release)}


def test_a_checkout_under_tmp_is_carried_into_the_runner_s_fresh_tmp() -> None:
    # A fresh clone often lives under /tmp: the runner's empty /tmp must not hide it.
    kept = runner.kept_under_tmp(
        ["/tmp/clone", "/tmp/clone/.cache/rehearsal/logs", "/tmp/other/", "/work/repo", "/tmp"]
    )
    assert kept == ["/tmp/clone", "/tmp/other"]
    assert runner.kept_under_tmp(["/work/repo", "/work/repo/.cache/logs"]) == []
