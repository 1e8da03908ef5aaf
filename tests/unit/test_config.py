from __future__ import annotations

import json
from pathlib import Path

import pytest

from power_device_plugin.config import (
    DEFAULT_SCAN_INTERVAL_SECONDS,
    GRANT_ALL,
    GRANT_PER_DEVICE,
    ConfigError,
    PluginConfig,
    load_config,
    parse_config,
)


def parse(doc: object) -> tuple[PluginConfig, list[str]]:
    return parse_config(json.dumps(doc), "/etc/power-device-plugin/config.json")


def test_missing_file_is_an_error_naming_the_file_not_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    assert caught.value.field == "<document>"
    assert "does not exist" in caught.value.reason
    assert "nothing is advertised" in caught.value.reason


def test_upper_limit_without_grant_mode_warns_how_it_maps_in_each_mode() -> None:
    config, warnings = parse({"upper-limit": 8})
    assert config.upper_limit == 8
    (warning,) = warnings
    assert "upper-limit 8 is set without grant-mode" in warning
    assert "'all' applies: 8 units in total" in warning
    assert "'per-device' it would be 8 units per device" in warning


@pytest.mark.parametrize(
    "doc", [{"upper-limit": 8, "grant-mode": "all"}, {"upper-limit": 0}, {"grant-mode": "all"}]
)
def test_upper_limit_with_grant_mode_or_unset_does_not_warn(doc: object) -> None:
    assert parse(doc)[1] == []


def test_defaults_are_ibm_semantics_with_rw_and_no_limit() -> None:
    config, _ = parse({})
    assert config.nx_gzip is False
    assert config.permissions == "rw"
    assert config.include_devices == ()
    assert config.exclude_devices == ()
    assert config.discovery_strategy == "default"
    assert config.scan_interval_seconds == DEFAULT_SCAN_INTERVAL_SECONDS
    assert config.upper_limit is None
    assert config.grant_mode == GRANT_ALL
    assert config.cdi == "off"


@pytest.mark.parametrize(
    ("doc", "mode"),
    [
        ({}, "off"),
        ({"cdi": "auto"}, "off"),
        ({"device-owner": {"uid": 1000}}, "both"),
        ({"device-owner": {"mode": "0600"}, "cdi": "auto"}, "both"),
        ({"device-owner": {}}, "off"),
        ({"cdi": "both"}, "both"),
        ({"cdi": "only"}, "only"),
        ({"cdi": "only", "device-owner": {"gid": 6}}, "only"),
    ],
)
def test_the_cdi_default_names_cdi_devices_only_when_a_device_owner_needs_them(
    doc: dict[str, object], mode: str
) -> None:
    config, warnings = parse(doc)
    assert config.cdi == mode
    assert warnings == []


def test_a_device_owner_that_cdi_off_keeps_from_applying_is_warned_about() -> None:
    config, warnings = parse({"cdi": "off", "device-owner": {"uid": 1000}})
    assert config.cdi == "off"
    (warning,) = warnings
    assert "device-owner is set but cdi is 'off'" in warning
    assert "ignored" in warning


def test_ibm_configmap_document_is_accepted_without_warnings() -> None:
    config, warnings = parse({"nx-gzip": True, "permissions": "rw"})
    assert config.nx_gzip is True
    assert config.permissions == "rw"
    assert warnings == []


def test_every_key_is_read() -> None:
    config, warnings = parse(
        {
            "nx-gzip": True,
            "permissions": "rwm",
            "include-devices": ["/dev/dm-*", "/dev/mapper/mpath*"],
            "exclude-devices": ["/dev/sda*"],
            "discovery-strategy": "time",
            "scan-interval": "10m",
            "upper-limit": 4,
            "grant-mode": "per-device",
        }
    )
    assert warnings == []
    assert config == PluginConfig(
        nx_gzip=True,
        permissions="rwm",
        include_devices=("/dev/dm-*", "/dev/mapper/mpath*"),
        exclude_devices=("/dev/sda*",),
        discovery_strategy="time",
        scan_interval_seconds=600.0,
        upper_limit=4,
        grant_mode=GRANT_PER_DEVICE,
    )


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("r", "r"), ("RW", "rw"), ("wr", "rw"), ("mr", "rm"), ("M", "m"), ("wmr", "rwm")],
)
def test_permissions_accept_any_case_and_order(given: str, normalised: str) -> None:
    assert parse({"permissions": given})[0].permissions == normalised


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("30s", 30.0), ("10m", 600.0), ("2h", 7200.0), ("1m30s", 90.0), ("1500ms", 1.5)],
)
def test_scan_interval_reads_go_style_durations(given: str, seconds: float) -> None:
    assert parse({"scan-interval": given})[0].scan_interval_seconds == seconds


def test_upper_limit_zero_means_the_mode_default() -> None:
    assert parse({"upper-limit": 0})[0].upper_limit is None


def test_duplicate_globs_are_kept_once() -> None:
    config, _ = parse({"include-devices": ["/dev/dm-*", " /dev/dm-* "]})
    assert config.include_devices == ("/dev/dm-*",)


def test_unknown_keys_warn_with_a_suggestion_and_are_ignored() -> None:
    config, warnings = parse({"nx_gzip": True, "colour": "blue"})
    assert config == PluginConfig()
    assert len(warnings) == 2
    assert "'nx_gzip'" in warnings[0]
    assert "did you mean 'nx-gzip'" in warnings[0]
    assert "'colour'" in warnings[1]
    assert all("/etc/power-device-plugin/config.json" in w for w in warnings)


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ('{"nx-gzip": true,', "<document>", "not valid JSON"),
        ("[1, 2]", "<document>", "must be a JSON object"),
        ("", "<document>", "not valid JSON"),
        ('{"nx-gzip": "yes"}', "nx-gzip", "must be true or false"),
        ('{"nx-gzip": 1}', "nx-gzip", "must be true or false"),
        ('{"permissions": "rx"}', "permissions", "only r, w and m"),
        ('{"permissions": ""}', "permissions", "is empty"),
        ('{"permissions": "rr"}', "permissions", "repeats a letter"),
        ('{"permissions": 6}', "permissions", "must be a string"),
        ('{"include-devices": "/dev/dm-*"}', "include-devices", "must be a list"),
        ('{"include-devices": [7]}', "include-devices[0]", "must be a string"),
        ('{"include-devices": ["dm-*"]}', "include-devices[0]", "under /dev/"),
        ('{"include-devices": ["/etc/*"]}', "include-devices[0]", "under /dev/"),
        ('{"include-devices": ["/dev/sd[ab"]}', "include-devices[0]", "without its closing"),
        ('{"exclude-devices": ["/dev/x", ""]}', "exclude-devices[1]", "empty pattern"),
        ('{"discovery-strategy": "sometimes"}', "discovery-strategy", "is not one of"),
        ('{"scan-interval": "soon"}', "scan-interval", "not a duration"),
        ('{"scan-interval": 30}', "scan-interval", "must be a string"),
        ('{"scan-interval": "500ms"}', "scan-interval", "shorter than 1s"),
        ('{"scan-interval": ""}', "scan-interval", "is empty"),
        ('{"upper-limit": -1}', "upper-limit", "must not be negative"),
        ('{"upper-limit": 1.5}', "upper-limit", "whole number"),
        ('{"upper-limit": true}', "upper-limit", "whole number"),
        ('{"upper-limit": "3"}', "upper-limit", "whole number"),
        ('{"upper-limit": 100000}', "upper-limit", "at most 1000"),
        ('{"grant-mode": "some"}', "grant-mode", "is not one of"),
    ],
)
def test_invalid_config_is_refused_naming_file_field_and_reason(
    text: str, field: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/power-device-plugin/config.json")
    error = caught.value
    assert error.path == "/etc/power-device-plugin/config.json"
    assert error.field == field
    assert reason in error.reason
    assert str(error) == f"{error.path}: {field}: {error.reason}"


def test_unreadable_config_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)  # a directory


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"permissions": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"grant-mode": "per-device", "upper-limit": 2}))
    config, warnings = load_config(path)
    assert (config.grant_mode, config.upper_limit, warnings) == (GRANT_PER_DEVICE, 2, [])
