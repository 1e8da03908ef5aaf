"""The release base, pinned by digest in one file: `containers/base-images.json`.

The build reads the pin from there and nowhere else; `invoke base-pin` refreshes it
where the registry is reachable, and Renovate (`renovate.json`, a regex manager on
this file's `image`/`digest` pair) proposes the same change as a pull request. A pin
whose digest is the placeholder is refused by every build that would use it.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pdp_pipeline.log import Log

ROOT = Path(__file__).resolve().parents[3]
PIN_FILE = ROOT / "containers" / "base-images.json"
PLACEHOLDER_DIGEST = "sha256:PLACEHOLDER-run-invoke-base-pin"
INSPECT_TIMEOUT = 30.0
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class BasePinError(Exception):
    """The pin file is missing, malformed, a placeholder, or the base cannot be inspected."""


@dataclass(frozen=True)
class BasePin:
    """One base image: where it comes from, its exact digest and the Python it runs."""

    name: str  # "ubi9"
    image: str  # registry/repository:tag, e.g. registry.access.redhat.com/ubi9/ubi:9.7
    digest: str  # sha256:… of the multi-architecture index
    python: str  # "3.12": the interpreter the runtime and its wheels are built for

    @property
    def ref(self) -> str:
        """image:tag@digest: readable, and exact (the digest wins)."""
        return f"{self.image}@{self.digest}"

    @property
    def python_command(self) -> str:
        return f"python{self.python}"

    @property
    def is_placeholder(self) -> bool:
        return not _DIGEST.match(self.digest)


def load_pin(name: str, path: Path = PIN_FILE) -> BasePin:
    """The pin of base `name` from `path`."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))[name]
        pin = BasePin(name, str(entry["image"]), str(entry["digest"]), str(entry["python"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BasePinError(
            f"{path}: no usable pin for base {name!r} ({type(error).__name__}: {error}); "
            'expected {"' + name + '": {"image", "digest", "python"}}'
        ) from None
    return pin


def require_real_digest(pin: BasePin, path: Path = PIN_FILE) -> BasePin:
    """The pin, unless its digest is the placeholder (or not a sha256 at all)."""
    if pin.is_placeholder:
        raise BasePinError(
            f"{path}: the {pin.name} base {pin.image} is pinned to {pin.digest!r}, not a digest; "
            "run `invoke base-pin` where the registry is reachable and commit the result. "
            "Nothing was built on it."
        )
    return pin


def with_digest(pin: BasePin, digest: str) -> BasePin:
    if not _DIGEST.match(digest):
        raise BasePinError(f"{pin.image}: {digest!r} is not a sha256 digest; the pin is unchanged")
    return BasePin(pin.name, pin.image, digest, pin.python)


def write_pin(pin: BasePin, path: Path = PIN_FILE) -> None:
    """Store `pin` in the pin file; other bases are kept as they are."""
    document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    document[pin.name] = {"image": pin.image, "digest": pin.digest, "python": pin.python}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def inspect_command(image: str) -> list[str]:
    """The registry's digest of the index `image` names (any registry the CLI reaches)."""
    return ["docker", "buildx", "imagetools", "inspect", "--format", "{{json .Manifest}}", image]


def current_digest(image: str, timeout: float = INSPECT_TIMEOUT) -> str:
    """The digest `image` (a tag) names today, or BasePinError saying why not."""
    argv = inspect_command(image)
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise BasePinError(
            f"{image}: no answer within {timeout:g} s (`{' '.join(argv)}`); the pin is unchanged"
        ) from None
    except OSError as error:
        raise BasePinError(
            f"{image}: `{argv[0]}` cannot run ({error}); the pin is unchanged"
        ) from None
    if result.returncode != 0:
        answer = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no answer"]
        raise BasePinError(
            f"{image} cannot be inspected from this host: {answer[0]}. The pin is unchanged; "
            "run `invoke base-pin` where the registry is reachable (or let Dependabot/Renovate "
            "propose it)."
        )
    try:
        return str(json.loads(result.stdout)["digest"])
    except (ValueError, KeyError, TypeError) as error:
        raise BasePinError(f"{image}: unexpected answer ({error}); the pin is unchanged") from None


def refresh_pin(name: str, path: Path = PIN_FILE, log: Log = print) -> tuple[BasePin, BasePin]:
    """(old, new) pin of `name` after asking the registry what its tag names today."""
    old = load_pin(name, path)
    new = with_digest(old, current_digest(old.image))
    if new != old:
        write_pin(new, path)
        log(f"base-pin: {old.image}: {old.digest} -> {new.digest}")
    else:
        log(f"base-pin: {old.image} is still {old.digest}")
    return old, new
