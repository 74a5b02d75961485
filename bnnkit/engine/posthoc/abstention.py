"""The abstention fits of one evaluation, made after its forward passes: the seen-fitted scores
(``fused``) and every requested score's threshold, all on the calibration images. A plain
evaluation and a ``--data`` evaluation fit the same way; this module is that way, once."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.data.splits import calibration_record
from bnnkit.engine.posthoc.score_fit import (
    add_seen_values,
    fit_seen_scores,
    seen_dependent,
    seen_fit_halves,
)
from bnnkit.engine.posthoc.score_set import ScoreSet
from bnnkit.metrics.protocol import calibrate_thresholds
from bnnkit.metrics.records import Predictions


@dataclass
class Abstention:
    """What :func:`fit_abstention` fitted: the threshold per requested score (and its cross-fit
    coverage estimate), the seen-score fit record (``{fingerprint, fitted, n}``), the record the
    seen-fitted scores were fitted on (``fit_part``) and the one their thresholds were set on
    (``threshold_part``); both are ``fit_on`` when no score is seen-fitted or the run has no
    calibration split."""

    chosen: ScoreSet
    coverage: float
    fit_on: Predictions
    n_seen: int
    n_cal: int
    calibrated_on: dict[str, Any]
    seen_fit: dict[str, Any]
    thresholds: dict[str, float]
    crossfit: dict[str, float]
    dependent: set[str]
    fit_part: Predictions
    threshold_part: Predictions
    seconds: float = field(default=0.0)

    @property
    def score(self) -> str:
        """The score abstention is decided on (``--abstain-on``)."""
        return self.chosen.abstain_on

    @property
    def options(self) -> dict[str, Any]:
        return self.chosen.options(self.score)

    @property
    def score_rows(self) -> Predictions:
        """The calibration rows the abstention score's threshold was set on."""
        return self.threshold_part if self.score in self.dependent else self.fit_on

    def halves(self) -> dict[str, Any]:
        """How the calibration images were shared by seen-fitted scores and their thresholds."""
        if self.fit_part is self.fit_on:
            return {}
        n = [int((r.generators < self.n_seen).sum()) for r in (self.fit_part, self.threshold_part)]
        return {"seen_fitted_scores": {"fit_n": n[0], "threshold_n": n[1]}}


def fit_abstention(
    chosen: ScoreSet, fit_on: Predictions, others: Iterable[Predictions], *, recipe: Any,
    n_seen: int, coverage: float, run_dir: Path, key: str, split_halves: bool = True,
    conformal: bool = False,
) -> Abstention:  # fmt: skip
    """Fit the seen-fitted scores of ``chosen`` and every requested score's threshold on
    ``fit_on``'s seen rows (the calibration images; a run without them: the seen val images),
    then add the seen-fitted scores' values to ``fit_on`` and to the ``others`` records. With
    ``split_halves`` (a run with a calibration split), a seen-fitted score is fitted on one half
    of the calibration images and its threshold set on the other
    (:func:`~bnnkit.engine.posthoc.score_fit.seen_fit_halves`). ``conformal``: split-conformal
    thresholds (``--guarantee``). ``key`` identifies the evaluation the seen fits are saved
    under."""
    start = time.perf_counter()
    n_cal = int((fit_on.generators < n_seen).sum())
    dependent = seen_dependent(chosen.scores)
    fit_part, threshold_part = (
        seen_fit_halves(fit_on, n_seen) if dependent and split_halves else (fit_on, fit_on)
    )
    seen_fit = fit_seen_scores(chosen.scores, fit_part, n_seen, run_dir, key)
    for rec in [fit_on, threshold_part, *others]:
        add_seen_values(chosen.scores, rec)
    seconds = time.perf_counter() - start
    requested = chosen.requested
    thresholds, crossfit = calibrate_thresholds(
        fit_on, n_seen, coverage, [n for n in requested if n not in dependent], conformal
    )
    if dependent & set(requested):
        more = calibrate_thresholds(
            threshold_part, n_seen, coverage, [n for n in requested if n in dependent], conformal
        )
        thresholds, crossfit = {**thresholds, **more[0]}, {**crossfit, **more[1]}
    return Abstention(
        chosen=chosen, coverage=coverage, fit_on=fit_on, n_seen=n_seen, n_cal=n_cal,
        calibrated_on=calibration_record(recipe, n_cal), seen_fit=seen_fit,
        thresholds={n: thresholds[n] for n in requested},
        crossfit={n: crossfit[n] for n in requested}, dependent=dependent, fit_part=fit_part,
        threshold_part=threshold_part, seconds=seconds,
    )  # fmt: skip
