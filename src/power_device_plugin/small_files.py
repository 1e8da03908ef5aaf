"""Reading the small files of sysfs and /proc, never raising.

A scan reads several sysfs attributes per device (``dev``, ``size``, ``dm/uuid``,
``device/state`` ...), most of them a few bytes long. ``open()`` in text mode
builds a file object, a buffer and a decoder for each: at 1000 devices that was a
third of a scan. One ``os.read`` into a bytes object and one decode is all a
file of a few bytes needs.
"""

from __future__ import annotations

import os

# sysfs hands out an attribute in one read of at most a page (4 KiB, 64 KiB on
# ppc64le with 64 KiB pages); a longer file is read on until its end.
_CHUNK = 65536


def read_text(path: str) -> str | None:
    """The whole file as text (undecodable bytes replaced); None when it cannot be read
    (missing, a directory, no permission, a name with a NUL byte)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        data = os.read(fd, _CHUNK)
        if len(data) == _CHUNK:
            chunks = [data]
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", errors="replace")


def list_dir(path: str) -> list[str]:
    """The names in a directory, sorted; [] when it cannot be listed."""
    try:
        return sorted(os.listdir(path))
    except (OSError, ValueError):
        return []
