"""Where this host's build key lives, and who signs the runtime and wheels images."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp_pipeline.release import build_key, signing

CLONE = Path("/work/some/clone")


def test_the_build_key_lives_per_user_not_in_the_clone() -> None:
    directory = build_key.key_dir({"HOME": "/home/dev"})
    assert directory == Path("/home/dev/.local/share/power-device-plugin/build-key")
    assert CLONE not in directory.parents


def test_xdg_data_home_places_the_build_key() -> None:
    env = {"HOME": "/home/dev", "XDG_DATA_HOME": "/data"}
    assert build_key.key_dir(env) == Path("/data/power-device-plugin/build-key")


def test_a_relative_xdg_data_home_is_ignored_as_the_spec_says() -> None:
    env = {"HOME": "/home/dev", "XDG_DATA_HOME": "relative"}
    assert build_key.key_dir(env) == Path("/home/dev/.local/share/power-device-plugin/build-key")


def test_the_environment_and_the_flag_move_the_build_key(tmp_path: Path) -> None:
    env = {"HOME": "/home/dev", "PDP_BUILD_KEY_DIR": str(tmp_path / "env")}
    assert build_key.key_dir(env) == tmp_path / "env"
    assert build_key.key_dir(env, tmp_path / "flag") == tmp_path / "flag"


def test_two_clones_on_one_machine_find_one_key(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert build_key.key_dir(env) == build_key.key_dir(dict(env))


def test_wheels_and_build_sign_with_the_host_build_key_by_default(tmp_path: Path) -> None:
    directory = tmp_path / "key"
    directory.mkdir()
    (directory / signing.PRIVATE_KEY_NAME).write_text("k")
    (directory / signing.PUBLIC_KEY_NAME).write_text("p")
    signer = build_key.image_signer("127.0.0.1:5000", {}, key_directory=directory)
    assert signer.key == directory / signing.PRIVATE_KEY_NAME
    assert not signer.keyless and not signer.transparency_log and signer.insecure_registry


def test_keyless_is_asked_for_and_takes_the_anchored_workflow_identity() -> None:
    signer = build_key.image_signer(
        "ghcr.io/owner", {"GITHUB_REPOSITORY": "owner/repo"}, keyless=True
    )
    assert signer.keyless
    assert signer.certificate_identity_regexp is not None
    assert signer.certificate_identity_regexp.endswith("$")


def test_keyless_without_a_repository_or_identity_is_refused() -> None:
    with pytest.raises(signing.SigningError, match="--identity"):
        build_key.image_signer("ghcr.io/owner", {}, keyless=True)


def test_a_key_and_keyless_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(signing.SigningError, match="choose one"):
        build_key.image_signer("x", {}, key=tmp_path / "cosign.key", keyless=True)
