"""Whom a reused image must be signed by: a runtime or wheels image is trusted by its
signature, never by its tag name.

The images stage knows nothing of cosign (that is `release.signing`): a release hands
it an `ImageTrust`, two callables over `REF@sha256:…`, built from its signer (keyless
with the workflow's identity on GitHub, a key here). An image found in the registry
is reused only when `verify` says yes; otherwise it is rebuilt (and signed), or, in a
strict release, refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pdp_pipeline.log import Log


class UntrustedImage(Exception):
    """An image found in the registry is not signed by the expected signer (strict: refused)."""


@dataclass(frozen=True)
class ImageTrust:
    sign: Callable[[str], None]  # sign REF@sha256:… (raises if it cannot)
    verify: Callable[[str], bool]  # True when REF@sha256:… carries a good signature
    strict: bool = False  # refuse an untrusted image instead of rebuilding it
    signer: str = "?"  # who signs, for messages


def pinned(ref: str, digest: str) -> str:
    """REF@digest (a tag in REF is dropped: a signature covers a digest, not a tag)."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    return f"{name}@{digest}"


def may_reuse(trust: ImageTrust | None, ref: str, digest: str, what: str, log: Log) -> bool:
    """Whether an image found in the registry may be reused; strict refusals raise.

    Without a trust (a plain `invoke build`), content keys decide alone, as before.
    """
    if trust is None:
        return True
    target = pinned(ref, digest)
    if trust.verify(target):
        log(f"trust: {what} {target} is signed by {trust.signer}; reused")
        return True
    if trust.strict:
        raise UntrustedImage(
            f"{what} {target} (tag {ref}) is not signed by {trust.signer}; a release does not "
            "use it and builds nothing in its place. Delete that tag, or rebuild and sign it "
            "(the wheels workflow, or a dry run's build) before releasing."
        )
    log(f"trust: {what} {target} is NOT signed by {trust.signer}; not used, rebuilding it")
    return False


def sign_built(trust: ImageTrust | None, ref: str, digest: str, what: str, log: Log) -> None:
    """Sign an image this build made, right after its push."""
    if trust is None:
        return
    target = pinned(ref, digest)
    trust.sign(target)
    log(f"trust: {what} {target} signed by {trust.signer}")
