"""Wheels images (keys, refusal), the base pin, DENIED as absent, trust before reuse."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pdp_pipeline.images import bases, registry, runtime, trust, wheels
from pdp_pipeline.platforms import by_arch

PIN = bases.BasePin("ubi9", "registry.access.redhat.com/ubi9/ubi:9.7", "sha256:" + "a" * 64, "3.12")
PACKAGES = ("grpcio==1.76.0", "protobuf==6.33.0")
# What buildx imagetools prints when ghcr.io is asked for a package that does not exist yet.
GHCR_DENIED = (
    "ERROR: failed to authorize: failed to fetch oauth token: unexpected status from GET request"
    " to https://ghcr.io/token?scope=repository%3Aowner%2Fpower-dev-plugin-wheels%3Apull"
    "&service=ghcr.io: 403 Forbidden\nDENIED: requested access to the resource is denied"
)


@pytest.mark.parametrize(
    "changed",
    [
        (("grpcio==1.77.0", "protobuf==6.33.0"), "3.12", "ppc64le", PIN.digest),
        (PACKAGES, "3.11", "ppc64le", PIN.digest),
        (PACKAGES, "3.12", "s390x", PIN.digest),
        (PACKAGES, "3.12", "ppc64le", "sha256:" + "b" * 64),
    ],
)
def test_wheels_key_changes_with_packages_python_arch_and_base(changed: Any) -> None:
    assert wheels.wheels_key(PACKAGES, "3.12", "ppc64le", PIN.digest) != wheels.wheels_key(*changed)


def test_wheels_key_ignores_the_order_of_the_requirements() -> None:
    assert wheels.wheels_key(PACKAGES, "3.12", "s390x", PIN.digest) == wheels.wheels_key(
        PACKAGES[::-1], "3.12", "s390x", PIN.digest
    )


def test_wheels_ref_names_python_arch_and_key() -> None:
    ref = wheels.wheels_ref("ghcr.io/o", "pdp", "3.12", "s390x", "f" * 64)
    assert ref == "ghcr.io/o/pdp-wheels:py3.12-s390x-ffffffffffff"


class Absent:
    def tag_exists(self, ref: str, log: Any = print, *, absent_if_denied: bool = False) -> bool:
        return False


def test_a_ubi9_runtime_without_its_wheels_image_is_refused_and_says_how_to_make_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wheels, "registry", Absent())

    def must_not_build(*_: Any, **__: Any) -> None:
        raise AssertionError("a runtime was built without its wheels image")

    monkeypatch.setattr(runtime, "_produce_ubi9", must_not_build)
    with pytest.raises(wheels.WheelsMissing) as refused:
        runtime.ensure_runtime_image(
            "ubi9", by_arch("ppc64le"), "ghcr.io/o", "pdp", base_pin=PIN, log=print
        )
    message = str(refused.value)
    assert "ghcr.io/o/pdp-wheels:py3.12-ppc64le-" in message
    assert "invoke wheels --arch ppc64le --compile" in message
    assert ".github/workflows/wheels.yml" in message


def test_a_wheels_image_not_signed_by_the_release_signer_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Present(Absent):
        def tag_exists(self, ref: str, log: Any = print, *, absent_if_denied: bool = False) -> bool:
            return True

        def manifest_digest(self, ref: str, log: Any = print) -> str:
            return "sha256:" + "c" * 64

    monkeypatch.setattr(wheels, "registry", Present())
    distrust = trust.ImageTrust(sign=lambda ref: None, verify=lambda ref: False, signer="me")
    with pytest.raises(wheels.WheelsMissing, match="not signed by me"):
        wheels.find_wheels_image(PIN, by_arch("s390x"), "reg", "pdp", trust=distrust)


def test_ghcr_denied_means_absent_for_a_probe_of_our_own_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def denied(args: Any, ref: str, **_: Any) -> str:
        calls.append(ref)
        raise registry.RegistryError(ref, image=ref, answer=GHCR_DENIED)

    monkeypatch.setattr(registry, "_imagetools", denied)
    ref = "ghcr.io/owner/power-dev-plugin-wheels:py3.12-s390x-0123456789ab"
    assert registry.tag_exists(ref, log=print, absent_if_denied=True) is False
    assert len(calls) == 1, "DENIED is an answer, not a failure to retry"


def test_denied_is_still_a_failure_where_it_does_not_mean_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def denied(args: Any, ref: str, **_: Any) -> str:
        raise registry.RegistryError(ref, image=ref, answer=GHCR_DENIED)

    monkeypatch.setattr(registry, "_imagetools", denied)
    with pytest.raises(registry.RegistryError):
        registry.with_retries(
            lambda: registry._imagetools(["inspect"], "ghcr.io/o/p:v1"),
            what="x",
            sleep=lambda _: None,
        )


def test_an_unsigned_image_is_rebuilt_in_a_dry_run_and_refused_in_a_release() -> None:
    lines: list[str] = []
    unsigned = trust.ImageTrust(sign=lambda ref: None, verify=lambda ref: False, signer="k")
    assert trust.may_reuse(unsigned, "r/x:t", "sha256:1", "runtime", lines.append) is False
    strict = trust.ImageTrust(
        sign=lambda ref: None, verify=lambda ref: False, strict=True, signer="k"
    )
    with pytest.raises(trust.UntrustedImage, match="not signed by k"):
        trust.may_reuse(strict, "r/x:t", "sha256:1", "runtime", lines.append)
    signed = trust.ImageTrust(sign=lambda ref: None, verify=lambda ref: ref == "r/x@sha256:1")
    assert trust.may_reuse(signed, "r/x:t", "sha256:1", "runtime", lines.append) is True


def test_a_reused_runtime_is_verified_by_digest_and_a_built_one_signed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    existing: set[str] = set()

    class Fake:
        def tag_exists(self, ref: str, log: Any = print, *, absent_if_denied: bool = False) -> bool:
            return ref in existing

        def manifest_digest(self, ref: str, log: Any = print) -> str:
            return "sha256:" + "d" * 64

    monkeypatch.setattr(runtime, "_registry", Fake())
    monkeypatch.setattr(runtime, "_produce_debian", lambda p, k, ref, log: existing.add(ref))
    signed: list[str] = []
    verified: list[str] = []
    keyed = trust.ImageTrust(
        sign=signed.append, verify=lambda ref: verified.append(ref) or ref in signed
    )
    first = runtime.ensure_runtime_image("debian", by_arch("amd64"), "reg", "p", trust=keyed)
    second = runtime.ensure_runtime_image("debian", by_arch("amd64"), "reg", "p", trust=keyed)
    assert (first.reused, second.reused) == (False, True)
    assert signed == [f"reg/p-runtime@{first.digest}"] == verified


def test_the_committed_base_pin_is_a_real_digest_of_ubi9_with_python_312() -> None:
    pin = bases.require_real_digest(bases.load_pin("ubi9"))
    assert pin.image.startswith("registry.access.redhat.com/ubi9/ubi:9.")
    assert pin.python == "3.12"


def test_a_placeholder_pin_is_refused_and_names_the_task_that_fills_it(tmp_path: Path) -> None:
    path = tmp_path / "base-images.json"
    path.write_text(
        json.dumps(
            {"ubi9": {"image": PIN.image, "digest": bases.PLACEHOLDER_DIGEST, "python": "3.12"}}
        )
    )
    with pytest.raises(bases.BasePinError, match="invoke base-pin"):
        bases.require_real_digest(bases.load_pin("ubi9", path), path)


def test_refreshing_the_pin_where_the_base_is_unreachable_fails_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "base-images.json"
    bases.write_pin(PIN, path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        "#!/bin/sh\necho 'ERROR: lookup registry: no such host' >&2\nexit 1\n"
    )
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    with pytest.raises(bases.BasePinError, match="cannot be inspected from this host"):
        bases.refresh_pin("ubi9", path)
    assert bases.load_pin("ubi9", path) == PIN


def test_pypi_wheels_are_binary_only_for_the_target_python_and_machine(tmp_path: Path) -> None:
    argv = wheels.download_command(PIN, by_arch("amd64"), tmp_path, wheels.REQUIREMENTS)
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.12"
    assert "cp312" in argv and "manylinux2014_x86_64" in argv


def test_keyless_identity_defaults_to_the_repositorys_wheels_and_release_workflows() -> None:
    identity = wheels.workflow_identity("ibm/power-dev-plugin")
    pattern = re.compile(identity)
    base = "https://github.com/ibm/power-dev-plugin/.github/workflows/"
    assert pattern.match(base + "wheels.yml@refs/heads/main")
    assert pattern.match(base + "release.yml@refs/tags/v1.0.0")
    # wheels.yml called by release.yml (workflow_call) signs with the tag as its ref
    assert pattern.match(base + "wheels.yml@refs/tags/v1.0.0")
    assert not pattern.match(base + "ci.yml@refs/heads/main")
    assert not pattern.match(base + "ci.yml@refs/tags/v1.0.0")
    assert not pattern.match(
        "https://github.com/someone/power-dev-plugin/.github/workflows/wheels.yml@refs/heads/x"
    )


@pytest.mark.parametrize("repository", [None, "", "not a repository"])
def test_keyless_identity_without_a_repository_asks_for_identity_or_key(
    repository: str | None,
) -> None:
    with pytest.raises(wheels.WheelsBuildError, match="--identity REGEXP"):
        wheels.workflow_identity(repository)


@pytest.mark.parametrize(
    "identity",
    [
        "wheels.yml@refs/heads/feature",
        "wheels.yml@refs/heads/main-copy",
        "wheels.yml@refs/heads/mainx",
        "release.yml@refs/heads/main",
        "release.yml@refs/tags/v1.0.0-rc1",
        "release.yml@refs/tags/x1.0.0",
        "wheels.yml@refs/tags/v1.0.0-rc1",
        "wheels.yml@refs/tags/v1.0",
        "wheels.yml@refs/heads/v1.0.0",
        "ci.yml@refs/tags/v1.0.0",
        "wheelsXyml@refs/heads/main",
        "releaseXyml@refs/tags/v1.0.0",
        "wheelsXyml@refs/tags/v1.0.0",
    ],
)
def test_the_accepted_signers_are_main_wheels_and_tagged_releases_only(identity: str) -> None:
    pattern = re.compile(wheels.workflow_identity("ibm/power-dev-plugin"))
    assert not pattern.search(
        "https://github.com/ibm/power-dev-plugin/.github/workflows/" + identity
    )


def test_the_identity_escapes_every_dot() -> None:
    pattern = re.compile(wheels.workflow_identity("ibm/power-dev-plugin"))
    assert not pattern.search(
        "https://githubXcom/ibm/power-dev-plugin/.github/workflows/wheels.yml@refs/heads/main"
    )
    assert not pattern.search(
        "https://github.com/ibm/power-dev-plugin/Xgithub/workflows/wheels.yml@refs/heads/main"
    )
    assert pattern.fullmatch(
        "https://github.com/ibm/power-dev-plugin/.github/workflows/release.yml@refs/tags/v10.2.33"
    )


def test_a_containerfile_change_changes_the_wheels_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = wheels.key_for(PIN, by_arch("ppc64le"))
    changed = tmp_path / "wheels-compile.Containerfile"
    changed.write_text(wheels.COMPILE_CONTAINERFILE.read_text() + "# one more line\n")
    monkeypatch.setattr(wheels, "COMPILE_CONTAINERFILE", changed)
    assert wheels.key_for(PIN, by_arch("ppc64le")) != before
