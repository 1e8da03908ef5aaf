"""Registry client: retries, answers turned into errors, index parsing; (engine) a round trip."""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from pdp_pipeline.images import registry
from pdp_pipeline.images.registry import NotFound, RegistryError

# --- which registry is this host's, and which failures are pushes ------------------------


@pytest.mark.parametrize(
    ("ref", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("[::1]:5000/power-dev-plugin:v1", True),
        ("127.0.0.1:5000/power-dev-plugin:v1", True),
        ("localhost:5000/p@sha256:00", True),
        ("localhost", True),
        ("quay.io", False),
        ("ghcr.io/x", False),
        ("ghcr.io/org/power-dev-plugin:v1", False),
        ("quay.io/127.0.0.1/p:v1", False),
        ("[2001:db8::1]:5000/p:v1", False),
    ],
)
def test_only_a_loopback_registry_counts_as_this_hosts(ref: str, loopback: bool) -> None:
    assert registry.is_loopback_registry(ref) is loopback


@pytest.mark.parametrize(
    ("output", "retry"),
    [
        (
            "#8 pushing layers\nERROR: failed to push 127.0.0.1:5000/pdp:v1-amd64:"
            " unexpected status from PUT request: 500 Internal Server Error",
            True,
        ),
        ("#9 exporting to image\n#9 pushing layers\nERROR: failed to do request: EOF", True),
        (
            "ERROR: failed to solve: failed to read dockerfile: open Containerfile: no such file",
            False,
        ),
        ("ERROR: failed to solve: 127.0.0.1:5000/rt@sha256:00: not found", False),
    ],
)
def test_only_push_failures_are_worth_a_retry(output: str, retry: bool) -> None:
    assert registry.is_push_failure(output) is retry


# --- retries ----------------------------------------------------------------------


class Flaky:
    """An action that fails `failures` times with `error`, then returns `value`."""

    def __init__(self, failures: int, error: Exception, value: str = "done") -> None:
        self.failures, self.error, self.value, self.calls = failures, error, value, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.value


def test_transient_failures_are_retried_with_doubling_delays() -> None:
    action = Flaky(2, RegistryError("500 Internal Server Error"))
    sleeps: list[float] = []
    lines: list[str] = []
    result = registry.with_retries(
        action, what="push of x", first_delay=2.0, log=lines.append, sleep=sleeps.append
    )
    assert result == "done"
    assert action.calls == 3
    assert sleeps == [2.0, 4.0]
    assert sum("push of x failed (attempt" in line for line in lines) == 2


def test_the_last_error_is_raised_after_all_attempts() -> None:
    last = RegistryError("push of x (s390x): the registry answered: 500", arch="s390x")
    action = Flaky(10, last)
    sleeps: list[float] = []
    with pytest.raises(RegistryError) as caught:
        registry.with_retries(
            action,
            what="push",
            attempts=4,
            first_delay=1.0,
            log=lambda _: None,
            sleep=sleeps.append,
        )
    assert caught.value is last
    assert action.calls == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_not_found_is_an_answer_and_is_not_retried() -> None:
    action = Flaky(1, NotFound("x: not found"))
    with pytest.raises(NotFound):
        registry.with_retries(action, what="inspect", log=lambda _: None, sleep=lambda _: None)
    assert action.calls == 1


def test_errors_that_are_not_from_the_registry_are_not_retried() -> None:
    action = Flaky(1, ValueError("a bug, not a network problem"))
    with pytest.raises(ValueError):
        registry.with_retries(action, what="inspect", log=lambda _: None, sleep=lambda _: None)
    assert action.calls == 1


# --- answers into errors -------------------------------------------------------------


def fake_cli(
    monkeypatch: pytest.MonkeyPatch, returncode: int, stdout: str = "", stderr: str = ""
) -> list[list[str]]:
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, returncode, stdout, stderr)

    monkeypatch.setattr(registry.subprocess, "run", run)
    return calls


def test_failed_inspect_names_image_architecture_and_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref = "reg.example/power-dev-plugin:v1-s390x"
    calls = fake_cli(monkeypatch, 1, stderr="ERROR: unexpected status: 500 Internal Server Error")
    monkeypatch.setattr(registry.time, "sleep", lambda _: None)
    with pytest.raises(RegistryError) as caught:
        registry.manifest_digest(ref, log=lambda _: None)
    message = str(caught.value)
    assert ref in message and "(s390x)" in message and "500 Internal Server Error" in message
    assert caught.value.arch == "s390x" and caught.value.image == ref
    assert len(calls) == 4  # retried: a 500 may be transient
    assert calls[0][:3] == ["docker", "buildx", "imagetools"]


def test_missing_tag_is_false_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_cli(monkeypatch, 1, stderr="ERROR: reg.example/x:y: not found")
    assert registry.tag_exists("reg.example/x:y", log=lambda _: None) is False
    assert len(calls) == 1


def test_unreachable_registry_is_an_error_not_a_missing_tag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_cli(monkeypatch, 1, stderr="dial tcp 127.0.0.1:5000: connect: connection refused")
    monkeypatch.setattr(registry.time, "sleep", lambda _: None)
    with pytest.raises(RegistryError, match="connection refused"):
        registry.tag_exists("127.0.0.1:5000/x:amd64", log=lambda _: None)


def test_digest_is_read_from_the_manifest_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cli(monkeypatch, 0, stdout='{"mediaType": "x", "digest": "sha256:abc", "size": 3}\n')
    assert registry.manifest_digest("r/x:y", log=lambda _: None) == "sha256:abc"


def test_index_of_nothing_is_refused() -> None:
    with pytest.raises(RegistryError, match="no images to put in the index"):
        registry.create_index("r/x:v1", [], log=lambda _: None)


@pytest.mark.parametrize(
    ("ref", "arch"),
    [
        ("127.0.0.1:5000/power-dev-plugin-runtime:debian-s390x-abc", "s390x"),
        ("reg/power-dev-plugin:v1.2.0-ppc64le", "ppc64le"),
        ("reg/power-dev-plugin:v1.2.0", "all"),
        ("reg:5000/amd64/thing:v1", "all"),  # a path segment is not the tag
    ],
)
def test_architecture_is_read_from_the_tag(ref: str, arch: str) -> None:
    assert registry.arch_of(ref) == arch


# --- index parsing -------------------------------------------------------------------


def test_index_platforms_leave_out_attestations_and_keep_variants() -> None:
    index = {
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:p", "platform": {"os": "linux", "architecture": "ppc64le"}},
            {
                "digest": "sha256:att",
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": "sha256:a",
                },
            },
            {
                "digest": "sha256:v",
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
        ],
    }
    assert registry.platforms_of_index(index) == [
        ("linux/amd64", "sha256:a"),
        ("linux/ppc64le", "sha256:p"),
        ("linux/arm64/v8", "sha256:v"),
    ]


def test_image_size_is_config_plus_layers() -> None:
    manifest = {"config": {"size": 100}, "layers": [{"size": 1000}, {"size": 23}]}
    assert registry.manifest_size(manifest) == 1123


# --- a real registry (engine) -----------------------------------------------------------

LOCAL = "127.0.0.1:5000"


def push_tiny_image(arch: str, ref: str) -> None:
    """A one-file image for `arch`, made from a tar (no pull needed), pushed to ref."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        content = f"{arch}\n".encode()
        info = tarfile.TarInfo("arch.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    subprocess.run(
        ["docker", "import", "--platform", f"linux/{arch}", "-", ref],
        input=data.getvalue(),
        check=True,
        capture_output=True,
    )
    subprocess.run(["docker", "push", "-q", ref], check=True, capture_output=True)


@pytest.fixture(scope="module")
def local_registry() -> str:
    from pdp_pipeline.host import setup as host_setup

    root = Path(__file__).resolve().parents[2]
    host_setup.setup(host_setup.HostPaths(cache=root / ".cache"), log=lambda _: None)
    return LOCAL


@pytest.mark.engine
def test_round_trip_tags_digests_and_index(local_registry: str) -> None:
    run = uuid.uuid4().hex[:8]
    repository = f"{local_registry}/pdp-test-registry"
    refs = {arch: f"{repository}:{run}-{arch}" for arch in ("ppc64le", "s390x")}
    for arch, ref in refs.items():
        push_tiny_image(arch, ref)

    assert registry.tag_exists(refs["s390x"])
    assert not registry.tag_exists(f"{repository}:{run}-never-pushed")
    digests = {arch: registry.manifest_digest(ref) for arch, ref in refs.items()}
    assert all(d.startswith("sha256:") for d in digests.values())
    assert digests["ppc64le"] != digests["s390x"]
    assert (registry.image_size(refs["s390x"]) or 0) > 0

    index_ref = f"{repository}:{run}"
    index_digest = registry.create_index(index_ref, [refs["ppc64le"], refs["s390x"]])
    assert index_digest == registry.manifest_digest(index_ref)
    assert sorted(registry.index_platforms(index_ref)) == [
        ("linux/ppc64le", digests["ppc64le"]),
        ("linux/s390x", digests["s390x"]),
    ]
    assert registry.image_size(index_ref) is None
    subprocess.run(["docker", "image", "rm", *refs.values()], capture_output=True, check=False)


@pytest.mark.engine
def test_single_image_is_not_mistaken_for_an_index(local_registry: str) -> None:
    ref = f"{local_registry}/pdp-test-registry:{uuid.uuid4().hex[:8]}-amd64"
    push_tiny_image("amd64", ref)
    with pytest.raises(RegistryError, match="not an index"):
        registry.index_platforms(ref)
    subprocess.run(["docker", "image", "rm", ref], capture_output=True, check=False)
