"""Atomic file writes: write a temporary sibling, flush, fsync, then ``os.replace`` it over the
target, so a reader (or a process killed mid-write) only ever sees the old file or the new one.

The lowest layer of bnnkit's file handling: imports only the standard library, so ``report/``,
the feature cache and :mod:`bnnkit.run` itself can all use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "free_bytes",
    "fsync_replace",
    "human_bytes",
    "is_disk_full",
    "temp_path",
]

_FULL = (errno.ENOSPC, errno.EDQUOT)


def temp_path(final: str | Path) -> Path:
    """A hidden temporary sibling of ``final`` private to this process."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp{os.getpid()}")


def fsync_replace(tmp: str | Path, final: str | Path) -> None:
    """Flush ``tmp`` to disk and atomically rename it to ``final``."""
    with open(tmp, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` to ``path`` atomically; a failed write (e.g. a full disk) removes the temporary
    file and leaves the old ``path`` as it was."""
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
        fsync_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the device is full (ENOSPC) or the quota spent (EDQUOT): an
    ``OSError``, or a library error that wraps one in its message (safetensors' Rust writer
    raises ``SafetensorError("... No space left on device (os error 28)")``)."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc)
    return any(f"(os error {n})" in text for n in _FULL) or os.strerror(errno.ENOSPC) in text


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: int | float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def atomic_write_json(path: str | Path, payload: Any, **dumps_kwargs: Any) -> None:
    """``json.dumps(payload, indent=2, **dumps_kwargs)`` written atomically."""
    atomic_write_text(path, json.dumps(payload, **{"indent": 2, **dumps_kwargs}))


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
