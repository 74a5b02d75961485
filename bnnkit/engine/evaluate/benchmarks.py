"""Several benchmarks in one evaluation (``bnnkit evaluate RUN --data NAME=ROOT[:LAYOUT]``).

Each benchmark is a data root in any layout (:mod:`bnnkit.data.layouts`, ``auto`` detects it);
every generator found there is evaluated on the validation split the layouts API chooses
(``index_split(..., "val")``): those among the run's ``data.train_generators`` count as seen,
the others as unseen (a benchmark whose generators are all unseen is the usual external test set).
``--data`` replaces the run's own validation data as what is reported (name the run's root as a
benchmark to report on it too); the run's own root is still read for its calibration images.

One pass: the calibration images, then each benchmark's images, go through the streaming loop
once (:func:`~bnnkit.engine.evaluate.run._run_conditions`; each benchmark its own stream, seeded
as a plain evaluation's, so the K posterior draws of an image do not depend on the other
benchmarks), and no feature is computed twice: the model is loaded, the scores fitted and the
calibration images streamed once for all benchmarks. The abstention thresholds and every
post-hoc fit come from the run's calibration split exactly as in a plain evaluation, never from
a benchmark; a benchmark's numbers therefore equal those of a plain evaluation of the same images
(in the same order: the seen generators in ``data.train_generators`` order, then the unseen ones
sorted by name).

``metrics.json`` then holds, besides the run's description: the top-level condition blocks
(``per_generator``, ``seen``, ``unseen``, ``ood``, ``abstention``, ...) of every benchmark's
images pooled, the generators named ``NAME/generator``; ``benchmarks`` {NAME: the same blocks
for that benchmark alone, plus ``root``, ``layout``, ``all`` (every image of it pooled) and
``abstention_all``}; and ``summary`` (mean and minimum over the benchmarks of ``all``'s
accuracy and AUROC). See docs/metrics-schema.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bnnkit.data.layouts import layout_record
from bnnkit.data.splits import CALIBRATION_SPLIT
from bnnkit.engine.build import load_run
from bnnkit.engine.device import resolve_device
from bnnkit.engine.evaluate.benchmark_parts import (
    Benchmark,
    benchmark_csv,
    block,
    merged_stats,
    parse_benchmarks,
    remap,
    resolve_benchmark,
    streamed_counts,
    summary,
)
from bnnkit.engine.evaluate.options import (
    abstention_levels,
    calibration_images,
    evaluation_debias,
    inference_overrides,
    warn,
)
from bnnkit.engine.evaluate.run import SCHEMA_VERSION, _run_conditions
from bnnkit.engine.evaluate.write import CLEAN, run_identity, score_timing, timing_record
from bnnkit.engine.features.cache import run_feature_cache
from bnnkit.engine.features.loop import StreamStats, posterior_samples
from bnnkit.engine.posthoc.abstention import fit_abstention
from bnnkit.engine.posthoc.calibrate import apply_run_temperature
from bnnkit.engine.posthoc.score_fit import (
    FIT_LIMIT,
    fit_sources,
    fit_train_scores,
)
from bnnkit.engine.posthoc.score_set import evaluation_scores, score_entries
from bnnkit.engine.posthoc.threshold import write_threshold_file
from bnnkit.errors import UsageError
from bnnkit.metrics.protocol import DEFAULT_ABSTAIN_SCORE, clean_json
from bnnkit.metrics.records import Predictions
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import THRESHOLD_FILE, RunLayout

__all__ = ["Benchmark", "evaluate_benchmarks", "evaluate_benchmarks_dir", "parse_benchmarks"]


def evaluate_benchmarks(
    run_dir: Path, benchmarks: list[Benchmark], *, samples: int | None = None,
    device: torch.device, console: Console | None = None, data_root: str | None = None,
    coverage: float | None = None, abstain_on: str | None = None, plots: bool = True,
    overrides: list[str] | None = None, scores: list[str] | None = None,
    score_options: dict[str, dict[str, Any]] | None = None, fit_limit: int = FIT_LIMIT,
    debias: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Evaluate a run on every benchmark in one pass; writes what
    :func:`~bnnkit.engine.evaluate.run.evaluate_run` writes (``predictions.csv`` with a
    ``benchmark`` column) and returns the metrics. ``data_root``: the run's own data (its
    calibration images), as ``--data-root``."""
    from bnnkit.report import write_report

    if not benchmarks:
        raise UsageError("no benchmark given (--data NAME=ROOT)")
    t_start = time.perf_counter()
    inference = inference_overrides(overrides)
    layout = RunLayout(run_dir)
    run_dir = layout.root
    recipe, detector, method, meta = load_run(run_dir, device, inference=inference)
    temperature, stale = apply_run_temperature(run_dir, method)
    if stale:
        warn(stale, console)
    if data_root:
        recipe.data.root = data_root
    evaluation_debias(recipe, debias)
    coverage, _ = abstention_levels(recipe, coverage, None, fit_limit)
    unsupported = [f"eval.{k} = {v}" for k in ("guarantee", "max_false_alarm")
                   if (v := getattr(recipe.eval, k)) is not None]  # fmt: skip
    if unsupported:  # else threshold.json would silently drop them and predict fall back
        raise UsageError(
            f"--data does not apply the run's {' and '.join(unsupported)} yet",
            hint="evaluate each benchmark on its own with --data-root, which applies them",
        )
    if not recipe.data.calibration:
        raise UsageError(
            "--data needs a run with a calibration split (data.calibration > 0): the thresholds "
            "and fits must come from images no benchmark holds",
            hint="evaluate each benchmark with --data-root, or retrain",
        )
    train = list(recipe.data.train_generators)
    k = posterior_samples(recipe, "evaluate", requested=samples)
    chosen = evaluation_scores(scores, abstain_on or DEFAULT_ABSTAIN_SCORE, score_options)
    abstain_on, requested = chosen.abstain_on, chosen.requested
    benches = [resolve_benchmark(b, recipe, train) for b in benchmarks]
    for b in benches if console is not None else ():
        console.print(
            f"benchmark {b.spec.name}: {b.spec.root} ({b.layout} layout), {len(b.items)} images; "
            f"seen: {', '.join(b.seen) or 'none'}; unseen: {', '.join(b.unseen) or 'none'}",
            markup=False,
        )
    cal_items = calibration_images(recipe, console)  # the run's own root
    pooled_seen = [b.pooled(g) for b in benches for g in b.seen]
    pooled = pooled_seen + [b.pooled(g) for b in benches for g in b.unseen]
    stream_gens = train + pooled  # calibration images: the first len(train) indices
    fit_info: dict[str, Any] = {}
    scorer = chosen.scorer

    def fit(progress) -> None:
        fit_info.update(fit_train_scores(
            scorer, run_dir=run_dir, recipe=recipe, detector=detector, method=method,
            meta=meta, device=device, k=k, fit_limit=fit_limit, progress=progress,
        ))  # fmt: skip
        chosen.scores.update(scorer)

    t_fit = time.perf_counter()
    cache = run_feature_cache(recipe, meta)
    records: dict[str, Predictions] = {}  # benchmark -> its clean record (stream indices)
    stats: dict[str, StreamStats] = {}
    for i, b in enumerate(benches):  # each its own stream, seeded as a plain evaluation's
        got, got_stats = _run_conditions(
            detector, method, b.items, stream_gens, recipe, device, k, [], console, cache,
            None, None, scorer, None if i else fit, None if i else cal_items,
        )  # fmt: skip
        if not i:
            stats[CALIBRATION_SPLIT] = got_stats[CALIBRATION_SPLIT]
            fit_on = got[CALIBRATION_SPLIT]
        records[b.spec.name], stats[f"benchmark:{b.spec.name}"] = got[CLEAN], got_stats[CLEAN]
    stats[CLEAN] = merged_stats([stats[f"benchmark:{b.spec.name}"] for b in benches])
    n_cal = int((fit_on.generators < len(train)).sum())
    if not n_cal:
        raise UsageError(f"no readable calibration images under the run's '{recipe.data.root}'")
    key = json.dumps([[b.spec.name, b.spec.root, b.layout] for b in benches] + [n_cal, k])
    fitted = fit_abstention(
        chosen, fit_on, records.values(), recipe=recipe, n_seen=len(train), coverage=coverage,
        run_dir=run_dir, key=key,
    )  # fmt: skip
    thresholds, crossfit, options = fitted.thresholds, fitted.crossfit, fitted.options
    args = (requested, thresholds, abstain_on, coverage, options, crossfit)

    shift = torch.full((len(stream_gens),), -1, dtype=torch.long)
    shift[len(train) :] = torch.arange(len(pooled))
    all_pooled = Predictions.concat([remap(r, shift) for r in records.values()])
    per_bench: dict[str, dict[str, Any]] = {}
    locals_: dict[str, Predictions] = {}
    for b in benches:
        lut = torch.full((len(stream_gens),), -1, dtype=torch.long)
        for i, g in enumerate(b.generators):
            lut[len(train) + pooled.index(b.pooled(g))] = i
        rec = locals_[b.spec.name] = remap(records[b.spec.name], lut)
        per_bench[b.spec.name] = {
            "root": str(b.spec.root),
            **layout_record(b.spec.root, b.layout, b.generators),
            "split": "val",
            "generators": b.generators,
            "seen_generators": b.seen,
            "ood_generators": b.unseen,
            "n_images": len(rec),
            **block(rec, b.generators, len(b.seen), *args),
            "broken_files": [
                {"path": x.path, "reason": x.reason}
                for x in stats[f"benchmark:{b.spec.name}"].broken
            ],
        }
    metrics: dict[str, Any] = {
        **run_identity(SCHEMA_VERSION, run_dir, recipe, k),
        **({"inference_overrides": inference} if inference else {}),
        "seed": recipe.seed,
        "split": "val",
        "image_size": recipe.data.image_size,
        "preprocess": recipe.data.preprocess,
        "train_generators": train,
        "seen_generators": pooled_seen,
        "ood_generators": pooled[len(pooled_seen) :],
        "coverage_target": coverage,
        "scores": fit_sources(score_entries(chosen, run_dir), fitted.calibrated_on),
        **block(all_pooled, pooled, len(pooled_seen), *args),
        "benchmarks": per_bench,
        "summary": summary(per_bench),
        "degradations": {},
        "broken_files": [{"path": x.path, "reason": x.reason} for x in stats[CLEAN].broken],
    }
    metrics["abstention"]["calibration"] = {**fitted.calibrated_on, "file": THRESHOLD_FILE}
    if temperature:
        from bnnkit.engine.posthoc.calibrate import temperature_metrics

        metrics["temperature"] = temperature_metrics(temperature)
    metrics = clean_json(metrics)
    atomic_write_text(layout.metrics, json.dumps(metrics, indent=2))
    write_threshold_file(
        run_dir, metrics, recipe, fitted, k=k, fit_info=fit_info,
        inference=inference, tiling=None,
        t_value=temperature["temperature"] if temperature else None,
    )  # fmt: skip
    atomic_write_text(layout.predictions, benchmark_csv(benches, locals_))
    t_report = time.perf_counter()
    write_report(run_dir, metrics, all_pooled, plots=plots)
    t_end = time.perf_counter()

    timing = timing_record(
        stats, all_pooled, k, t_end - t_report, t_end - t_start, meta, device, reused=[]
    )
    timing["scores"] = score_timing(fit_info, fitted.seconds, fitted.seen_fit, t_fit - t_start)
    timing["images_streamed"] = streamed_counts(records, fit_on, stats)
    atomic_write_text(layout.timing, json.dumps(clean_json(timing), indent=2))
    return metrics


def evaluate_benchmarks_dir(
    path: Path, benchmarks: list[Benchmark] | list[str], *, device: Any = "auto", **options: Any
) -> dict[str, Any]:
    """:func:`evaluate_benchmarks` as the CLI and :meth:`bnnkit.api.Run.evaluate` call it:
    ``benchmarks`` may be ``NAME=ROOT[:LAYOUT]`` strings, ``device`` a name; a missing run data
    root (the calibration images) names ``--data-root``."""
    from bnnkit.run.data_root import data_root_hint

    specs = [b for b in benchmarks if isinstance(b, Benchmark)]
    specs += parse_benchmarks([b for b in benchmarks if isinstance(b, str)])
    dev, _ = resolve_device(device)
    with data_root_hint(path, options.get("data_root")):
        return evaluate_benchmarks(path, specs, device=dev, **options)
