"""``{0_real,1_fake}`` trees (ForenSynths/CNNDetection, UniversalFakeDetect, AIGCDetectBenchmark,
Chameleon, AIGIBench, ...): every folder holding ``0_real`` and/or ``1_fake`` is one *pair*.

Where a pair sits says its split, generator and subset (the rule, applied to the folders between
the root and the pair, ``0_real``/``1_fake`` excluded):

- the **split** is the first of those folders named ``train``, ``val`` or ``test``; without one
  the pair has no split (the tree is evaluation data only);
- the **generator** is the first folder *below* the split folder (``test/biggan/0_real`` ->
  ``biggan``); when the pair sits right in the split folder, the folder *above* the split
  (``chameleon/test/0_real`` -> ``chameleon``, ``biggan/train/0_real`` -> ``biggan``), or the
  root's own name at the top; without a split folder, the first folder below the root;
- deeper folders between the generator and the pair are a **subset** of that generator
  (ProGAN-style ``train/progan/car/0_real``: generator ``progan``, subset ``car``), all read as
  that generator's images. (A ProGAN training folder ``<root>/<class>/{0_real,1_fake}`` with no
  generator folder above the classes reads each class as a generator: put it under
  ``train/progan/`` or describe it in a manifest.)

Split ``"val"`` reads a generator's ``val`` pairs, else its ``test`` pairs, else (a tree without
split folders) all its pairs; split ``"train"`` reads its ``train`` pairs only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bnnkit.errors import UsageError

#: class folder -> label (0 real, 1 fake)
BINARY_CLASSES: dict[str, int] = {"0_real": 0, "1_fake": 1}
SPLIT_FOLDERS: tuple[str, ...] = ("train", "val", "test")
MAX_DEPTH = 6


@dataclass(frozen=True)
class Pair:
    """One folder holding ``0_real`` and/or ``1_fake``."""

    folder: Path
    generator: str
    split: str | None  # train / val / test, None without a split folder
    subset: str  # '' or the folders between the generator and the pair ('car')

    def classes(self) -> dict[str, Path]:
        """Class folder name -> folder, for those that exist."""
        return {c: self.folder / c for c in BINARY_CLASSES if (self.folder / c).is_dir()}


def _place(root: Path, parts: tuple[str, ...]) -> tuple[str, str | None, str]:
    """(generator, split, subset) of a pair ``root/<parts...>`` (see the module docstring)."""
    lowered = [p.lower() for p in parts]
    split_at = next((i for i, p in enumerate(lowered) if p in SPLIT_FOLDERS), None)
    if split_at is None:
        if not parts:
            return (root.resolve().name.lower() or "root"), None, ""
        return parts[0], None, "/".join(parts[1:])
    split = lowered[split_at]
    after = parts[split_at + 1 :]
    if after:
        return after[0], split, "/".join(after[1:])
    above = parts[split_at - 1] if split_at > 0 else root.resolve().name.lower() or "root"
    return above, split, ""


def find_pairs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Pair]:
    """Every pair under ``root`` (breadth-first, sorted; hidden folders skipped; the class
    folders themselves are not searched further)."""
    root = Path(root)
    pairs: list[Pair] = []
    frontier: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    seen: set[tuple[int, int]] = set()
    while frontier:
        folder, parts = frontier.pop(0)
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                subdirs = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
        except OSError:
            continue
        if any(name in BINARY_CLASSES for name in subdirs):
            generator, split, subset = _place(root, parts)
            pairs.append(Pair(folder, generator, split, subset))
        if len(parts) + 1 >= max_depth:
            continue
        frontier.extend(
            (folder / name, (*parts, name)) for name in subdirs if name not in BINARY_CLASSES
        )
    return pairs


def binary_generators(root: str | Path) -> dict[str, Path]:
    """Generator -> the first of its pair folders (for display), in discovery order."""
    found: dict[str, Path] = {}
    for pair in find_pairs(root):
        found.setdefault(pair.generator, pair.folder)
    return found


def has_splits(pairs: list[Pair]) -> bool:
    return any(p.split is not None for p in pairs)


def pairs_for(pairs: list[Pair], generator: str, split: str) -> list[Pair]:
    """``generator``'s pairs read as ``split`` (``"val"`` falls back to test, then to no split)."""
    own = [p for p in pairs if p.generator == generator]
    if split == "train":
        return [p for p in own if p.split == "train"]
    for wanted in (split, "test", None) if split == "val" else (split,):
        chosen = [p for p in own if p.split == wanted]
        if chosen:
            return chosen
    return []


def binary_tops(
    root: str | Path, generators: list[str], split: str
) -> tuple[dict[tuple[str, str, str], Path], dict[str, int]]:
    """The class folders of ``generators`` for ``split`` as the dataset index wants them:
    ``{(generator, split, '<subset>/<class>'): folder}`` and ``{'<subset>/<class>': label}``."""
    pairs = find_pairs(root)
    if split == "train" and pairs and not has_splits(pairs):
        raise UsageError(
            f"'{root}' has no train/val/test folders: a {{0_real,1_fake}} tree without them is "
            "evaluation data only, so nothing can be trained on it",
            hint="put the training images under <root>/train/<generator>/{0_real,1_fake} "
            "(and validation under val/), or describe the split in a manifest "
            '(data.layout = "manifest", column split)',
        )
    tops: dict[tuple[str, str, str], Path] = {}
    labels: dict[str, int] = {}
    for gen in generators:
        for pair in pairs_for(pairs, gen, split):
            here = os.path.relpath(pair.folder, root).replace(os.sep, "/")
            for cls, folder in pair.classes().items():
                key = f"{here}/{cls}"
                tops[(gen, split, key)] = folder
                labels[key] = BINARY_CLASSES[cls]
    return tops, labels
