"""`--arch` selectors and the workflow matrix, both read from the platform list."""

from __future__ import annotations

import json

import pytest

from pdp_pipeline import platforms
from pdp_pipeline.platforms import PLATFORMS


def test_native_selects_this_hosts_platform() -> None:
    assert platforms.select("native") == (platforms.native(),)


def test_native_joins_a_list_without_duplicates() -> None:
    here = platforms.native()
    chosen = platforms.select(f"native,{here.arch}")
    assert chosen == (here,)


def test_native_is_named_when_an_architecture_is_unknown() -> None:
    with pytest.raises(platforms.UnknownArchError, match="all, native"):
        platforms.select("nope")


def test_the_matrix_has_one_leg_per_platform_in_list_order() -> None:
    legs = platforms.workflow_matrix()
    assert [leg["arch"] for leg in legs] == [p.arch for p in PLATFORMS]


def test_a_leg_compiles_exactly_when_pypi_has_no_wheels_and_gets_the_compile_budget() -> None:
    for p, leg in zip(PLATFORMS, platforms.workflow_matrix(), strict=True):
        assert leg["compile"] is (not p.pypi_wheels)
        if leg["compile"]:
            assert leg["timeout"] == platforms.COMPILE_MINUTES
            # an attempt stops in time to export and save its objects within the job's limit
            assert 0 < int(str(leg["attempt_timeout"])) < platforms.COMPILE_MINUTES * 60
        else:
            assert leg["timeout"] == platforms.PYPI_WHEELS_MINUTES
            assert leg["attempt_timeout"] == 0
        # GitHub's ceiling for one job
        assert int(str(leg["timeout"])) <= 360


def test_the_matrix_json_is_one_line_github_s_fromjson_reads() -> None:
    text = platforms.workflow_matrix_json("native")
    assert "\n" not in text
    assert json.loads(text) == {"include": platforms.workflow_matrix("native")}
    assert [leg["arch"] for leg in json.loads(text)["include"]] == [platforms.native().arch]


def test_the_matrix_refuses_an_unknown_architecture() -> None:
    with pytest.raises(platforms.UnknownArchError):
        platforms.workflow_matrix("nope")
