"""The build, verify and release pipeline of the plugin image (never shipped in it).

Stages as packages, imports one way only (checked by tests/pipeline/test_layout.py):

    release ─► manifests ─► images ─► host ─► platforms, log
    e2e (the node suite's harness) stands alone; protos and testrun too.

`host` makes this machine able to build (engine, buildx, QEMU, registry);
`images` builds, pushes, indexes and verifies the per-architecture images;
`release` turns one build into a signed, attested, never-moving release.
"""

from __future__ import annotations
