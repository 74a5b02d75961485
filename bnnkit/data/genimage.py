"""Finding generators in a GenImage tree and indexing its images.

Works on the official layout, the "tiny" copies, and copies that nest each generator under an
extra folder. Generators are matched by folder-name suffix (``imagenet_ai_0508_adm`` -> ``adm``).
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
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


def index_split(
    root: str | Path,
    generators: list[str],
    split: str,
    *,
    limit: int = 0,
    balance: bool = True,
    seed: int = 0,
) -> list[Sample]:
    """Samples of ``split`` for ``generators``: per generator, both classes, balanced (the larger
    class subsampled to the smaller) and capped at ``limit`` per class when ``limit > 0``.
    Subsampling is seeded, so the same recipe always sees the same files."""
    folders = require_generators(root, generators)
    samples: list[Sample] = []
    for gen in generators:
        per_class: dict[int, list[Path]] = {}
        for cls_name, label in CLASS_FOLDERS.items():
            folder = folders[gen] / split / cls_name
            per_class[label] = list_images(folder) if folder.is_dir() else []
        n = min(len(v) for v in per_class.values()) if balance else None
        for label, paths in per_class.items():
            keep = len(paths) if n is None else n
            if limit:
                keep = min(keep, limit)
            if keep < len(paths):
                rng = random.Random(f"{seed}/{gen}/{split}/{label}")
                paths = sorted(rng.sample(paths, keep))
            samples.extend(Sample(p, label, gen) for p in paths)
    return samples
