"""What a user reads when their config.json is refused or warned about, word for word,
and the edges of what is accepted (brackets in globs, durations, limits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from power_device_plugin.config import (
    MAX_UPPER_LIMIT,
    ConfigError,
    PluginConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_permissions,
    validate_glob,
)

SOURCE = "/etc/power-device-plugin/config.json"


def refusal(text: str) -> tuple[str, str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE)
    return caught.value.path, caught.value.field, caught.value.reason


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        ("[1, 2]", "<document>", "must be a JSON object, got a list"),
        ('"x"', "<document>", "must be a JSON object, got a string"),
        ("3", "<document>", "must be a JSON object, got a number"),
        ("1.5", "<document>", "must be a JSON object, got a number"),
        ("true", "<document>", "must be a JSON object, got a boolean"),
        ("null", "<document>", "must be a JSON object, got null"),
        ('{"nx-gzip": "yes"}', "nx-gzip", "must be true or false, got a string"),
        ('{"nx-gzip": []}', "nx-gzip", "must be true or false, got a list"),
        ('{"nx-gzip": {}}', "nx-gzip", "must be true or false, got an object"),
        ('{"nx-gzip": null}', "nx-gzip", "must be true or false, got null"),
        ('{"nx-gzip": 1.5}', "nx-gzip", "must be true or false, got a number"),
        ('{"permissions": "rx"}', "permissions", "'rx' has 'x'; only r, w and m are allowed"),
        (
            '{"permissions": "xqr"}',
            "permissions",
            "'xqr' has 'q', 'x'; only r, w and m are allowed",
        ),
        (
            '{"permissions": " "}',
            "permissions",
            "is empty; use a combination of r, w and m such as 'rw'",
        ),
        (
            '{"permissions": "rr"}',
            "permissions",
            "'rr' repeats a letter; each of r, w, m may appear once",
        ),
        ('{"permissions": 6}', "permissions", "must be a string, got a number"),
        (
            '{"include-devices": "/dev/dm-*"}',
            "include-devices",
            "must be a list of globs, got a string",
        ),
        ('{"include-devices": [true]}', "include-devices[0]", "must be a string, got a boolean"),
        (
            '{"include-devices": ["/dev/x", "dm-*"]}',
            "include-devices[1]",
            "'dm-*' must be an absolute path under /dev/, like '/dev/dm-*'",
        ),
        (
            '{"include-devices": ["/dev/sd[ab"]}',
            "include-devices[0]",
            "'/dev/sd[ab' has a '[' without its closing ']'",
        ),
        (
            '{"include-devices": ["/dev/a\\u0000"]}',
            "include-devices[0]",
            "'/dev/a\\x00' contains a NUL byte",
        ),
        ('{"exclude-devices": ["/dev/x", " "]}', "exclude-devices[1]", "is an empty pattern"),
        (
            '{"discovery-strategy": "sometimes"}',
            "discovery-strategy",
            "'sometimes' is not one of 'default', 'time'",
        ),
        (
            '{"scan-interval": "soon"}',
            "scan-interval",
            "'soon' is not a duration; write a number and a unit (ms, s, m, h), "
            "for example '30s', '10m', '2h' or '1m30s'",
        ),
        ('{"scan-interval": "500ms"}', "scan-interval", "'500ms' is shorter than 1s"),
        ('{"scan-interval": "0.999s"}', "scan-interval", "'0.999s' is shorter than 1s"),
        (
            '{"scan-interval": ""}',
            "scan-interval",
            "is empty; write a duration such as '30s', '10m' or '2h'",
        ),
        ('{"scan-interval": 30}', "scan-interval", "must be a string, got a number"),
        ('{"upper-limit": -1}', "upper-limit", "must not be negative, got -1"),
        ('{"upper-limit": 1.5}', "upper-limit", "must be a whole number, got a number"),
        ('{"upper-limit": true}', "upper-limit", "must be a whole number, got a boolean"),
        ('{"upper-limit": 1001}', "upper-limit", "must be at most 1000, got 1001"),
        ('{"grant-mode": "some"}', "grant-mode", "'some' is not one of 'all', 'per-device'"),
        ('{"grant-mode": 2}', "grant-mode", "must be a string, got a number"),
        ('{"cdi": "x"}', "cdi", "'x' is not one of 'off', 'both', 'only', 'auto'"),
        (
            '{"device-owner": 5}',
            "device-owner",
            'must be an object like {"uid": 1000}, got a number',
        ),
        (
            '{"device-owner": {"uid": -1}}',
            "device-owner.uid",
            "must be between 0 and 4294967294, got -1",
        ),
    ],
)
def test_a_refused_config_says_exactly_what_was_wrong_and_where(
    text: str, field: str, reason: str
) -> None:
    assert refusal(text) == (SOURCE, field, reason)


def test_invalid_json_names_the_parsers_complaint_and_position() -> None:
    assert refusal('{\n  "nx-gzip": true,\n}') == (
        SOURCE,
        "<document>",
        "not valid JSON: Expecting property name enclosed in double quotes at line 3 column 1",
    )


def test_config_error_text_is_path_field_and_reason() -> None:
    error = ConfigError("/a.json", "grant-mode", "is wrong")
    assert (error.path, error.field, error.reason) == ("/a.json", "grant-mode", "is wrong")
    assert str(error) == "/a.json: grant-mode: is wrong"


def test_a_missing_file_names_the_file_and_what_to_check(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.path, caught.value.field, caught.value.reason) == (
        str(path),
        "<document>",
        "does not exist; nothing is advertised until a valid config is there "
        "(is the ConfigMap mounted, and does it have the key config.json?)",
    )


def test_an_unreadable_file_names_the_file_and_the_systems_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)  # a directory
    assert (caught.value.path, caught.value.field, caught.value.reason) == (
        str(tmp_path),
        "<document>",
        "cannot be read: Is a directory",
    )


def test_a_non_utf8_file_names_the_file_and_the_decoders_reason(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"permissions": "\xff"}')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.path, caught.value.field, caught.value.reason) == (
        str(path),
        "<document>",
        "not UTF-8 text: invalid start byte",
    )


def test_a_utf8_file_with_non_ascii_text_is_read(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"colour": "bleu \u00e9"}', encoding="utf-8")
    config, warnings = load_config(path)
    assert config == PluginConfig()
    assert warnings == [f"{path}: unknown key 'colour' ignored"]


def test_an_unknown_key_warning_names_the_file_the_key_and_the_closest_known_key() -> None:
    _, warnings = parse_config('{"upper_limit": 2, "grant-mode": "all", "zzz": 1}', SOURCE)
    assert warnings == [
        f"{SOURCE}: unknown key 'upper_limit' ignored (did you mean 'upper-limit'?)",
        f"{SOURCE}: unknown key 'zzz' ignored",
    ]


def test_upper_limit_without_grant_mode_warns_in_full() -> None:
    _, warnings = parse_config('{"upper-limit": 3}', SOURCE)
    assert warnings == [
        f"{SOURCE}: upper-limit 3 is set without grant-mode, so grant-mode 'all' applies: "
        "3 units in total, each granting every selected device (IBM's per-device limit, "
        "as 3 containers sharing the device set). With grant-mode 'per-device' it would be "
        "3 units per device (each device shared by at most that many containers). "
        "Set grant-mode to say which."
    ]


@pytest.mark.parametrize(
    ("limit", "expected"), [(0, None), (1, 1), (MAX_UPPER_LIMIT, MAX_UPPER_LIMIT)]
)
def test_upper_limit_accepts_zero_up_to_the_cap(limit: int, expected: int | None) -> None:
    text = json.dumps({"upper-limit": limit, "grant-mode": "per-device"})
    assert parse_config(text, SOURCE)[0].upper_limit == expected


def test_upper_limit_null_is_unset_like_a_missing_key() -> None:
    assert parse_config('{"upper-limit": null}', SOURCE) == (PluginConfig(), [])


def test_null_glob_lists_and_owner_are_unset() -> None:
    text = '{"include-devices": null, "exclude-devices": null, "device-owner": null}'
    assert parse_config(text, SOURCE) == (PluginConfig(), [])


def test_choices_are_read_with_surrounding_blanks_removed() -> None:
    text = '{"grant-mode": " per-device ", "discovery-strategy": "time ", "cdi": " off"}'
    config, _ = parse_config(text, SOURCE)
    assert (config.grant_mode, config.discovery_strategy, config.cdi) == (
        "per-device",
        "time",
        "off",
    )


def test_device_owner_is_read() -> None:
    config, _ = parse_config('{"device-owner": {"uid": 1000, "gid": 6, "mode": "0660"}}', SOURCE)
    assert (config.device_owner.uid, config.device_owner.gid, config.device_owner.mode) == (
        1000,
        6,
        0o660,
    )


@pytest.mark.parametrize(
    "glob", ["/dev/sd[ab]", "/dev/[a][b]*", "/dev/sd[[a]]", "/dev/sd]a", "/dev/sd[a]]"]
)
def test_globs_with_closed_brackets_are_accepted(glob: str) -> None:
    assert validate_glob(f" {glob} ") == glob


@pytest.mark.parametrize("glob", ["/dev/[[a]", "/dev/sd]a[", "/dev/[a][b"])
def test_globs_with_an_unclosed_bracket_are_refused(glob: str) -> None:
    with pytest.raises(ValueError, match="without its closing"):
        validate_glob(glob)


def test_a_glob_outside_dev_is_refused_even_when_it_only_looks_close() -> None:
    for glob in ("/dev", "dev/x", "/devices/x", "//dev/x"):
        with pytest.raises(ValueError, match="under /dev/"):
            validate_glob(glob)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (" 30s ", 30.0),
        ("1s", 1.0),
        ("1.5h", 5400.0),
        ("1h1m1s", 3661.0),
        ("2m500ms", 120.5),
        ("0.25m", 15.0),
    ],
)
def test_durations_add_up_every_part(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", "s", "1m x", "1d", "-1s", "30s!"])
def test_durations_without_a_known_unit_everywhere_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_a_one_second_scan_interval_is_the_shortest_accepted() -> None:
    assert parse_config('{"scan-interval": "1s"}', SOURCE)[0].scan_interval_seconds == 1.0


@pytest.mark.parametrize(("given", "normalised"), [(" Rw ", "rw"), ("mwr", "rwm"), ("w", "w")])
def test_permissions_are_stripped_lowered_and_ordered(given: str, normalised: str) -> None:
    assert parse_permissions(given) == normalised
