"""The calibration split: images carved out of the *training* folders that nothing trains on.

Everything post-hoc is fitted on it (``bnnkit calibrate``'s temperature, the abstention
thresholds, seen-fitted scores such as ``fused``, a training-free method's calibration), so that
``bnnkit evaluate`` reports on validation images nothing was fitted on.

:func:`train_calibration_split` is the one place the split is made; training, the score fits,
``calibrate`` and ``evaluate`` all call it. Per (generator, class) of the training split (after
``data.balance`` and ``data.train_limit``, before ``data.debias``), the ``ceil(fraction * n)``
images with the smallest ``sha256(seed | generator | class | relative path)`` go to calibration
(at most ``n - 1``: a folder of one image stays in training). The choice depends on each
file's own name, not on the listing order, so adding files to a folder moves few images
between the two parts.

A run's ``recipe.toml`` written before ``data.calibration`` existed has no calibration split
(:data:`LEGACY_CALIBRATION`); its post-hoc fits stay on the seen validation images, and
:func:`in_sample_warning` says so.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from bnnkit.data.binary import BINARY_CLASSES
from bnnkit.data.debias import apply_debias
from bnnkit.data.genimage import Sample
from bnnkit.data.layout import CLASS_FOLDERS
from bnnkit.data.layouts import index_split
from bnnkit.errors import UsageError

__all__ = [
    "CALIBRATION_SPLIT",
    "LEGACY_CALIBRATION",
    "calibration_items",
    "calibration_record",
    "carve_calibration",
    "in_sample_warning",
    "train_calibration_split",
    "val_items",
]

#: the split name of the calibration images (feature-cache entries, ``fitted_on`` records)
CALIBRATION_SPLIT = "calibration"
#: ``data.calibration`` of a run whose recipe.toml does not have the key (made before it existed)
LEGACY_CALIBRATION = 0.0


def _relative(sample: Sample) -> str:
    """The sample's path from its class folder down (``ai/x.png``; for a ``{0_real,1_fake}``
    tree from the folder above it, ``car/0_real/x.png``): stable across data roots. A manifest's
    file: its name."""
    parts = Path(sample.path).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in CLASS_FOLDERS:
            return "/".join(parts[i:])
        if parts[i] in BINARY_CLASSES:
            return "/".join(parts[max(i - 1, 0) :])
    return Path(sample.path).name


def _rank(sample: Sample, seed: int) -> str:
    text = f"{seed}|{sample.generator}|{sample.label}|{_relative(sample)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def carve_calibration(
    items: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """``(train, calibration)`` of ``items`` (see the module docstring); both keep the order of
    ``items``. ``fraction = 0``: every item trains."""
    if not fraction or fraction <= 0:
        return list(items), []
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, s in enumerate(items):
        cells[(s.generator, s.label)].append(i)
    chosen: set[int] = set()
    for rows in cells.values():
        n_cal = min(math.ceil(fraction * len(rows)), len(rows) - 1)
        if n_cal > 0:
            chosen.update(sorted(rows, key=lambda i: _rank(items[i], seed))[:n_cal])
    train = [s for i, s in enumerate(items) if i not in chosen]
    calibration = [s for i, s in enumerate(items) if i in chosen]
    return train, calibration


def train_calibration_split(
    recipe: Any, cache_dir: str | Path | None = None
) -> tuple[list[Sample], list[Sample]]:
    """``(train_items, calibration_items)`` of ``recipe``: its training generators' training
    split (``data.balance``, ``data.train_limit``, ``seed``; ``data.debias``'s
    ``size_matched``), with ``data.calibration`` of each (generator, class) carved out as the
    calibration images (carved before the debias filter, so that a different debias at
    evaluation only removes images from each part)."""
    d = recipe.data
    items = index_split(
        d.root, list(d.train_generators), "train", limit=d.train_limit, balance=d.balance,
        seed=recipe.seed, cache_dir=cache_dir, layout=getattr(d, "layout", "auto"),
    )  # fmt: skip
    train, calibration = carve_calibration(items, float(d.calibration), recipe.seed)
    # the carve is made before data.debias, which then only removes images from both parts:
    # an evaluation's --debias override must not move a training image into calibration
    kept = {s.path for s in apply_debias(recipe, items)}
    return [s for s in train if s.path in kept], [s for s in calibration if s.path in kept]


def val_items(
    recipe: Any, generators: list[str], cache_dir: str | Path | None = None, *,
    root: str | Path | None = None, layout: str | None = None,
) -> list[Sample]:  # fmt: skip
    """The validation images of ``generators`` as ``recipe`` reads them (``data.val_limit``,
    ``data.balance``, ``seed``, ``data.debias``'s ``size_matched``); ``root`` / ``layout``:
    another benchmark's (default the recipe's ``data.root`` and ``data.layout``)."""
    d = recipe.data
    items = index_split(
        d.root if root is None else root, list(generators), "val", limit=d.val_limit,
        balance=d.balance, seed=recipe.seed, cache_dir=cache_dir,
        layout=getattr(d, "layout", "auto") if layout is None else layout,
    )  # fmt: skip
    return apply_debias(recipe, items)


def calibration_items(recipe: Any, cache_dir: str | Path | None = None) -> list[Sample]:
    """The calibration images of ``recipe`` (:func:`train_calibration_split`); a
    :class:`~bnnkit.errors.UsageError` when it should have some and has none (no train
    folders under the data root)."""
    _, cal = train_calibration_split(recipe, cache_dir)
    if recipe.data.calibration and not cal:
        raise UsageError(
            f"no calibration images under '{recipe.data.root}': they are carved out of the "
            "training folders of the seen generators",
            hint="pass --data-root with the run's data (its train folders included)",
        )
    return cal


def calibration_record(recipe: Any, n: int) -> dict[str, Any]:
    """What a post-hoc fit on the calibration images records as its ``fitted_on`` /
    ``calibrated_on``: the split, the generators, the number of images read and the fraction
    (``split = "val"``, the seen validation images, for a run without a calibration split)."""
    return {
        "split": CALIBRATION_SPLIT if recipe.data.calibration else "val",
        "generators": list(recipe.data.train_generators),
        "n": int(n),
        "fraction": float(recipe.data.calibration),
    }


def in_sample_warning(what: str) -> str:
    """The one-line warning for a run without a calibration split (``what`` was fitted)."""
    return (
        f"this run has no calibration split (data.calibration = 0, or made before it existed): "
        f"{what} fitted on the seen validation images, so its seen numbers are in-sample; "
        "train again for a calibration split"
    )
