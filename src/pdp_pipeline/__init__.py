"""The build, verify and release pipeline of the plugin image (never shipped in it).

Stages as packages, imports one way only (checked by tests/pipeline/test_layout.py):

    release ─► manifests ─► images ─► host ─► platforms, log
    e2e (the node suite's harness) stands alone; protos and testrun too.

`host` makes this machine able to build (engine, buildx, QEMU, registry);
`images` builds, pushes, indexes and verifies the per-architecture images;
`release` turns one build into a signed, attested, never-moving release.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Module names from before the stages were packages, still imported by suites that
# live outside the pipeline (tests/e2e, tests/manifests). `from pdp_pipeline import
# build` returns the real module (so monkeypatching still works); drop an entry once
# nothing imports the old name.
_MOVED = {
    "build": "pdp_pipeline.images.build",
    "build_record": "pdp_pipeline.images.record",
    "e2e_container": "pdp_pipeline.e2e.container",
    "e2e_manifest": "pdp_pipeline.e2e.manifest",
    "e2e_plugin_run": "pdp_pipeline.e2e.plugin_run",
    "e2e_workload": "pdp_pipeline.e2e.workload",
}


def __getattr__(name: str) -> ModuleType:
    if name in _MOVED:
        return importlib.import_module(_MOVED[name])
    raise AttributeError(f"module 'pdp_pipeline' has no attribute {name!r}")
