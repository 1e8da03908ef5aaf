"""Who signs the runtime and wheels images a build makes, and where this host's key lives.

A build (and a dry run, and `invoke wheels` by default) signs what it makes with the
*host's build key*: a cosign key pair with an empty password, made on first use and kept
per machine and user, not per clone. Every clone on one machine, and every CI run whose
cache carries the key, then verifies and reuses the same runtimes: same runtime digests,
same plugin image digests. A release (or `invoke wheels --keyless`, the wheels workflow on
main) signs with the release's identity instead; `--key FILE` names any other key.

Where the key lives, first match wins:
1. `--build-key-dir DIR` (the tasks' flag) or `PDP_BUILD_KEY_DIR`;
2. `$XDG_DATA_HOME/power-device-plugin/build-key`;
3. `~/.local/share/power-device-plugin/build-key`.
In CI, put it beside the cached registry storage (`PDP_BUILD_KEY_DIR=.cache/build-key`) so
the next run's cache carries it with the images it signed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pdp_pipeline.images import registry, wheels
from pdp_pipeline.release import signing

KEY_DIR_ENV = "PDP_BUILD_KEY_DIR"
APP_DIR = "power-device-plugin"
KEY_DIR_NAME = "build-key"


def key_dir(env: Mapping[str, str], explicit: str | Path | None = None) -> Path:
    """The directory of this host's build key (see the module's docstring for the order)."""
    chosen = explicit or env.get(KEY_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    data = env.get("XDG_DATA_HOME")
    base = Path(data) if data and Path(data).is_absolute() else None
    if base is None:
        home = env.get("HOME") or str(Path.home())
        base = Path(home) / ".local" / "share"
    return base / APP_DIR / KEY_DIR_NAME


def host_build_signer(
    registry_name: str, env: Mapping[str, str], directory: Path | None = None
) -> signing.Signer:
    """This host's kept build key (made on first use, never per clone): what signs the
    runtime and wheels images built here, so a later build or a dry run verifies them."""
    directory = directory or key_dir(env)
    key = directory / signing.PRIVATE_KEY_NAME
    if not key.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        # Made under a temporary prefix and renamed: two builds starting at once on a
        # fresh host never see half a key pair (the last rename wins, whole).
        partial = directory / f".partial-{os.getpid()}"
        signing.run_cosign(
            signing.generate_key_pair_command(partial),
            what=f"making this host's build key in {directory}",
            env=signing.cosign_environment(env, throwaway=True),
        )
        partial.with_suffix(".pub").replace(directory / signing.PUBLIC_KEY_NAME)
        partial.with_suffix(".key").replace(key)
    return signing.Signer(
        key=key,
        public_key=directory / signing.PUBLIC_KEY_NAME,
        transparency_log=False,
        insecure_registry=registry.is_loopback_registry(registry_name),
        throwaway=True,  # empty password, like the throwaway key
        label=f"this host's build key ({key})",
    )


def image_signer(
    registry_name: str,
    env: Mapping[str, str],
    *,
    key: Path | None = None,
    keyless: bool = False,
    identity: str | None = None,
    key_directory: Path | None = None,
) -> signing.Signer:
    """The signer of runtime and wheels images: one rule for `build` and `wheels`.

    The host's build key unless a release identity is asked for: `key` (a key file,
    COSIGN_PASSWORD) or `keyless` (the workflow's OIDC identity; `identity` is the regexp
    existing images must match, by default this repository's wheels and release workflows).
    """
    if key is not None and keyless:
        raise signing.SigningError("--key and --keyless name two signers; choose one")
    insecure = registry.is_loopback_registry(registry_name)
    if key is not None:
        public = key.with_suffix(".pub")
        return signing.Signer(
            key=key,
            public_key=public if public.is_file() else None,
            transparency_log=not insecure,
            insecure_registry=insecure,
        )
    if keyless:
        try:
            regexp = identity or wheels.workflow_identity(env.get("GITHUB_REPOSITORY"))
        except wheels.WheelsBuildError as error:
            raise signing.SigningError(str(error)) from None
        return signing.Signer(certificate_identity_regexp=regexp, insecure_registry=insecure)
    return host_build_signer(registry_name, env, key_directory)
