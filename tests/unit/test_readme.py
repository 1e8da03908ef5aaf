"""The README is the manual: it must name what the code actually has."""

from __future__ import annotations

import re
from pathlib import Path

from power_device_plugin import cli, config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_config_key() -> None:
    table_keys = set(re.findall(r"^\| `([a-z-]+)` \|", README, flags=re.MULTILINE))
    assert set(config.KNOWN_KEYS) <= table_keys


def test_readme_names_every_flag_and_its_environment_twin() -> None:
    for option in cli.OPTIONS:
        assert f"`{option.flag}`" in README or f"{option.flag} " in README, option.flag
        assert option.env in README, option.env


def test_readme_sample_config_map_parses_as_a_valid_config() -> None:
    block = README.split("config.json: |", 1)[1].split("```", 1)[0]
    parsed, warnings = config.parse_config(block, "README.md")
    assert warnings == []
    assert parsed.nx_gzip is True


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/in-venv invoke test" in README
    assert "scripts/in-venv invoke test" in (ROOT / ".ci" / "run").read_text()
    assert "scripts/in-venv invoke build --arch all" in README
