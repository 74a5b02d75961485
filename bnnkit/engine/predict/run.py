"""Predicting image files with a trained run: p(fake), the uncertainty parts and a verdict per
file (``bnnkit predict`` is a thin layer over :func:`predict_run`).

Abstention: the verdict is ``uncertain`` when the image's value of the score ``threshold.json``
was calibrated on (any score plugin; a fitted one is loaded from the run's ``scores/``, with the
fingerprints ``threshold.json`` recorded, never refitted here) is above its threshold; each row
then carries ``score`` (its name) and ``score_value``.

Streaming: images are decoded, run through the backbone once and sampled over the head batch by
batch (:func:`~bnnkit.engine.features.loop.stream_predictive`); only per-image results are
kept. A file that cannot be read (or explained) gets an error entry and the others carry on.
With ``tiles`` each image is covered by a grid of crops at the recipe's size instead of one
centre crop (:mod:`bnnkit.engine.features.tiles`). ``--explain`` hooks into the same loop: per
image, an overlay of where the detector looks and of the patch-wise epistemic uncertainty
(:mod:`bnnkit.engine.predict.explain`), over the whole image when tiled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnnkit.data.dataset import FileDataset, build_transform, draft_size
from bnnkit.data.images import is_image_name, list_images
from bnnkit.engine.build import load_run
from bnnkit.engine.features.loop import (
    TEMPERATURE_ATTR,
    Scorer,
    make_loader,
    posterior_samples,
    stream_predictive,
)
from bnnkit.engine.features.tiles import (
    TILE_FIELDS,
    TiledTransform,
    TileResult,
    Tiling,
    first_item,
    stream_tiled,
)
from bnnkit.engine.posthoc.calibrate import apply_run_temperature
from bnnkit.engine.posthoc.score_set import load_scores
from bnnkit.engine.predict.explain import explain_hook, tiled_explain_hook
from bnnkit.errors import UsageError
from bnnkit.metrics.attribution import generator_of
from bnnkit.metrics.records import DECOMPOSITION, SCORE_ALIASES, UNCERTAINTY_KEYS, Predictions
from bnnkit.run.layout import THRESHOLD_FILE, RunLayout
from bnnkit.run.threshold import abstention_rule, read_threshold, verdict

__all__ = ["FIELDS", "PredictResult", "collect_files", "predict_run", "row_fields"]

#: the columns of a prediction row (the abstention score's name and value are added when there
#: is an abstention rule, the tile spread with ``tiles``, ``explain`` with ``--explain``).
FIELDS = ["path", "verdict", "p_fake", *UNCERTAINTY_KEYS, "error"]
SCORE_FIELDS = ["score", "score_value"]


#: a generator-attribution run's (``data.labels = "generator"``) columns: the most likely
#: training generator (None for an image called real) and whether it is known (False: the
#: abstention score is above its threshold, the 'uncertain' verdict; None: no abstention rule)
ATTRIBUTION_FIELDS = ["generator", "known"]


def row_fields(
    tiles: bool = False, explain: bool = False, scored: bool = False, attribution: bool = False
) -> list[str]:
    """The columns of the rows :func:`predict_run` returns with these options, in order."""
    return (
        FIELDS[:-1] + (SCORE_FIELDS if scored else []) + (TILE_FIELDS if tiles else [])
        + (ATTRIBUTION_FIELDS if attribution else []) + ["error"] + (["explain"] * explain)
    )  # fmt: skip


@dataclass
class PredictResult:
    """Rows (one per input file, in input order, then unreadable and missing ones), the K used,
    the abstention rule applied (None: no 'uncertain' verdicts), the tiling (None: one centre
    crop per image) and ``skipped``: non-image files found in input folders, by extension."""

    rows: list[dict[str, Any]]
    samples: int
    rule: dict[str, Any] | None
    explain_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    tiling: Tiling | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    #: the temperature applied to every posterior sample (``bnnkit calibrate``), None: none
    temperature: float | None = None
    #: the p(fake) at or above which the verdict is 'fake'
    p_threshold: float = 0.5
    #: a generator-attribution run's training generators (rows have ``generator``, ``known``)
    generators: list[str] | None = None


def _non_images(folder: Path) -> Counter[str]:
    """Files under ``folder`` that :func:`list_images` leaves out (no image extension), by
    lower-case extension; hidden files and folders are not counted, as they are not listed."""
    found: Counter[str] = Counter()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or is_image_name(path):
            continue
        try:
            if path.is_file():
                found[path.suffix.lower() or "(no extension)"] += 1
        except OSError:
            continue
    return found


def collect_files(inputs: Sequence[Path]) -> tuple[list[Path], dict[str, str], dict[str, int]]:
    """Files to predict (folders searched recursively), ``{input: why}`` for missing ones and
    ``{extension: count}`` of the non-image files skipped in folders (sorted by extension)."""
    files: list[Path] = []
    missing: dict[str, str] = {}
    skipped: Counter[str] = Counter()
    for item in inputs:
        if item.is_dir():
            files.extend(list_images(item))
            skipped.update(_non_images(item))
        elif item.is_file():
            files.append(item)  # opened by content whatever its name; failures are reported
        else:
            missing[str(item)] = "no such file or directory"
    return files, missing, dict(sorted(skipped.items()))


def skipped_message(skipped: dict[str, int]) -> str:
    """``skipped 2 non-image files (.json 1, .txt 1)``."""
    n = sum(skipped.values())
    parts = ", ".join(f"{ext} {count}" for ext, count in skipped.items())
    return f"skipped {n} non-image file{'s' * (n != 1)} ({parts})"


def error_row(path: str, why: str, tiled: bool = False, score: str | None = None) -> dict:
    empty = dict.fromkeys(["p_fake", *UNCERTAINTY_KEYS])
    if score is not None:
        empty.update(score=score, score_value=None)
    empty.update(dict.fromkeys(TILE_FIELDS if tiled else []))
    return {"path": path, "verdict": "error", **empty, "error": why}


def _scorer(layout: RunLayout, rule: dict[str, Any] | None, calibrated, tiled: bool) -> Scorer:
    """The scores to stream for the abstention rule: its score and those it reads, fits loaded
    from the run (nothing for a version-1 threshold or a posterior score with ``tiles``: the
    record gives those)."""
    if rule is None or (calibrated or {}).get("schema_version") == 1:
        return {}
    name = SCORE_ALIASES.get(rule["score"], rule["score"])
    if tiled:
        if name not in DECOMPOSITION:
            raise UsageError(
                f"--tiles judges an image from several crops; the run abstains on score "
                f"'{name}', which needs one feature vector per image",
                hint="predict without --tiles, add --no-abstain, or calibrate on a posterior "
                f"score: bnnkit evaluate {layout.root} --tiles --abstain-on entropy",
            )
        return {}
    fits = (calibrated or {}).get("score_fit")
    from bnnkit.plugins import get_registry

    if name not in get_registry().entries["score"]:  # e.g. a plugin since uninstalled
        raise UsageError(
            f"this run's {THRESHOLD_FILE} abstains on score '{name}', which no installed "
            "plugin provides",
            hint="install the package that provides it, predict with --no-abstain, or "
            f"calibrate on another score: bnnkit evaluate {layout.root} --abstain-on entropy",
        )
    given = (calibrated or {}).get("score_options")  # each score's options (absent: defaults)
    return load_scores(layout.root, name, rule.get("options"), fits, given)  # every fit loaded


def _tiling_warnings(recipe, tiling: Tiling | None, calibrated) -> list[str]:
    out = []
    if tiling is not None and recipe.data.preprocess == "resize":
        out.append(
            f"the run was trained on whole images resized to {tiling.size} px "
            "(preprocess = 'resize'); tiles are crops at native resolution"
        )
    if calibrated is not None:
        had = calibrated.get("tiles")
        now = tiling.to_dict() if tiling is not None else None
        if had != now:
            how = f"tiles {had}" if had else "one centre crop per image"
            out.append(
                f"threshold.json was calibrated with {how}, this prediction uses "
                f"{f'tiles {now}' if now else 'one centre crop'}: the uncertainty threshold "
                f"may not transfer; re-run `bnnkit evaluate{' --tiles' * bool(now)}`"
            )
    return out


def predict_run(
    run_dir: Path,
    inputs: Sequence[Path],
    *,
    device: torch.device,
    samples: int | None = None,
    batch_size: int = 32,
    p_threshold: float | None = None,
    abstain: bool = True,
    max_uncertainty: float | None = None,
    explain: bool = False,
    explain_dir: Path | None = None,
    tiles: bool = False,
    max_tiles: int = 64,
    tile_overlap: float = 0.25,
    tile_reduce: str = "mean",
) -> PredictResult:
    """Predict every file of ``inputs`` with the run. With ``abstain``, the verdict is
    'uncertain' above the calibrated threshold of ``threshold.json`` (or ``max_uncertainty``),
    sampled with the K and the inference options it was calibrated with (unless ``samples``).
    With ``tiles``, each image is judged from a grid of ``data.image_size`` crops covering it
    (at most ``max_tiles``, overlapping by ``tile_overlap``, reduced by ``tile_reduce``: see
    :mod:`bnnkit.engine.features.tiles`); the rows then carry the tile spread too."""
    layout = RunLayout(run_dir)
    # threshold.json, read once; None when missing or stale (calibrated for other weights)
    record = read_threshold(layout.root) if p_threshold is None or abstain else None
    if p_threshold is None:  # evaluate --max-false-alarm's Neyman-Pearson threshold, else 0.5
        p_threshold = float((record or {}).get("p_threshold", 0.5))
    calibrated = record if abstain else None
    warnings = []
    if abstain and calibrated is None and layout.threshold.is_file():
        warnings.append(
            f"{layout.threshold} was calibrated for other weights (the run was trained "
            "further); no 'uncertain' verdicts. Re-run `bnnkit evaluate`."
        )
    inference = (calibrated or {}).get("inference_overrides")
    recipe, detector, method, _meta = load_run(layout.root, device, inference=inference)
    warnings += _temperature_warnings(layout, method, calibrated)
    rule = abstention_rule(calibrated, max_uncertainty) if abstain else None
    scorer = _scorer(layout, rule, calibrated, tiles)
    k = posterior_samples(recipe, "predict", requested=samples, calibrated=calibrated)
    files, missing, skipped = collect_files(inputs)
    if skipped:
        warnings.append(skipped_message(skipped))
    tiling = None
    if tiles:
        try:
            tiling = Tiling(recipe.data.image_size, tile_overlap, max_tiles, tile_reduce)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    warnings += _tiling_warnings(recipe, tiling, calibrated)
    folder = None
    if explain:
        folder = explain_dir or layout.root / "explain"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create explain folder {folder}: {exc}") from None

    rows: dict[int, dict[str, Any]] = {}
    names = list(recipe.data.train_generators) if recipe.data.labels == "generator" else None
    if names and tiling is not None:
        raise UsageError('--tiles does not support a run with data.labels = "generator" yet')

    def row(idx: int, part: Predictions, j: int, extra: dict[str, Any]) -> None:
        u, p = part.uncertainty(j), float(part.p_fake[j])
        scored: dict[str, Any] = {}
        if rule is not None:
            scored = {"score": rule["score"], "score_value": float(part.score(rule["score"])[j])}
        values = {**u, **({rule["score"]: scored["score_value"]} if rule else {})}
        called = verdict(p, values, p_threshold, rule)
        if names:  # data.labels = "generator"
            extra = {**extra, **attribution_fields(part, j, names, called, rule)}
        rows[idx] = {"path": str(files[idx]), "verdict": called,
                     "p_fake": p, **u, **scored, **extra, "error": None}  # fmt: skip

    torch.manual_seed(recipe.seed)
    if tiling is None:
        hook = explain_hook(detector, method, files, rows, k, device, folder) if explain else None
        broken = _predict_crops(
            recipe, detector, method, files, k, device, batch_size, row, hook, scorer
        )
    else:
        explainer = (
            tiled_explain_hook(detector, method, files, rows, k, device, folder)
            if explain
            else None
        )

        def on_image(result: TileResult) -> None:
            row(result.index, result.record, 0, {f: result.spread[f] for f in TILE_FIELDS})
            if explainer is not None:
                explainer(result)

        loader = make_loader(
            FileDataset(files, TiledTransform(tiling, detector.normalisation)), 1,
            seed=recipe.seed, workers=0, device=device, collate_fn=first_item,
        )  # fmt: skip
        _, _, stats = stream_tiled(
            detector, method, loader, k, device, batch_size=batch_size, reduce=tiling.reduce,
            on_image=on_image, keep_maps=explain,
        )  # fmt: skip
        broken = stats.broken
    tiled, name = tiling is not None, rule["score"] if rule else None
    out = [rows[i] for i in sorted(rows)]
    out += [error_row(b.path, b.reason, tiled, name) for b in broken]
    out += [error_row(p, why, tiled, name) for p, why in missing.items()]
    if names:
        out = [{**dict.fromkeys(ATTRIBUTION_FIELDS), **r} for r in out]
    applied = getattr(method, TEMPERATURE_ATTR, None)
    return PredictResult(
        out, k, rule, folder, warnings, tiling, skipped, applied, p_threshold, names
    )


def attribution_fields(
    part: Predictions, j: int, names: list[str], called: str, rule: dict[str, Any] | None
) -> dict[str, Any]:
    """``generator`` (the most likely training generator; None when the image is called real)
    and ``known`` (False when the abstention rule calls it uncertain; None without a rule)."""
    generator = None if called == "real" else generator_of(part.class_probs[j : j + 1], names)[0]
    return {"generator": generator, "known": None if rule is None else called != "uncertain"}


def _temperature_warnings(layout: RunLayout, method, calibrated: dict | None) -> list[str]:
    """Apply the run's temperature (``bnnkit calibrate``) to ``method``; warn when it is stale
    or differs from the one the abstention threshold was calibrated with."""
    record, stale = apply_run_temperature(layout.root, method)
    out = [stale] if stale else []
    t = record["temperature"] if record else None
    if calibrated is not None and calibrated.get("temperature") != t:

        def said(temp: float | None) -> str:
            return "no temperature" if temp is None else f"temperature {temp:.4g}"

        out.append(
            f"{layout.threshold} was calibrated with {said(calibrated.get('temperature'))}, "
            f"predictions use {said(t)}; re-run `bnnkit evaluate` to recalibrate the threshold."
        )
    return out


def _predict_crops(recipe, detector, method, files, k, device, batch_size, row, explainer, scorer):
    """One centre crop (or resize) per image, as in training; ``row(idx, part, j, {})`` per
    image, then ``explainer`` per batch. Returns the unreadable files."""
    d = recipe.data
    transform = build_transform(
        d.image_size, d.preprocess, train=False, norm=detector.normalisation
    )
    loader = make_loader(
        FileDataset(files, transform, draft_size(d.preprocess, d.image_size, d.jpeg_draft)),
        batch_size,
        seed=recipe.seed,
        workers=0,
        device=device,
    )

    def on_batch(batch, images, fmap, part: Predictions) -> None:
        for j, idx in enumerate(batch.indices.tolist()):
            row(idx, part, j, {})
        if explainer is not None:
            explainer(batch, images, fmap, part)

    _, stats = stream_predictive(
        detector, method, loader, k, device, on_batch=on_batch, scorer=scorer
    )
    return stats.broken
