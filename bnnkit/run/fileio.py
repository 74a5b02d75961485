"""Atomic file writes: write a temporary sibling, flush, fsync, then ``os.replace`` it over the
target, so a reader (or a process killed mid-write) only ever sees the old file or the new one.

The lowest layer of bnnkit's file handling: imports only the standard library, so ``report/``,
the feature cache and :mod:`bnnkit.run` itself can all use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_replace",
    "temp_path",
]


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
    tmp = temp_path(path)
    tmp.write_bytes(data)
    fsync_replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    tmp = temp_path(path)
    tmp.write_text(text, encoding="utf-8")
    fsync_replace(tmp, path)


def atomic_write_json(path: str | Path, payload: Any, **dumps_kwargs: Any) -> None:
    """``json.dumps(payload, indent=2, **dumps_kwargs)`` written atomically."""
    atomic_write_text(path, json.dumps(payload, **{"indent": 2, **dumps_kwargs}))
