"""Finding generators in a GenImage tree and indexing its images.

Works on the official layout, the "tiny" copies, and copies that nest each generator under an
extra folder. Generators are matched by folder-name suffix (``imagenet_ai_0508_adm`` -> ``adm``).
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from pathlib import Path

from bnnkit.data.images import list_images
from bnnkit.data.layout import CLASS_FOLDERS, GENERATORS, SPLITS
from bnnkit.errors import UsageError

MISSING_ROOT_HINT = (
    "get GenImage from its project page (https://github.com/GenImage-Dataset/GenImage) and unpack "
    "it so that <root>/<generator folder>/{train,val}/{ai,nature} exist, or write the synthetic "
    "stand-in with `bnnkit data synth data/synth`"
)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 real, 1 fake
    generator: str
    # From the dataset index, when the sample came through it (saves a stat for cache keys).
    size: int | None = field(default=None, compare=False)
    mtime_ns: int | None = field(default=None, compare=False)


def _generator_of(folder_name: str) -> str | None:
    name = folder_name.lower()
    for short in GENERATORS:
        if name == short or name.endswith("_" + short):
            return short
    return None


def find_generators(root: str | Path, max_depth: int = 3) -> dict[str, Path]:
    """Short generator name -> its folder (the one holding ``train``/``val``)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"data root '{root}' does not exist", hint=MISSING_ROOT_HINT)
    found: dict[str, Path] = {}
    frontier = [(root, 0)]
    while frontier:
        folder, depth = frontier.pop(0)
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            short = _generator_of(child.name)
            if short and any((child / s).is_dir() for s in SPLITS):
                found.setdefault(short, child)
            elif depth + 1 < max_depth and not child.name.startswith("."):
                frontier.append((child, depth + 1))
    return found


def require_generators(root: str | Path, names: list[str]) -> dict[str, Path]:
    found = find_generators(root)
    missing = [n for n in names if n not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none"
        raise UsageError(
            f"data root '{root}' has no folder for generator(s) {', '.join(missing)} "
            f"(found: {have})",
            hint=MISSING_ROOT_HINT if not found else None,
        )
    return {n: found[n] for n in names}


def check_generator_name(name: str) -> str:
    if name in GENERATORS:
        return name
    close = difflib.get_close_matches(name, GENERATORS, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(GENERATORS)}"
    raise UsageError(f"unknown generator '{name}'; {hint}")


def class_folders(
    folders: dict[str, Path], splits: tuple[str, ...] | list[str] = SPLITS
) -> dict[tuple[str, str, str], Path]:
    """(generator, split, class folder name) -> the class folder, for those that exist."""
    return {
        (g, s, c): folders[g] / s / c
        for g in folders
        for s in splits
        for c in CLASS_FOLDERS
        if (folders[g] / s / c).is_dir()
    }


def _listing(
    root: str | Path, tops: dict[tuple[str, str, str], Path], cache_dir: str | Path | None
) -> dict[tuple[str, str, str], list[Sample]]:
    """Samples per class folder: from the dataset index under ``cache_dir`` (refreshed), or a
    plain walk of each folder when ``cache_dir`` is None."""
    if cache_dir is None:
        return {
            key: [Sample(p, CLASS_FOLDERS[key[2]], key[0]) for p in list_images(folder)]
            for key, folder in tops.items()
        }
    from bnnkit.data.index import DatasetIndex

    with DatasetIndex(root, cache_dir) as index:
        index.refresh(tops, CLASS_FOLDERS)
        return {
            key: [
                Sample(e.path, CLASS_FOLDERS[key[2]], key[0], e.size, e.mtime_ns)
                for e in index.entries(folder)
            ]
            for key, folder in tops.items()
        }


def split_listing(
    root: str | Path, generators: list[str], split: str, cache_dir: str | Path | None = None
) -> dict[str, dict[int, list[Sample]]]:
    """Every sample of ``split`` for ``generators`` in a GenImage tree, per generator and label
    (for :func:`select_samples`; :func:`bnnkit.data.layouts.index_split` selects from it). With
    ``cache_dir`` the file list comes from the dataset index there (:mod:`bnnkit.data.index`),
    refreshed first, instead of a walk of the folders; the samples are the same either way."""
    folders = require_generators(root, generators)
    listed = _listing(root, class_folders({g: folders[g] for g in generators}, [split]), cache_dir)
    return {
        gen: {label: listed.get((gen, split, name), []) for name, label in CLASS_FOLDERS.items()}
        for gen in generators
    }


def select_samples(
    per_gen: dict[str, dict[int, list[Sample]]], split: str, limit: int, balance: bool, seed: int
) -> list[Sample]:
    """Per generator: balance the classes (the larger subsampled to the smaller), cap at
    ``limit`` per class when ``limit > 0``, seeded by ``seed``, generator, split and label, so
    the same recipe always sees the same files; every layout selects this way."""
    samples: list[Sample] = []
    for gen, per_class in per_gen.items():
        n = min(len(v) for v in per_class.values()) if balance else None
        for label, items in per_class.items():
            keep = len(items) if n is None else n
            if limit:
                keep = min(keep, limit)
            if keep < len(items):
                rng = random.Random(f"{seed}/{gen}/{split}/{label}")
                items = sorted(rng.sample(items, keep), key=lambda s: s.path)
            samples.extend(items)
    return samples
