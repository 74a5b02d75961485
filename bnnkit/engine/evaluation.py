"""``bnnkit evaluate``: GenImage's protocol plus the uncertainty metrics a paper reports.

One call evaluates a run on the validation split of the generators it was trained on ("seen")
and of the unseen ones (``--ood``, default the recipe's ``data.holdout``), first on clean images
and then under each requested degradation (``--degrade``, see :mod:`bnnkit.data.degrade`). The
backbone runs once per image and condition; the K posterior samples are drawn over the head only.

Written to the run directory:

- ``metrics.json`` (``schema_version`` 2, every key documented in ``docs/metrics-schema.md``):
  only numbers that depend on the run, the data and the options, so two same-seed runs give
  identical files. Timings go to ``timing.json``.
- ``threshold.json``: the abstention threshold calibrated on seen-generator validation images for
  the target coverage; ``bnnkit predict`` reads it to answer ``uncertain``.
- ``predictions.csv``: per image and condition, p(fake) and the total / aleatoric / epistemic
  uncertainty (nats), so any table can be recomputed.
- ``plots/*.png`` and ``report.md`` (see :mod:`bnnkit.report`).

Abstention uses the **total** predictive uncertainty (entropy of the mean predictive) by default,
``--abstain-on epistemic`` switches to the mutual information. Why total: abstaining is meant to
avoid wrong verdicts, and the total entropy ranks likely errors on seen data best (it contains the
epistemic part, total = aleatoric + epistemic); it is also defined for every method, whereas a
deterministic method (MAP) has epistemic = 0 for every image, which would make the threshold
abstain on nothing. ``metrics.json`` reports both scores side by side (``abstention.by_score``),
so the choice can be checked on the unseen generators' errors.

This module only orchestrates: the metrics are pure functions in :mod:`bnnkit.metrics.protocol`,
the threshold file is :mod:`bnnkit.run.threshold`, the CSV writer :mod:`bnnkit.report.predictions`.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bnnkit.data.dataset import ImageDataset, build_transform, draft_size
from bnnkit.data.degrade import Degradation
from bnnkit.data.genimage import Sample, check_generator_name, index_split
from bnnkit.data.index import DEFAULT_CACHE_DIR
from bnnkit.engine.build import load_run
from bnnkit.engine.cache import cached_condition, run_feature_cache
from bnnkit.engine.calibrate import apply_run_temperature, temperature_metrics
from bnnkit.engine.eval_partial import PartialResults, evaluation_key
from bnnkit.engine.loop import (
    StreamStats,
    make_loader,
    posterior_samples,
    stream_predictive,
    worker_count,
)
from bnnkit.engine.tiles import TiledTransform, Tiling, make_tiling, run_tiled, tiling_of
from bnnkit.errors import UsageError
from bnnkit.metrics.protocol import (
    ABSTAIN_SCORES,
    DEFAULT_ABSTAIN_SCORE,
    abstention_metrics,
    calibrate_thresholds,
    clean_json,
    condition_metrics,
)
from bnnkit.metrics.records import Predictions
from bnnkit.overrides import parse_value
from bnnkit.report.predictions import predictions_csv
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import THRESHOLD_FILE, RunLayout
from bnnkit.run.threshold import threshold_record, write_threshold

SCHEMA_VERSION = 2
CLEAN = "clean"


def resolve_ood(recipe, ood: list[str] | None) -> list[str]:
    names = [check_generator_name(g) for g in (ood or recipe.data.holdout)]
    seen = set(recipe.data.train_generators)
    trained = [g for g in names if g in seen]
    if trained:
        raise UsageError(
            f"--ood {', '.join(trained)}: this run was trained on {', '.join(trained)}, so it is "
            "not an unseen generator",
            hint=f"unseen here: {', '.join(sorted(set(recipe.data.holdout) - seen)) or 'none'}",
        )
    return list(dict.fromkeys(names))


def inference_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``inference.KEY=VALUE`` items (``bnnkit evaluate --set``) as ``{KEY: value}``: options of
    the run's inference method that apply at evaluation time (e.g. ``prior_precision`` of
    kflaplace). Anything else, or the method's name, is refused."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        head, _, name = key.strip().partition(".")
        if not sep or head != "inference" or not name or "." in name or name == "name":
            raise UsageError(
                f"--set {item!r}: evaluate takes only inference.KEY=VALUE (an option of the "
                "run's inference method)",
                hint="e.g. --set inference.prior_precision=10 for a kflaplace run",
            )
        out[name] = parse_value(value.strip())
    return out


@dataclass(frozen=True)
class _Chain:
    """A degradation on the decoded PIL image, then the evaluation transform (picklable)."""

    first: Degradation
    then: Any

    def __call__(self, image):
        return self.then(self.first(image))


def _run_condition(
    detector, method, items: list[Sample], generators: list[str], transform, recipe, device,
    k: int, progress, label: str, cache_dir: Path | None = None,
) -> tuple[Predictions, StreamStats]:  # fmt: skip
    d = recipe.data
    dataset = ImageDataset(
        items, transform, generators, draft=draft_size(d.preprocess, d.image_size, d.jpeg_draft)
    )
    if tiling_of(transform) is not None:  # a grid of crops per image (never the feature cache)
        return run_tiled(detector, method, dataset, recipe, device, k, progress, label)
    if cache_dir is not None and label == CLEAN:  # a frozen run: no backbone pass once cached
        return cached_condition(detector, method, dataset, recipe, device, k, cache_dir, progress)
    loader = make_loader(
        dataset,
        recipe.eval.batch_size,
        shuffle=False,
        seed=recipe.seed,
        workers=worker_count(recipe.data.num_workers, device),
        device=device,
    )
    task = progress.add_task(f"evaluate: {label}", total=len(dataset))
    torch.manual_seed(recipe.seed)  # same draws for every condition and every run
    return stream_predictive(
        detector, method, loader, k, device, lambda n: progress.advance(task, n)
    )


def _run_conditions(
    detector, method, items, generators, recipe, device, k, degradations, console, cache_dir=None,
    partial: PartialResults | None = None, tiling: Tiling | None = None,
) -> tuple[dict[str, Predictions], dict[str, StreamStats]]:  # fmt: skip
    """Every condition (clean first, then each degradation) through the streaming loop; those
    ``partial`` holds from an interrupted evaluation are loaded, each one computed is stored."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    d = recipe.data
    base = build_transform(d.image_size, d.preprocess, train=False, norm=detector.normalisation)
    if tiling is not None:
        base = TiledTransform(tiling, detector.normalisation)
    records: dict[str, Predictions] = {}
    stats: dict[str, StreamStats] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=console is None,
    ) as progress:
        for deg in [None, *degradations]:
            name = CLEAN if deg is None else deg.name
            transform = base if deg is None else _Chain(deg, base)
            got = partial.load(name) if partial is not None else None
            if got is not None and console is not None:
                console.print(f"evaluate: {name}: reused from an interrupted evaluation")
            if got is None:
                got = _run_condition(
                    detector, method, items, generators, transform, recipe, device, k, progress,
                    name, cache_dir,
                )  # fmt: skip
                if partial is not None:
                    partial.save(name, *got)
            records[name], stats[name] = got
    return records, stats


def evaluate_run(
    run_dir: Path,
    *,
    ood: list[str] | None = None,
    samples: int | None = None,
    device: torch.device,
    console: Console | None = None,
    data_root: str | None = None,
    degradations: list[Degradation] | None = None,
    coverage: float | None = None,
    abstain_on: str = DEFAULT_ABSTAIN_SCORE,
    plots: bool = True,
    overrides: list[str] | None = None,
    tiles: bool | dict[str, Any] = False,
) -> dict[str, Any]:
    """Evaluate a run, write ``metrics.json``, ``timing.json``, ``threshold.json``,
    ``predictions.csv``, ``plots/*.png`` (unless ``plots=False``) and ``report.md``; return the
    metrics dict (what ``metrics.json`` holds). ``overrides``: ``inference.KEY=VALUE`` items
    (see :func:`inference_overrides`), recorded in ``metrics.json`` and ``threshold.json``;
    so is ``tiles`` (:func:`~bnnkit.engine.tiles.make_tiling`: each image judged from a grid
    of crops instead of one centre crop)."""
    from bnnkit.plugins import get_registry
    from bnnkit.report import write_report

    if abstain_on not in ABSTAIN_SCORES:
        raise UsageError(f"--abstain-on {abstain_on!r}: choose one of {', '.join(ABSTAIN_SCORES)}")
    inference = inference_overrides(overrides)
    layout = RunLayout(run_dir)
    run_dir = layout.root
    recipe, detector, method, meta = load_run(run_dir, device, inference=inference)
    temperature, stale = apply_run_temperature(run_dir, method)  # bnnkit calibrate's fit
    if stale:
        warnings.warn(stale, stacklevel=2)
        if console is not None:
            console.print(f"[yellow]warning:[/] {stale}")
    t_value = temperature["temperature"] if temperature else None
    if data_root:
        recipe.data.root = data_root
    coverage = recipe.eval.coverage if coverage is None else float(coverage)
    if not 0.0 < coverage <= 1.0:
        raise UsageError(f"--coverage {coverage}: must be in (0, 1], e.g. 0.95")
    ood_gens = resolve_ood(recipe, ood)
    seen = list(recipe.data.train_generators)
    generators = seen + ood_gens
    n_seen = len(seen)
    k = posterior_samples(recipe, "evaluate", requested=samples)
    tiling = make_tiling(recipe.data.image_size, tiles)
    degradations = list(degradations or [])
    d = recipe.data
    items = index_split(
        d.root, generators, "val", limit=d.val_limit, balance=d.balance, seed=recipe.seed,
        cache_dir=DEFAULT_CACHE_DIR,
    )  # fmt: skip
    t_start = time.perf_counter()
    partial = PartialResults(layout, evaluation_key(
        layout, recipe=recipe, samples=k, generators=generators,
        inference={**inference, **({"tiles": tiling.to_dict()} if tiling else {}),
                   **({"temperature": t_value} if t_value else {})},
        items=items, device=device,
    ))  # fmt: skip
    records, stats = _run_conditions(
        detector, method, items, generators, recipe, device, k, degradations, console,
        run_feature_cache(recipe, meta), partial, tiling,
    )  # fmt: skip
    clean = records[CLEAN]
    n_cal = int((clean.generators < n_seen).sum())
    if not n_cal:
        raise UsageError(
            f"no readable validation images of the seen generators under '{d.root}'",
            hint="check the data with `bnnkit data check`",
        )
    thresholds, crossfit = calibrate_thresholds(clean, n_seen, coverage)
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": run_dir.name,
        "recipe": recipe.name,
        "method": recipe.inference.name,
        "head": recipe.head_name(get_registry()),
        "backbone": recipe.model.backbone.name,
        "attention": recipe.model.attention.name,
        "samples": k,
        **({"inference_overrides": inference} if inference else {}),
        **({"tiles": tiling.to_dict()} if tiling else {}),
        **({"temperature": temperature_metrics(temperature)} if temperature else {}),
        "seed": recipe.seed,
        "split": "val",
        "image_size": d.image_size,
        "preprocess": d.preprocess,
        "seen_generators": seen,
        "ood_generators": ood_gens,
        "coverage_target": coverage,
        **condition_metrics(clean, generators, n_seen),
        "abstention": {
            **abstention_metrics(
                clean, generators, n_seen, thresholds, abstain_on, coverage, crossfit
            ),
            "calibration": {"split": "val", "generators": seen, "n": n_cal, "file": THRESHOLD_FILE},
        },
        "degradations": {},
        "broken_files": [{"path": b.path, "reason": b.reason} for b in stats[CLEAN].broken],
    }
    for deg in degradations:
        data = records[deg.name]
        metrics["degradations"][deg.name] = {
            "kind": deg.kind,
            "value": deg.value,
            "description": deg.describe(),
            **condition_metrics(data, generators, n_seen),
            "abstention": abstention_metrics(
                data, generators, n_seen, thresholds, abstain_on, coverage
            ),
        }
    metrics = clean_json(metrics)
    atomic_write_text(layout.metrics, json.dumps(metrics, indent=2))
    record = threshold_record(
        score=abstain_on,
        thresholds=thresholds,
        crossfit=crossfit,
        coverage=coverage,
        coverage_seen=metrics["abstention"]["by_score"][abstain_on]["seen"]["coverage"],
        samples=k,
        method=recipe.inference.name,
        seen=seen,
        n_calibration=n_cal,
        run_dir=run_dir,
    )
    if inference:
        record["inference_overrides"] = inference
    if tiling:
        record["tiles"] = tiling.to_dict()
    if t_value:
        record["temperature"] = t_value
    write_threshold(run_dir, record)
    paths = [s.path for s in items]
    atomic_write_text(
        layout.predictions, predictions_csv(records, paths, generators, n_seen, d.root)
    )
    partial.clear()  # metrics, threshold and predictions are written

    t_report = time.perf_counter()
    write_report(run_dir, metrics, clean, plots=plots)
    t_end = time.perf_counter()
    c = stats[CLEAN]
    n = max(len(clean), 1)
    timing = {
        "conditions": {
            name: {"features_seconds": s.features_seconds, "sampling_seconds": s.sampling_seconds}
            for name, s in stats.items()
        },
        "images": len(clean),
        "samples": k,
        "features_seconds": c.features_seconds,
        "sampling_seconds": c.sampling_seconds,
        "predict_seconds_per_image": (c.features_seconds + c.sampling_seconds) / n,
        "report_seconds": t_end - t_report,
        "total_seconds": t_end - t_start,
        "train_seconds": meta.get("train_seconds"),
        "device": str(device),
        "reused_conditions": partial.reused,
    }
    atomic_write_text(layout.timing, json.dumps(clean_json(timing), indent=2))
    return metrics
