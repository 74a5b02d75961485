"""What :func:`bnnkit.engine.evaluate.run.evaluate_run` writes besides ``metrics.json``: the
abstention threshold (``threshold.json``, through :mod:`bnnkit.run.threshold`) and the timing
record (``timing.json``), plus how the calibration images were shared.

Everything an evaluation writes to the run directory:

- ``metrics.json`` (``schema_version`` 3, every key documented in ``docs/metrics-schema.md``):
  only numbers that depend on the run, the data and the options, so two same-seed runs give
  identical files. Timings go to ``timing.json``.
- ``threshold.json``: the abstention threshold for the target coverage, on the ``--abstain-on``
  score; ``bnnkit predict`` reads it to answer ``uncertain``.
- ``predictions.csv``: per image and condition, p(fake), the total / aleatoric / epistemic
  uncertainty (nats) and every score's value, so any table can be recomputed.
- ``scores/*``: the fits of fitted scores (:mod:`bnnkit.engine.evaluate.score_fit`).
- ``plots/*.png`` and ``report.md`` (see :mod:`bnnkit.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnnkit.engine.evaluate.score_set import threshold_fits
from bnnkit.run.threshold import threshold_record, write_threshold

#: the name of the clean (undegraded) condition
CLEAN = "clean"


def halves(fit_part, threshold_part, fit_on, n_seen: int) -> dict[str, Any]:
    """How the calibration images were shared by seen-fitted scores and their thresholds."""
    if fit_part is fit_on:
        return {}
    n = [int((r.generators < n_seen).sum()) for r in (fit_part, threshold_part)]
    return {"seen_fitted_scores": {"fit_n": n[0], "threshold_n": n[1]}}


def write_threshold_file(
    run_dir: Path, metrics: dict[str, Any], recipe, *, abstain_on: str, thresholds, crossfit,
    coverage: float, k: int, seen: list[str], n_cal: int, calibrated_on, options, chosen,
    fit_info: dict[str, Any], seen_fit: dict[str, Any], inference, tiling, t_value,
) -> None:  # fmt: skip
    """Write ``threshold.json``: the threshold per score, what it was calibrated on and the
    options ``bnnkit predict`` must rebuild the scores with."""
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
        calibrated_on=calibrated_on,
        run_dir=run_dir,
        options=options,
        score_options=chosen.needed_options(),
        score_fit=threshold_fits(chosen, fit_info.get("fingerprint"), seen_fit["fingerprint"]),
    )
    if inference:
        record["inference_overrides"] = inference
    if tiling:
        record["tiles"] = tiling.to_dict()
    if t_value:
        record["temperature"] = t_value
    write_threshold(run_dir, record)


def timing_record(stats, clean, k, report_s, total_s, meta, device, partial) -> dict[str, Any]:
    """``timing.json`` without its ``scores`` block (:func:`score_timing`)."""
    c = stats[CLEAN]
    n = max(len(clean), 1)
    return {
        "conditions": {
            name: {
                "features_seconds": s.features_seconds,
                "sampling_seconds": s.sampling_seconds,
                "scores_seconds": s.scores_seconds,
            }
            for name, s in stats.items()
        },
        "images": len(clean),
        "samples": k,
        "features_seconds": c.features_seconds,
        "sampling_seconds": c.sampling_seconds,
        "scores_seconds": c.scores_seconds,
        "predict_seconds_per_image": (c.features_seconds + c.sampling_seconds) / n,
        "report_seconds": report_s,
        "total_seconds": total_s,
        "train_seconds": meta.get("train_seconds"),
        "device": str(device),
        "reused_conditions": partial.reused,
    }


def score_timing(fit_info: dict[str, Any], t_seen: float, seen_fit, setup_s: float) -> dict:
    """``timing.json``'s ``scores`` block: where the score fits' time went."""
    return {
        "fit_train_seconds": fit_info.get("seconds", 0.0),
        "fit_seen_seconds": t_seen,
        "fitted": fit_info.get("fitted", []) + seen_fit["fitted"],
        "loaded": fit_info.get("loaded", []),
        "fit_images": fit_info.get("n"),
        "fit_source": fit_info.get("source"),
        "setup_seconds": setup_s,
    }
