"""``bnnkit evaluate``: GenImage's protocol plus the uncertainty metrics a paper reports.

One call evaluates a run on the validation split of the generators it was trained on ("seen")
and of the unseen ones (``--ood``, default the recipe's ``data.holdout``), first on clean images
and then under each requested degradation (``--degrade``, see :mod:`bnnkit.data.degrade`). The
backbone runs once per image and condition; the K posterior samples are drawn over the head only.
The abstention thresholds and seen-fitted scores (``fused``) are fitted on the run's calibration
images (:mod:`bnnkit.data.splits`, streamed once, clean), never on the images reported; a run
without a calibration split fits them on the seen validation images, with a warning.

What it writes into the run directory: :mod:`bnnkit.engine.evaluate.write`.

Scores (``--score``, :mod:`bnnkit.engine.evaluate.score_set`): every score plugin is computed per
batch while streaming, from the pooled features and the K posterior samples; OOD detection,
selective prediction and abstention are reported for each (``abstention.by_score``). Abstention uses
``rel_mahalanobis`` by default (pre-registered on ``benchmarks/unseen.py``: chosen on data seed 0,
reported on other seeds in benchmarks/README.md; ``entropy`` with ``--tiles``), ``--abstain-on
NAME`` any score.

Only orchestration: the metrics are :mod:`bnnkit.metrics.protocol`, the threshold file
:mod:`bnnkit.run.threshold`, the CSV writer :mod:`bnnkit.report.predictions`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bnnkit.data.dataset import ImageDataset, build_transform, draft_size
from bnnkit.data.debias import debias_of, debias_record
from bnnkit.data.degrade import ATTACKS, Degradation
from bnnkit.data.index import DEFAULT_CACHE_DIR
from bnnkit.data.layouts import Sample, data_notes, layout_record
from bnnkit.data.splits import CALIBRATION_SPLIT, val_items
from bnnkit.engine.build import load_run
from bnnkit.engine.device import resolve_device
from bnnkit.engine.evaluate import attack
from bnnkit.engine.evaluate.options import (
    abstention_levels,
    calibration_images,
    evaluation_debias,
    inference_overrides,
    resolve_ood,
    warn,
)
from bnnkit.engine.evaluate.partial import PartialResults, evaluation_key
from bnnkit.engine.evaluate.write import CLEAN, run_identity, score_timing, timing_record
from bnnkit.engine.features.cache import cached_condition, run_feature_cache
from bnnkit.engine.features.loop import (
    Scorer,
    StreamStats,
    make_loader,
    posterior_samples,
    stream_predictive,
    worker_count,
)
from bnnkit.engine.features.tiles import TiledTransform, Tiling, make_tiling, run_tiled, tiling_of
from bnnkit.engine.posthoc.abstention import fit_abstention
from bnnkit.engine.posthoc.calibrate import apply_run_temperature, temperature_metrics
from bnnkit.engine.posthoc.score_fit import (
    FIT_LIMIT,
    fit_sources,
    fit_train_scores,
)
from bnnkit.engine.posthoc.score_set import evaluation_scores, score_entries
from bnnkit.engine.posthoc.threshold import (
    guarantee_block,
    verdict_block,
    write_threshold_file,
)
from bnnkit.errors import UsageError
from bnnkit.metrics.attribution import attribution_block
from bnnkit.metrics.protocol import (
    DEFAULT_ABSTAIN_SCORE,
    UNFITTED_ABSTAIN_SCORE,
    abstention_metrics,
    clean_json,
    condition_metrics,
)
from bnnkit.metrics.records import Predictions
from bnnkit.report.predictions import predictions_csv
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import THRESHOLD_FILE, RunLayout

SCHEMA_VERSION = 3


@dataclass(frozen=True)
class _Chain:
    """A degradation on the decoded PIL image, then the evaluation transform (picklable)."""

    first: Degradation
    then: Any

    def __call__(self, image):
        return self.then(self.first(image))


def _run_condition(
    detector, method, items: list[Sample], generators: list[str], transform, recipe, device,
    k: int, progress, label: str, cache_dir: Path | None = None, scorer: Scorer | None = None,
) -> tuple[Predictions, StreamStats]:  # fmt: skip
    d, perturb = recipe.data, attack.step(transform, detector, method, k)  # fgsm/pgd, else None
    dataset = ImageDataset(items, transform, generators, debias=debias_of(recipe),
                           draft=draft_size(d.preprocess, d.image_size, d.jpeg_draft))  # fmt: skip
    if tiling_of(transform) is not None:  # a grid of crops per image (never the feature cache)
        return run_tiled(detector, method, dataset, recipe, device, k, progress, label)
    if cache_dir is not None and label in (CLEAN, CALIBRATION_SPLIT):  # frozen: the cache
        split = "val" if label == CLEAN else CALIBRATION_SPLIT
        return cached_condition(
            detector, method, dataset, recipe, device, k, cache_dir, progress, scorer, split
        )
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
    return stream_predictive(detector, method, loader, k, device,
        lambda n: progress.advance(task, n), scorer=scorer, perturb=perturb)  # fmt: skip


def _run_conditions(
    detector, method, items, generators, recipe, device, k, degradations, console, cache_dir=None,
    partial: PartialResults | None = None, tiling: Tiling | None = None, scorer=None, fit=None,
    calibration: list[Sample] | None = None,
) -> tuple[dict[str, Predictions], dict[str, StreamStats]]:  # fmt: skip
    """Every condition (clean first, then each degradation) through the streaming loop; those
    ``partial`` holds from an interrupted evaluation are loaded, each one computed is stored.
    ``fit(progress)`` runs first, under the same progress display (the scores' fits). The
    ``calibration`` images (clean only) come back under the key ``calibration``."""
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
        if fit is not None:
            fit(progress)
        conditions = [(CALIBRATION_SPLIT, None)] if calibration else []
        conditions += [(CLEAN, None)] + [(deg.name, deg) for deg in degradations]
        for name, deg in conditions:
            transform = base if deg is None else _Chain(deg, base)
            got = partial.load(name) if partial is not None else None
            if got is not None and console is not None:
                console.print(f"evaluate: {name}: reused from an interrupted evaluation")
            if got is None:
                got = _run_condition(
                    detector, method, calibration if name == CALIBRATION_SPLIT else items,
                    generators, transform, recipe, device, k, progress, name, cache_dir, scorer,
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
    guarantee: float | None = None,
    max_false_alarm: float | None = None,
    abstain_on: str | None = None,
    plots: bool = True,
    overrides: list[str] | None = None,
    tiles: bool | dict[str, Any] = False,
    scores: list[str] | None = None,
    score_options: dict[str, dict[str, Any]] | None = None,
    fit_limit: int = FIT_LIMIT,
    debias: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate a run, write ``metrics.json``, ``timing.json``, ``threshold.json``,
    ``predictions.csv``, ``plots/*.png`` (unless ``plots=False``) and ``report.md``; return the
    metrics dict (what ``metrics.json`` holds). ``overrides``: ``inference.KEY=VALUE`` items
    (see :func:`inference_overrides`), recorded in ``metrics.json`` and ``threshold.json``;
    so is ``tiles`` (:func:`~bnnkit.engine.features.tiles.make_tiling`: each image judged from
    a grid of crops instead of one centre crop). ``scores``: score plugin names reported (default
    ``DEFAULT_SCORES``), with ``score_options`` per name; ``abstain_on``: the score the
    threshold is calibrated on (any score); ``fit_limit``: training images a fitted score is
    fitted on at most (when it has no fit yet); ``debias``: :func:`evaluation_debias`."""
    from bnnkit.report import write_report

    t_start = time.perf_counter()
    inference = inference_overrides(overrides)
    layout = RunLayout(run_dir)
    run_dir = layout.root
    recipe, detector, method, meta = load_run(run_dir, device, inference=inference)
    temperature, stale = apply_run_temperature(run_dir, method)  # bnnkit calibrate's fit
    if stale:
        warn(stale, console)
    t_value = temperature["temperature"] if temperature else None
    if data_root:
        recipe.data.root = data_root
    evaluation_debias(recipe, debias)  # --debias: data.debias for this evaluation
    coverage, guarantee = abstention_levels(recipe, coverage, guarantee, fit_limit)
    ood_gens = resolve_ood(recipe, ood)
    seen = list(recipe.data.train_generators)
    generators = seen + ood_gens
    n_seen = len(seen)
    k = posterior_samples(recipe, "evaluate", requested=samples)
    tiling = make_tiling(recipe.data.image_size, tiles)
    if abstain_on is None:  # the pre-registered default; a tiled image has no feature vector
        abstain_on = UNFITTED_ABSTAIN_SCORE if tiling is not None else DEFAULT_ABSTAIN_SCORE
    chosen = evaluation_scores(scores, abstain_on, score_options, tiled=tiling is not None)
    abstain_on, requested = chosen.abstain_on, chosen.requested
    degradations = list(degradations or [])
    d = recipe.data
    items = val_items(recipe, generators, DEFAULT_CACHE_DIR)
    for note in data_notes(d.root, d.layout) if console is not None else ():
        console.print(note, markup=False)
    cal_items = calibration_images(recipe, console)
    fit_info: dict[str, Any] = {}
    scorer = chosen.scorer

    def fit(progress) -> None:  # the train fits (loaded or made), shown with the conditions
        fit_info.update(fit_train_scores(
            scorer, run_dir=run_dir, recipe=recipe, detector=detector, method=method,
            meta=meta, device=device, k=k, fit_limit=fit_limit, progress=progress,
        ))  # fmt: skip
        chosen.scores.update(scorer)  # the fitted objects replace the unfitted ones

    key_scores = {"scores": chosen.key(), "fit_limit": fit_limit} if scorer else {}
    partial = PartialResults(layout, evaluation_key(
        layout, recipe=recipe, samples=k, generators=generators,
        inference={**inference, **({"tiles": tiling.to_dict()} if tiling else {}),
                   **({"temperature": t_value} if t_value else {}), **key_scores},
        items=items + cal_items, device=device,
    ))  # fmt: skip
    t_fit = time.perf_counter()
    records, stats = _run_conditions(
        detector, method, items, generators, recipe, device, k, degradations, console,
        run_feature_cache(recipe, meta), partial, tiling, scorer, fit, cal_items,
    )  # fmt: skip
    clean = records[CLEAN]
    # every post-hoc fit: on the calibration images; a run without them: the seen val images
    calibration = records.pop(CALIBRATION_SPLIT, None)
    fit_on = calibration if cal_items else clean  # an empty record is refused just below
    n_cal = int((fit_on.generators < n_seen).sum())
    if not n_cal or not int((clean.generators < n_seen).sum()):
        which = "calibration images (training folders)" if cal_items else "validation images"
        raise UsageError(
            f"no readable {which} of the seen generators under '{d.root}'",
            hint="check the data with `bnnkit data check`",
        )
    fitted = fit_abstention(
        chosen, fit_on, records.values(), recipe=recipe, n_seen=n_seen, coverage=coverage,
        run_dir=run_dir, key=partial.key, split_halves=bool(cal_items),
        conformal=guarantee is not None,  # --guarantee: split-conformal thresholds
    )  # fmt: skip
    thresholds, crossfit, options = fitted.thresholds, fitted.crossfit, fitted.options
    metrics: dict[str, Any] = {
        **run_identity(SCHEMA_VERSION, run_dir, recipe, k),
        **({"inference_overrides": inference} if inference else {}),
        **({"tiles": tiling.to_dict()} if tiling else {}),
        **({"temperature": temperature_metrics(temperature)} if temperature else {}),
        "seed": recipe.seed,
        "split": "val",
        **layout_record(d.root, d.layout, generators),
        "image_size": d.image_size,
        "preprocess": d.preprocess,
        **({"debias": debias_record(d.debias, items)} if d.debias else {}),
        "seen_generators": seen,
        "ood_generators": ood_gens,
        "coverage_target": coverage,
        "scores": fit_sources(score_entries(chosen, run_dir), fitted.calibrated_on),
        **condition_metrics(clean, generators, n_seen, requested),
        "abstention": {
            **abstention_metrics(
                clean, generators, n_seen, thresholds, abstain_on, coverage, crossfit, options
            ),
            "calibration": {**fitted.calibrated_on, "file": THRESHOLD_FILE, **fitted.halves()},
            **guarantee_block(guarantee, fitted.score_rows, n_seen),
        },
        **verdict_block(max_false_alarm or recipe.eval.max_false_alarm, fit_on, clean, n_seen),
        **(
            {"attribution": attribution_block(clean, generators, n_seen)}
            if clean.attributed
            else {}
        ),  # fmt: skip
        "degradations": {},
        "broken_files": [{"path": b.path, "reason": b.reason} for b in stats[CLEAN].broken],
    }
    attacked = any(d.kind in ATTACKS for d in degradations)
    aimed = attack.target(detector, method, 2) if attacked else ""
    for deg in degradations:
        data = records[deg.name]
        metrics["degradations"][deg.name] = {
            **deg.record(),  # kind, value, values, severity, description
            **condition_metrics(data, generators, n_seen, requested),
            **attack.record(deg, records, thresholds[abstain_on], abstain_on, aimed),
            "abstention": abstention_metrics(
                data, generators, n_seen, thresholds, abstain_on, coverage, options=options
            ),
        }
    metrics = clean_json(metrics)
    atomic_write_text(layout.metrics, json.dumps(metrics, indent=2))
    write_threshold_file(
        run_dir, metrics, recipe, fitted, k=k, fit_info=fit_info,
        inference=inference, tiling=tiling, t_value=t_value,
    )  # fmt: skip
    paths = [s.path for s in items]
    atomic_write_text(
        layout.predictions, predictions_csv(records, paths, generators, n_seen, d.root)
    )
    partial.clear()  # metrics, threshold and predictions are written

    t_report = time.perf_counter()
    write_report(run_dir, metrics, clean, plots=plots)
    t_end = time.perf_counter()
    timing = timing_record(
        stats, clean, k, t_end - t_report, t_end - t_start, meta, device, partial.reused
    )
    timing["scores"] = score_timing(fit_info, fitted.seconds, fitted.seen_fit, t_fit - t_start)
    atomic_write_text(layout.timing, json.dumps(clean_json(timing), indent=2))
    return metrics


def evaluate_run_dir(
    path: Path,
    ood: Sequence[str] | None = None,
    *,
    samples: int | None = None,
    device: Any = "auto",
    console: Console | None = None,
    **options: Any,
) -> dict[str, Any]:
    """:func:`evaluate_run` as :meth:`bnnkit.api.Run.evaluate` and each protocol cell call it:
    ``device`` may be a name (``"auto"``), and a missing data root names ``--data-root``."""
    from bnnkit.run.data_root import data_root_hint

    dev, _ = resolve_device(device)
    with data_root_hint(path, options.get("data_root")):  # names --data-root
        return evaluate_run(
            path, ood=list(ood) if ood else None, samples=samples, device=dev,
            console=console, **options,
        )  # fmt: skip
