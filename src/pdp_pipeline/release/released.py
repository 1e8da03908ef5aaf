"""Whether the release a run would make is already in the registry (a rerun is a no-op).

A second `invoke release` of a tag on the same commit must not build: provenance
(build ID, timestamps) makes every build's index digest new, so a rebuild could
only stop at `ReleaseMoved`. Before anything is built, the release tags are
looked up. The release is done when every tag names one and the same index, the
index carries this commit (and this release) in its labels, and its signature
verifies with the release's signer. When no tag exists, or only some do (a
first run, or one that stopped before tagging everything), the run goes on as
before. When every tag exists but they disagree (another digest, commit or
release, or a signature that does not verify), the run refuses; nothing is
re-tagged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pdp_pipeline.images.tags import LABEL_REVISION
from pdp_pipeline.release.options import LABEL_RELEASE
from pdp_pipeline.release.published import ReleaseMoved


def already_released(
    repository: str,
    tags: Sequence[str],
    commit: str,
    release: str,
    *,
    tag_digest: Callable[[str], str | None],
    labels: Callable[[str], Mapping[str, str]] | None,
    verify: Callable[[str], bool] | None,
) -> str | None:
    """The index digest if `tags` already publish this release, None if it is still to do.

    `tag_digest(ref)` is the digest a tag names (None: no such tag); `labels(ref)`
    the labels of the image `repository@digest` names (None: not looked at; the
    commit tag is then the only mark of the commit); `verify(ref)` whether the
    signature on `repository@digest` verifies with the release's signer (None:
    this signer cannot verify, so the release cannot be proven done).
    Raises ReleaseMoved when every tag exists but they do not name one signed
    index of this commit and release.
    """
    found = {tag: tag_digest(f"{repository}:{tag}") for tag in tags}
    if not tags or any(digest is None for digest in found.values()):
        return None
    digests = {digest for digest in found.values() if digest is not None}
    if len(digests) != 1:
        named = "; ".join(f"{repository}:{tag} names {digest}" for tag, digest in found.items())
        raise ReleaseMoved(
            f"the release tags disagree: {named}. Nothing was built and no tag was repointed."
        )
    (digest,) = digests
    ref = f"{repository}@{digest}"
    if labels is not None:
        seen = labels(ref)
        wrong = [
            f"{name} is {seen[name]!r}, this run is {want!r}"
            for name, want in ((LABEL_REVISION, commit), (LABEL_RELEASE, release))
            if seen.get(name) not in (None, want)
        ]
        if wrong:
            raise ReleaseMoved(
                f"every release tag names {ref}, but that index is not this release: "
                + "; ".join(wrong)
                + ". Nothing was built and no tag was repointed."
            )
    if verify is None:
        raise ReleaseMoved(
            f"every release tag names {ref}, but this signer cannot verify its signature "
            "(keyless with no certificate identity); the release cannot be proven done. "
            "Nothing was built and no tag was repointed."
        )
    if not verify(ref):
        raise ReleaseMoved(
            f"every release tag names {ref}, but its signature does not verify with the "
            "release's signer. Nothing was built and no tag was repointed; delete the tags "
            "only if that index is not the release."
        )
    return digest
