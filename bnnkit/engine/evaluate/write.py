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
- ``scores/*``: the fits of fitted scores (:mod:`bnnkit.engine.posthoc.score_fit`).
- ``plots/*.png`` and ``report.md`` (see :mod:`bnnkit.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the name of the clean (undegraded) condition
CLEAN = "clean"


def timing_record(stats, clean, k, report_s, total_s, meta, device, reused) -> dict[str, Any]:
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
        "reused_conditions": list(reused),
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


def run_identity(schema_version: int, run_dir: Path, recipe: Any, k: int) -> dict[str, Any]:
    """The first keys of ``metrics.json``: its schema, and which run, recipe, method, head,
    backbone and attention block were evaluated with how many posterior samples."""
    from bnnkit.plugins import get_registry

    return {
        "schema_version": schema_version,
        "run": run_dir.name,
        "recipe": recipe.name,
        "method": recipe.inference.name,
        "head": recipe.head_name(get_registry()),
        "backbone": recipe.model.backbone.name,
        "attention": recipe.model.attention.name,
        "samples": k,
    }
