from __future__ import annotations

import json

import pytest

from pdp_pipeline.images import record as build_record
from pdp_pipeline.images import runtime, summary
from pdp_pipeline.platforms import by_arch

DIGESTS = ["sha256:" + c * 64 for c in "012"]
# Three platforms as examples (not the list we ship: the table takes any).
SAMPLE = tuple(by_arch(a) for a in ("amd64", "ppc64le", "s390x"))


def _record(verified: list[bool | None], fell_back: bool = False) -> build_record.BuildRecord:
    return build_record.BuildRecord(
        tag="v1.2.3-1-gabc1234",
        version="1.2.3.post1+gabc1234",
        revision="abcdef0123456789" + "0" * 24,
        index_ref="127.0.0.1:5000/pdp:v1.2.3-1-gabc1234",
        index_digest="sha256:" + "f" * 64,
        base="debian",
        fell_back=fell_back,
        requested_base="ubi9" if fell_back else "debian",
        archs=[
            build_record.ArchResult(
                platform=p,
                image_ref=f"127.0.0.1:5000/pdp:v1.2.3-1-gabc1234-{p.arch}",
                digest=DIGESTS[i],
                size=[70 * 1024 * 1024, 512, None][i],
                runtime=runtime.RuntimeImage(
                    "debian", p, f"rt:{p.arch}", DIGESTS[i], "k", i != 2, "debian:bookworm"
                ),
                verified=verified[i],
            )
            for i, p in enumerate(SAMPLE)
        ],
    )


def _rows(text: str) -> dict[str, list[str]]:
    return {
        line.split()[0]: line.split() for line in text.splitlines() if line.startswith("linux/")
    }


def test_the_table_has_one_row_per_architecture_with_digest_size_runtime_and_result() -> None:
    rows = _rows(summary.table(_record([True, False, None])))
    assert rows["linux/amd64"] == ["linux/amd64", DIGESTS[0], "70.0", "MiB", "reused", "passed"]
    assert rows["linux/ppc64le"] == ["linux/ppc64le", DIGESTS[1], "512", "B", "reused", "FAILED"]
    assert rows["linux/s390x"] == ["linux/s390x", DIGESTS[2], "unknown", "built", "not", "run"]


def test_the_table_header_names_every_column() -> None:
    header = [line for line in summary.table(_record([None] * 3)).splitlines() if "digest" in line]
    assert header and header[0].split() == list(summary.COLUMNS)


def test_the_table_says_loudly_when_the_base_fell_back() -> None:
    assert "FELL BACK from ubi9" in summary.table(_record([None] * 3, fell_back=True))
    assert "FELL BACK" not in summary.table(_record([None] * 3, fell_back=False))


def test_a_no_push_build_says_there_is_no_index() -> None:
    record = _record([None] * 3)
    record.index_ref = record.index_digest = None
    assert "index: none" in summary.table(record)


def test_the_json_holds_the_same_facts_as_the_table() -> None:
    data = json.loads(summary.to_json(_record([True, True, False], fell_back=True)))
    assert data["fell_back"] is True and data["requested_base"] == "ubi9"
    assert data["index"]["digest"] == "sha256:" + "f" * 64
    assert [i["architecture"] for i in data["images"]] == [p.platform for p in SAMPLE]
    assert [i["verification"] for i in data["images"]] == ["passed", "passed", "FAILED"]
    assert [i["runtime"] for i in data["images"]] == ["reused", "reused", "built"]
    assert data["all_verified"] is False


@pytest.mark.parametrize(
    ("verified", "everything"),
    [([True] * 3, True), ([True, True, None], False), ([True, False, True], False)],
)
def test_all_verified_only_when_every_arch_passed(
    verified: list[bool | None], everything: bool
) -> None:
    assert summary.as_dict(_record(verified))["all_verified"] is everything


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "unknown"), (0, "0 B"), (1023, "1023 B"), (2048, "2.0 KiB"), (3 << 30, "3.00 GiB")],
)
def test_sizes_are_shown_in_binary_units(size: int | None, text: str) -> None:
    assert summary.human_size(size) == text
