from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from pdp_pipeline.release import signing

INDEX = "127.0.0.1:5000/power-dev-plugin@sha256:" + "ab" * 32
LOCAL_KEY = signing.Signer(
    key=Path("/keys/cosign.key"),
    public_key=Path("/keys/cosign.pub"),
    transparency_log=False,
    insecure_registry=True,
)
KEYLESS = signing.Signer(certificate_identity_regexp="^https://github.com/o/r/")


def test_offline_key_signing_uses_the_key_and_skips_the_transparency_log() -> None:
    command = signing.sign_command(LOCAL_KEY, INDEX, {"release": "v1.2.3", "dry-run": "true"})

    assert command[:3] == ["cosign", "sign", "--yes"]
    assert command[command.index("--key") + 1] == "/keys/cosign.key"
    assert "--tlog-upload=false" in command
    assert "--allow-insecure-registry" in command
    # Each annotation is its own `-a KEY=VALUE` pair (cosign refuses `-a=K=V`).
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "-a"]
    assert pairs == ["dry-run=true", "release=v1.2.3"]
    assert command[-1] == INDEX


def test_keyless_signing_has_no_key_and_keeps_the_transparency_log() -> None:
    command = signing.sign_command(KEYLESS, INDEX)

    assert "--key" not in command
    assert not any(arg.startswith("--tlog-upload") for arg in command)
    assert "--allow-insecure-registry" not in command


def test_signing_by_tag_is_refused() -> None:
    with pytest.raises(signing.SigningError, match="by digest"):
        signing.sign_command(LOCAL_KEY, "127.0.0.1:5000/power-dev-plugin:v1.2.3")
    with pytest.raises(signing.SigningError, match="by digest"):
        signing.attest_command(LOCAL_KEY, "r/p:v1", Path("sbom.json"), "cyclonedx")


def test_attest_attaches_the_predicate_with_its_type() -> None:
    command = signing.attest_command(
        LOCAL_KEY, INDEX, Path("/out/sbom-s390x.cdx.json"), "cyclonedx"
    )

    assert command[:2] == ["cosign", "attest"]
    assert command[command.index("--type") + 1] == "cyclonedx"
    assert command[command.index("--predicate") + 1] == "/out/sbom-s390x.cdx.json"
    assert "--tlog-upload=false" in command


def test_key_verification_uses_the_public_key_offline() -> None:
    command = signing.verify_command(LOCAL_KEY, INDEX)

    assert command[command.index("--key") + 1] == "/keys/cosign.pub"
    assert "--insecure-ignore-tlog=true" in command
    attestation = signing.verify_attestation_command(LOCAL_KEY, INDEX, "cyclonedx")
    assert attestation[:2] == ["cosign", "verify-attestation"]
    assert attestation[attestation.index("--type") + 1] == "cyclonedx"


def test_keyless_verification_names_identity_and_issuer() -> None:
    command = signing.verify_command(KEYLESS, INDEX)

    assert command[command.index("--certificate-identity-regexp") + 1] == "^https://github.com/o/r/"
    assert command[command.index("--certificate-oidc-issuer") + 1] == signing.GITHUB_OIDC_ISSUER
    assert "--insecure-ignore-tlog=true" not in command


def test_keyless_verification_without_identity_is_refused() -> None:
    with pytest.raises(signing.SigningError, match="identity"):
        signing.verify_command(signing.Signer(), INDEX)


def test_throwaway_environment_has_an_empty_password_and_real_keys_keep_theirs() -> None:
    assert signing.cosign_environment({"PATH": "/bin"}, throwaway=True)["COSIGN_PASSWORD"] == ""
    assert "COSIGN_PASSWORD" not in signing.cosign_environment({"PATH": "/bin"}, throwaway=False)
    kept = signing.cosign_environment({"COSIGN_PASSWORD": "s3cret"}, throwaway=False)
    assert kept["COSIGN_PASSWORD"] == "s3cret"


def _failing_runner(
    command: Sequence[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(
        list(command), 1, stdout="", stderr="Error: no signatures found\nerror during command\n"
    )


def test_cosign_failure_reports_the_step_and_cosigns_words() -> None:
    with pytest.raises(signing.SigningError) as raised:
        signing.run_cosign(["sh", "verify"], what="verifying the signature", runner=_failing_runner)

    message = str(raised.value)
    assert message.startswith("verifying the signature failed (exit 1)")
    assert "no signatures found" in message


def test_missing_cosign_names_how_to_install_it() -> None:
    with pytest.raises(signing.SigningError, match="invoke setup"):
        signing.run_cosign(["cosign-that-is-not-installed", "sign"], what="signing")


@pytest.mark.engine
def test_throwaway_key_pair_is_fresh_each_time(tmp_path: Path) -> None:
    first = signing.throwaway_signer(tmp_path, insecure_registry=True)
    first_key = first.key.read_bytes() if first.key else b""
    second = signing.throwaway_signer(tmp_path, insecure_registry=True)

    assert second.key is not None and second.public_key is not None
    assert second.key.read_bytes() != first_key
    assert b"PRIVATE KEY" in second.key.read_bytes()
    assert b"PUBLIC KEY" in second.public_key.read_bytes()
    assert second.transparency_log is False
