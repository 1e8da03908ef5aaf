"""cosign: sign the release index, attest SBOMs, and verify both.

Two ways to sign, one set of command lines:
- keyless, in GitHub Actions: cosign takes the workflow's OIDC token
  (`id-token: write`), gets a short-lived certificate and logs the signature in
  the public transparency log; verifying names the workflow's identity;
- with a key file, locally: `COSIGN_PASSWORD` unlocks the key. A dry run makes
  a throwaway key pair with an empty password and keeps everything offline
  (no transparency log), so it runs on a host that reaches no service at all.
Command lines are built by pure functions; `run_cosign` is the one place that
executes them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# GitHub's OIDC issuer, which keyless signatures made in Actions carry.
GITHUB_OIDC_ISSUER = "https://token.actions.githubusercontent.com"

PRIVATE_KEY_NAME = "cosign.key"
PUBLIC_KEY_NAME = "cosign.pub"


class SigningError(Exception):
    """cosign failed or is missing; the message names the command and cosign's answer."""


@dataclass(frozen=True)
class Signer:
    """How to sign and how to verify what was signed.

    `key` is None for keyless signing. `transparency_log` False keeps signing
    and verifying offline (a local key only: keyless needs the log).
    """

    key: Path | None = None
    public_key: Path | None = None
    transparency_log: bool = True
    insecure_registry: bool = False
    # Keyless verification: which workflow identity and issuer to accept.
    certificate_identity_regexp: str | None = None
    oidc_issuer: str = GITHUB_OIDC_ISSUER
    throwaway: bool = False  # a key pair with an empty password (a dry run's, this host's)
    # What the key is, for logs ("this host's build key"); "" says it from the fields.
    label: str = ""

    @property
    def keyless(self) -> bool:
        return self.key is None

    def describe(self) -> str:
        """One phrase for logs and the release summary."""
        if self.keyless:
            return "keyless (OIDC certificate, transparency log)"
        log = "transparency log" if self.transparency_log else "no transparency log"
        if self.label:
            return f"{self.label} ({log})"
        if self.throwaway:
            return f"throwaway key pair of this dry run ({log})"
        return f"key {self.key.name if self.key else '?'} ({log})"


def _common_flags(signer: Signer, *, signing: bool) -> list[str]:
    flags: list[str] = []
    if signing:
        if signer.key is not None:
            flags += ["--key", str(signer.key)]
        if not signer.transparency_log:
            flags.append("--tlog-upload=false")
    else:
        if signer.keyless:
            if not signer.certificate_identity_regexp:
                raise SigningError(
                    "keyless verification needs the signer's identity (certificate_identity_regexp "
                    "such as the release workflow's URL); nothing verified"
                )
            flags += [
                "--certificate-identity-regexp",
                signer.certificate_identity_regexp,
                "--certificate-oidc-issuer",
                signer.oidc_issuer,
            ]
        else:
            flags += ["--key", str(signer.public_key or signer.key)]
        if not signer.transparency_log:
            flags.append("--insecure-ignore-tlog=true")
    if signer.insecure_registry:
        flags.append("--allow-insecure-registry")
    return flags


def _require_digest(ref: str) -> None:
    # Signing a tag signs whatever the tag points to at that instant; a digest
    # is the only reference that names exactly the verified image.
    if "@sha256:" not in ref:
        raise SigningError(f"{ref}: sign and attest by digest (REF@sha256:…), not by tag")


def generate_key_pair_command(prefix: Path) -> list[str]:
    """Writes `<prefix>.key` and `<prefix>.pub` (password from COSIGN_PASSWORD)."""
    return ["cosign", "generate-key-pair", "--output-key-prefix", str(prefix)]


def sign_command(
    signer: Signer, ref: str, annotations: Mapping[str, str] | None = None
) -> list[str]:
    """`cosign sign` of one image or index, by digest, without prompts."""
    _require_digest(ref)
    notes = [arg for k, v in sorted((annotations or {}).items()) for arg in ("-a", f"{k}={v}")]
    return ["cosign", "sign", "--yes", *_common_flags(signer, signing=True), *notes, ref]


def attest_command(signer: Signer, ref: str, predicate: Path, predicate_type: str) -> list[str]:
    """`cosign attest`: attach a signed in-toto statement with `predicate` to `ref`."""
    _require_digest(ref)
    return [
        "cosign",
        "attest",
        "--yes",
        *_common_flags(signer, signing=True),
        "--type",
        predicate_type,
        "--predicate",
        str(predicate),
        ref,
    ]


def verify_command(signer: Signer, ref: str) -> list[str]:
    """`cosign verify`: the signature on `ref` checks out against the signer."""
    return ["cosign", "verify", *_common_flags(signer, signing=False), "--output", "json", ref]


def verify_attestation_command(signer: Signer, ref: str, predicate_type: str) -> list[str]:
    """`cosign verify-attestation` of the attestations of one type on `ref`."""
    return [
        "cosign",
        "verify-attestation",
        *_common_flags(signer, signing=False),
        "--type",
        predicate_type,
        "--output",
        "json",
        ref,
    ]


def cosign_environment(base: Mapping[str, str], *, throwaway: bool) -> dict[str, str]:
    """The environment cosign runs in.

    A throwaway key has an empty password; a real key's password comes from
    COSIGN_PASSWORD in the caller's environment and is never invented here.
    """
    env = dict(base)
    if throwaway:
        env["COSIGN_PASSWORD"] = ""
    return env


Runner = Callable[[Sequence[str], Mapping[str, str]], "subprocess.CompletedProcess[str]"]


def _subprocess_runner(
    command: Sequence[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), env=dict(env), capture_output=True, text=True, check=False, timeout=300
    )


def run_cosign(
    command: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    runner: Runner = _subprocess_runner,
) -> str:
    """Runs one cosign command; returns its stdout or raises with cosign's own words."""
    if shutil.which(command[0]) is None:
        raise SigningError(
            f"{what}: `{command[0]}` is not installed (on Debian: `invoke setup` installs it "
            "from trixie; in GitHub Actions: sigstore/cosign-installer)"
        )
    result = runner(command, os.environ if env is None else env)
    if result.returncode != 0:
        answer = " | ".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise SigningError(
            f"{what} failed (exit {result.returncode}): {answer or 'cosign printed nothing'}"
        )
    return result.stdout


def throwaway_signer(
    directory: Path, *, insecure_registry: bool, runner: Runner = _subprocess_runner
) -> Signer:
    """A fresh key pair under `directory` (replacing any older one), offline settings.

    Fresh every time, so a dry run never signs with a key that could have been
    copied anywhere, and the verification proves this run's signature.
    """
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / "cosign"
    for name in (PRIVATE_KEY_NAME, PUBLIC_KEY_NAME):
        (directory / name).unlink(missing_ok=True)
    run_cosign(
        generate_key_pair_command(prefix),
        what="generating the dry run's throwaway key pair",
        env=cosign_environment(os.environ, throwaway=True),
        runner=runner,
    )
    return Signer(
        key=directory / PRIVATE_KEY_NAME,
        public_key=directory / PUBLIC_KEY_NAME,
        transparency_log=False,
        insecure_registry=insecure_registry,
        throwaway=True,
    )
