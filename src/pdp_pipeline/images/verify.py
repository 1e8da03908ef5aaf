"""Run the testinfra suite in tests/image against the images of a build record.

The suite runs in its own pytest process (it needs the engine, QEMU and the
registry, and its fixtures start containers); its JUnit report says, per
architecture, whether every check passed. A check that is not tied to one
architecture (the index lists exactly the built platforms) counts against all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from pdp_pipeline.images.record import BuildError, BuildRecord, load_record, save_record
from pdp_pipeline.log import Log

ROOT = Path(__file__).resolve().parents[3]
SUITE = Path("tests") / "image"
# How the suite finds its inputs; also settable as pytest options of the same meaning.
RECORD_ENV = "PDP_BUILD_RECORD"
ARCH_ENV = "PDP_IMAGE_ARCH"
_PARAMS_RE = re.compile(r"\[(?P<ids>[^\]]*)\]$")


class VerifyError(BuildError):
    """The suite could not run at all (as opposed to a check that failed)."""


def suite_command(python: str, record_path: Path, archs: Sequence[str], junit: Path) -> list[str]:
    return [
        python,
        "-m",
        "pytest",
        str(ROOT / SUITE),
        "-p",
        "no:cacheprovider",
        f"--build-record={record_path}",
        f"--image-arch={','.join(archs)}",
        f"--junitxml={junit}",
        "-ra",
        "-q",
    ]


def results_from_junit(xml_text: str, archs: Sequence[str]) -> dict[str, bool]:
    """Per architecture: True when it had at least one check and every check passed.

    Skipped checks count as not passed: a check that did not run proved nothing.
    """
    root = ET.fromstring(xml_text)
    ran: dict[str, int] = {arch: 0 for arch in archs}
    bad: set[str] = set()
    shared_failure = False
    for case in root.iter("testcase"):
        failed = any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))
        match = _PARAMS_RE.search(case.get("name", ""))
        ids = set(match["ids"].split("-")) if match else set()
        mine = [arch for arch in archs if arch in ids]
        if not mine:
            shared_failure = shared_failure or failed
            continue
        for arch in mine:
            ran[arch] += 1
            if failed:
                bad.add(arch)
    return {arch: ran[arch] > 0 and arch not in bad and not shared_failure for arch in archs}


def verify_build(record_path: Path, archs: Sequence[str], log: Log = print) -> dict[str, bool]:
    """Run the suite for `archs` of the record at record_path; True per arch that passed."""
    log(f"verify: testinfra suite for {', '.join(archs)} from {record_path}")
    with tempfile.TemporaryDirectory(prefix="pdp-verify-") as scratch:
        junit = Path(scratch) / "image-suite.xml"
        argv = suite_command(sys.executable, record_path, archs, junit)
        env = {**os.environ, RECORD_ENV: str(record_path), ARCH_ENV: ",".join(archs)}
        with subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                log("verify: " + line.rstrip())
        if not junit.is_file():
            raise VerifyError(
                f"the image suite exited with {process.returncode} without a report"
                f" (`{' '.join(argv)}`); nothing was verified"
            )
        outcome = results_from_junit(junit.read_text(), archs)
    for arch in archs:
        log(f"verify: [{arch}] {'passed' if outcome[arch] else 'FAILED'}")
    return outcome


def verify_and_record(record_path: Path, archs: Sequence[str], log: Log = print) -> BuildRecord:
    """Verify `archs` of a pushed build and write each outcome into its record."""
    record = load_record(record_path)
    if not record.pushed or not record.index_ref:
        raise VerifyError(
            f"the build in {record_path} was not pushed (--no-push); verification pulls"
            " images from the registry by digest, so there is nothing to verify"
        )
    for arch in archs:
        record.result_for(arch)  # names the architecture the record lacks
    outcome = verify_build(record_path, archs, log)
    record = load_record(record_path)  # the suite may take minutes; keep what is newest
    for result in record.archs:
        if result.platform.arch in outcome:
            result.verified = outcome[result.platform.arch]
    save_record(record, record_path)
    return record
