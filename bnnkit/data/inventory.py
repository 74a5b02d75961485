"""The inventory of a data root in any layout (:mod:`bnnkit.data.layouts`): files and readable
images per generator, split and class, the GenImage generators that are missing, the files that
cannot be read, the files left out as not images and, for a manifest, the rows left out (missing
file, bad label) with their row numbers (``bnnkit data check``). GenImage and ``{0_real,1_fake}``
trees are read from the dataset index (:mod:`bnnkit.data.index`): with a ``cache_dir`` the second
check only decodes what changed since the first. A manifest's files are decoded every time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.data import binary, manifest
from bnnkit.data.genimage import MISSING_ROOT_HINT, class_folders, find_generators
from bnnkit.data.images import UnreadableImage, open_rgb
from bnnkit.data.index import DatasetIndex, RefreshStats
from bnnkit.data.layout import CLASS_FOLDERS, GENERATORS, SPLITS
from bnnkit.data.layouts import resolve_layout
from bnnkit.errors import UsageError

#: the split column of a ``{0_real,1_fake}`` tree or manifest without split folders / column
ALL = "all"


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
    layout: str = "genimage"
    detected: bool = True  # the layout was detected (data.layout = "auto")
    splits: tuple[str, ...] = SPLITS  # the split columns, in order
    classes: tuple[str, ...] = tuple(CLASS_FOLDERS)  # the class columns, in order
    problems: list[manifest.Problem] = field(default_factory=list)  # manifest rows left out
    families: dict[str, str] = field(default_factory=dict)  # generator -> family (manifest)

    @property
    def total(self) -> int:
        """Image files found (readable or not)."""
        return sum(c.files for s in self.counts.values() for cs in s.values() for c in cs.values())

    def to_json(self) -> dict[str, Any]:
        """The ``bnnkit data check --json`` document."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "detected": self.detected,
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
            "problems": [{"row": p.row, "path": p.path, "reason": p.reason} for p in self.problems],
            "families": dict(self.families),
        }


def take_inventory(
    root: str | Path,
    *,
    decode: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: str | Path | None = None,
    rescan: bool = False,
    layout: str = "auto",
) -> Inventory:
    """Count the image files of every generator folder under ``root`` and, with ``decode``, fully
    decode each one (truncated, empty, non-image and oversized files are listed as broken).

    The file list and decode results are kept in the dataset index under ``cache_dir`` (in
    memory when None): a file decoded by an earlier check and unchanged since is not decoded
    again. ``rescan`` stats every file even in folders whose mtime is unchanged. Without
    ``decode``, files whose header is already wrong are still listed as broken.
    ``progress(done, total)`` is called after each decoded file. Raises
    :class:`~bnnkit.errors.UsageError` when ``root`` holds no generator folder. ``layout``: the
    data layout (``"auto"``: detected, :func:`~bnnkit.data.layouts.resolve_layout`).
    """
    root = Path(root)
    kind = resolve_layout(root, layout) if layout != "auto" or root.exists() else "genimage"
    if kind == "manifest":
        return _manifest_inventory(root, decode, progress, detected=layout == "auto")
    if kind == "binary":
        return _binary_inventory(root, decode, progress, cache_dir, rescan, layout == "auto")
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
                     index=file, decoded_now=len(todo), refresh=stats,
                     detected=layout == "auto")  # fmt: skip


def _decode_all(paths: list[tuple[str, Path]], progress: Callable[[int, int], None] | None
                ) -> dict[str, str | None]:  # fmt: skip
    """key -> None when the file decodes, else why not."""
    results: dict[str, str | None] = {}
    for done, (key, path) in enumerate(paths, 1):
        try:
            open_rgb(path)
            results[key] = None
        except UnreadableImage as exc:
            results[key] = exc.reason
        if progress is not None:
            progress(done, len(paths))
    return results


def _binary_inventory(root: Path, decode: bool, progress: Callable[[int, int], None] | None,
                      cache_dir: str | Path | None, rescan: bool, detected: bool
                      ) -> Inventory:  # fmt: skip
    """:func:`take_inventory` of a ``{0_real,1_fake}`` tree, through the dataset index."""
    pairs = binary.find_pairs(root)
    tops: dict[tuple[str, str, str], Path] = {}
    labels: dict[str, int] = {}
    for pair in pairs:
        rel = Path(pair.folder).relative_to(root).as_posix()
        for cls, folder in pair.classes().items():
            tops[(pair.generator, pair.split or ALL, f"{rel}/{cls}")] = folder
            labels[f"{rel}/{cls}"] = binary.BINARY_CLASSES[cls]
    with DatasetIndex(root, cache_dir) as index:
        stats = index.refresh(tops, labels, rescan=rescan, prune=True)
        todo = []
        if decode:
            todo = [e for folder in tops.values() for e in index.entries(folder, "AND decoded = 0")]
        results = _decode_all([(e.rel, e.path) for e in todo], progress)
        index.record_decoded(list(results.items()))
        numbers = {key: index.counts(folder) for key, folder in tops.items()}
        broken = [Broken(str(e.path), e.reason or "") for folder in tops.values()
                  for e in index.entries(folder, "AND broken = 1")]  # fmt: skip
        skipped = index.skipped(tops.values())
        file = index.file
    splits = tuple(s for s in (*binary.SPLIT_FOLDERS, ALL) if any(k[1] == s for k in tops))
    classes = tuple(binary.BINARY_CLASSES)
    tally: dict[str, dict[str, dict[str, list[int]]]] = {}
    for (gen, split, key), (files, bad) in numbers.items():
        cell = tally.setdefault(gen, {s: {c: [0, 0] for c in classes} for s in splits})
        cell[split][key.rsplit("/", 1)[-1]][0] += files
        cell[split][key.rsplit("/", 1)[-1]][1] += bad
    counts = {g: {s: {c: Count(n, n - b) for c, (n, b) in cs.items()} for s, cs in ss.items()}
              for g, ss in tally.items()}  # fmt: skip
    found = binary.binary_generators(root)
    return Inventory(root, found, counts, [], broken, decoded=decode, skipped=skipped, index=file,
                     decoded_now=len(todo), refresh=stats, layout="binary", detected=detected,
                     splits=splits, classes=classes)  # fmt: skip


def _manifest_inventory(root: Path, decode: bool, progress: Callable[[int, int], None] | None,
                        detected: bool) -> Inventory:  # fmt: skip
    """:func:`take_inventory` of a manifest: its rows left out (missing file, bad label) and,
    with ``decode``, its files that do not decode (no index: every file is decoded)."""
    m = manifest.read_manifest(root)
    results = _decode_all([(str(i), r.path) for i, r in enumerate(m.rows)], progress) if decode \
        else {}  # fmt: skip
    splits = tuple(s for s in (*manifest.SPLITS, ALL)
                   if any((r.split or ALL) == s for r in m.rows))  # fmt: skip
    classes = ("real", "fake")
    tally: dict[str, dict[str, dict[str, list[int]]]] = {}
    for i, r in enumerate(m.rows):
        cell = tally.setdefault(r.generator, {s: {c: [0, 0] for c in classes} for s in splits})
        n = cell[r.split or ALL][classes[r.label]]
        n[0] += 1
        n[1] += results.get(str(i)) is not None
    counts = {g: {s: {c: Count(n, n - b) for c, (n, b) in cs.items()} for s, cs in ss.items()}
              for g, ss in tally.items()}  # fmt: skip
    broken = [Broken(str(r.path), results[str(i)] or "") for i, r in enumerate(m.rows)
              if results.get(str(i)) is not None]  # fmt: skip
    return Inventory(root, m.generators(), counts, [], broken, decoded=decode,
                     layout="manifest", detected=detected, splits=splits, classes=classes,
                     problems=list(m.problems), families=m.families())  # fmt: skip
