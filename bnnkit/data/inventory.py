"""The inventory of a GenImage-layout tree: files and readable images per generator, split and
class, the generators that are missing, and the files that cannot be read (``bnnkit data check``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.data.genimage import MISSING_ROOT_HINT, find_generators
from bnnkit.data.images import UnreadableImage, list_images, open_rgb
from bnnkit.data.layout import CLASS_FOLDERS, GENERATORS, SPLITS
from bnnkit.errors import UsageError


@dataclass(frozen=True)
class Broken:
    """A file that does not decode, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Count:
    """Image files in one ``<generator>/<split>/<class>`` folder, and how many of them decode."""

    files: int
    readable: int

    def cell(self) -> str:
        """``"12"`` when every file is readable, else ``"readable/files"``."""
        return str(self.files) if self.files == self.readable else f"{self.readable}/{self.files}"


@dataclass(frozen=True)
class Inventory:
    """What :func:`take_inventory` found under ``root``."""

    root: Path
    generators: dict[str, Path]  # short name -> its folder, in discovery order
    counts: dict[str, dict[str, dict[str, Count]]]  # generator -> split -> class
    missing: list[str]  # known generators not found, in GENERATORS order
    broken: list[Broken] = field(default_factory=list)
    decoded: bool = True

    @property
    def total(self) -> int:
        """Image files found (readable or not)."""
        return sum(c.files for s in self.counts.values() for cs in s.values() for c in cs.values())

    def to_json(self) -> dict[str, Any]:
        """The ``bnnkit data check --json`` document."""
        return {
            "root": str(self.root),
            "generators": {g: str(p) for g, p in self.generators.items()},
            "missing": list(self.missing),
            "counts": {
                g: {
                    s: {c: {"files": n.files, "readable": n.readable} for c, n in cs.items()}
                    for s, cs in splits.items()
                }
                for g, splits in self.counts.items()
            },
            "broken": [{"path": b.path, "reason": b.reason} for b in self.broken],
            "decoded": self.decoded,
        }


def take_inventory(
    root: str | Path,
    *,
    decode: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Inventory:
    """Count the image files of every generator folder under ``root`` and, with ``decode``, fully
    decode each one (truncated, empty, non-image and oversized files are listed as broken).

    ``progress(done, total)`` is called after each decoded file. Raises
    :class:`~bnnkit.errors.UsageError` when ``root`` holds no generator folder.
    """
    root = Path(root)
    found = find_generators(root)
    if not found:
        raise UsageError(f"no GenImage generator folders under '{root}'", hint=MISSING_ROOT_HINT)
    files = {
        (g, s, c): (list_images(found[g] / s / c) if (found[g] / s / c).is_dir() else [])
        for g in found
        for s in SPLITS
        for c in CLASS_FOLDERS
    }
    broken: list[Broken] = []
    if decode:
        total = sum(len(v) for v in files.values())
        done = 0
        for paths in files.values():
            for p in paths:
                try:
                    open_rgb(p)
                except UnreadableImage as exc:
                    broken.append(Broken(str(p), exc.reason))
                done += 1
                if progress is not None:
                    progress(done, total)
    bad = {b.path for b in broken}
    counts = {
        g: {
            s: {
                c: Count(len(files[(g, s, c)]), sum(str(p) not in bad for p in files[(g, s, c)]))
                for c in CLASS_FOLDERS
            }
            for s in SPLITS
        }
        for g in found
    }
    missing = [g for g in GENERATORS if g not in found]
    return Inventory(root, found, counts, missing, broken, decoded=decode)
