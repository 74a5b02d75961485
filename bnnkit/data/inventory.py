"""The inventory of a GenImage-layout tree: files and readable images per generator, split and
class, the generators that are missing, the files that cannot be read, and the files left out as
not images (``bnnkit data check``). Read from the dataset index (:mod:`bnnkit.data.index`):
with a ``cache_dir`` the second check only decodes what changed since the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.data.genimage import MISSING_ROOT_HINT, class_folders, find_generators
from bnnkit.data.images import UnreadableImage, open_rgb
from bnnkit.data.index import DatasetIndex, RefreshStats
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
    #: files under the class folders that are not images: extension (or "(hidden)") -> count
    skipped: dict[str, int] = field(default_factory=dict)
    index: Path | None = None  # the index file read and refreshed (None: kept in memory)
    decoded_now: int = 0  # files decoded by this check (the others' results came from the index)
    refresh: RefreshStats = field(default_factory=RefreshStats)

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
            "skipped": dict(self.skipped),
            "index": str(self.index) if self.index else None,
        }


def take_inventory(
    root: str | Path,
    *,
    decode: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: str | Path | None = None,
    rescan: bool = False,
) -> Inventory:
    """Count the image files of every generator folder under ``root`` and, with ``decode``, fully
    decode each one (truncated, empty, non-image and oversized files are listed as broken).

    The file list and decode results are kept in the dataset index under ``cache_dir`` (in
    memory when None): a file decoded by an earlier check and unchanged since is not decoded
    again. ``rescan`` stats every file even in folders whose mtime is unchanged. Without
    ``decode``, files whose header is already wrong are still listed as broken.
    ``progress(done, total)`` is called after each decoded file. Raises
    :class:`~bnnkit.errors.UsageError` when ``root`` holds no generator folder.
    """
    root = Path(root)
    found = find_generators(root)
    if not found:
        raise UsageError(f"no GenImage generator folders under '{root}'", hint=MISSING_ROOT_HINT)
    tops = class_folders(found)
    with DatasetIndex(root, cache_dir) as index:
        stats = index.refresh(tops, CLASS_FOLDERS, rescan=rescan, prune=True)
        todo = []
        if decode:
            todo = [e for folder in tops.values() for e in index.entries(folder, "AND decoded = 0")]
        results: dict[str, str | None] = {}
        for done, e in enumerate(todo, 1):
            try:
                open_rgb(e.path)
                results[e.rel] = None
            except UnreadableImage as exc:
                results[e.rel] = exc.reason
            if len(results) >= 2000:  # save as it goes: an interrupted check keeps its work
                index.record_decoded(list(results.items()))
                results.clear()
            if progress is not None:
                progress(done, len(todo))
        index.record_decoded(list(results.items()))
        numbers = {key: index.counts(folder) for key, folder in tops.items()}
        broken = [
            Broken(str(e.path), e.reason or "")
            for folder in tops.values()
            for e in index.entries(folder, "AND broken = 1")
        ]
        skipped = index.skipped(tops.values())
        file = index.file
    counts = {
        g: {
            s: {
                c: Count(files, files - bad)
                for c in CLASS_FOLDERS
                for files, bad in [numbers.get((g, s, c), (0, 0))]
            }
            for s in SPLITS
        }
        for g in found
    }
    missing = [g for g in GENERATORS if g not in found]
    return Inventory(root, found, counts, missing, broken, decoded=decode, skipped=skipped,
                     index=file, decoded_now=len(todo), refresh=stats)  # fmt: skip
