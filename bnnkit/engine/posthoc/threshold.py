"""The abstention and verdict thresholds an evaluation fits on the calibration split and writes
to ``threshold.json`` (through :mod:`bnnkit.run.threshold`; the fits themselves:
:mod:`.abstention`): the split-conformal guarantee (``--guarantee``) and the Neyman-Pearson
verdict threshold (``--max-false-alarm``), :mod:`bnnkit.metrics.conformal`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bnnkit.engine.posthoc.abstention import Abstention
from bnnkit.engine.posthoc.score_set import threshold_fits
from bnnkit.metrics.conformal import guarantee_record, neyman_pearson_threshold
from bnnkit.run.threshold import threshold_record, write_threshold


def write_threshold_file(
    run_dir: Path, metrics: dict[str, Any], recipe: Any, fitted: Abstention, *, k: int,
    fit_info: dict[str, Any], inference: dict[str, Any], tiling: Any, t_value: float | None,
) -> None:  # fmt: skip
    """Write ``threshold.json``: the threshold per score, what it was calibrated on and the
    options ``bnnkit predict`` must rebuild the scores with."""
    score = fitted.score
    record = threshold_record(
        score=score,
        thresholds=fitted.thresholds,
        crossfit=fitted.crossfit,
        coverage=fitted.coverage,
        coverage_seen=metrics["abstention"]["by_score"][score]["seen"]["coverage"],
        samples=k,
        method=recipe.inference.name,
        calibrated_on=fitted.calibrated_on,
        run_dir=run_dir,
        options=fitted.options,
        score_options=fitted.chosen.needed_options(),
        score_fit=threshold_fits(
            fitted.chosen, fit_info.get("fingerprint"), fitted.seen_fit["fingerprint"]
        ),
    )
    if inference:
        record["inference_overrides"] = inference
    if tiling:
        record["tiles"] = tiling.to_dict()
    if t_value:
        record["temperature"] = t_value
    if "guarantee" in metrics["abstention"]:  # --guarantee: the split-conformal bound
        record["guarantee"] = metrics["abstention"]["guarantee"]
    if "verdict_threshold" in metrics:  # --max-false-alarm: predict's p(fake) threshold
        record["verdict_threshold"] = metrics["verdict_threshold"]
        record["p_threshold"] = metrics["verdict_threshold"]["p_threshold"]
    write_threshold(run_dir, record)


def guarantee_block(guarantee: float | None, fitted_on: Any, n_seen: int) -> dict[str, Any]:
    """metrics.json's ``abstention.guarantee`` (``--guarantee``): the split-conformal bound and
    the calibration images it rests on (the seen rows the threshold was set on)."""
    if guarantee is None:
        return {}
    return {"guarantee": guarantee_record(guarantee, int((fitted_on.generators < n_seen).sum()))}


def verdict_block(alpha: float | None, fit_on: Any, clean: Any, n_seen: int) -> dict[str, Any]:
    """metrics.json's ``verdict_threshold`` (``--max-false-alarm``): the Neyman-Pearson
    p(fake) threshold set on the calibration split's real images, and the false-alarm and
    detection rates it reaches on the seen validation images (which it was not set on)."""
    if alpha is None:
        return {}
    cal = fit_on.generators < n_seen
    t = neyman_pearson_threshold(fit_on.p_fake[cal], fit_on.labels[cal], alpha)
    # the bound holds for "fake when p > t"; predict's rule (run.threshold.verdict), like the
    # accuracy's, is "fake when p >= threshold": the next float above t makes the two the same
    t = math.nextafter(t, math.inf)
    seen = clean.generators < n_seen
    reals, fakes = seen & (clean.labels == 0), seen & (clean.labels == 1)
    fake_called = clean.p_fake.double() >= t
    return {
        "verdict_threshold": {
            "p_threshold": t,
            "max_false_alarm": alpha,
            "n_real_calibration": int((cal & (fit_on.labels == 0)).sum()),
            "rule": "fake when p(fake) >= p_threshold (the next float above the split-conformal "
            "threshold of the calibration reals)",
            "seen_false_alarm": float(fake_called[reals].double().mean()) if reals.any() else None,
            "seen_detection": float(fake_called[fakes].double().mean()) if fakes.any() else None,
        }
    }
