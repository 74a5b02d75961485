"""The evaluation protocol's metrics: pure functions of a :class:`~bnnkit.metrics.records.
Predictions` record (no I/O, no model).

Per condition (clean or a degradation): per-generator and pooled classification reports, the
GenImage average accuracy, OOD detection of each unseen generator's fakes against seen images
for every score, selective prediction on seen images per score, and what abstaining at a
calibrated threshold on each score does (see ``docs/metrics-schema.md`` for every key, schema
version 3). The scores are named by their plugin (:mod:`bnnkit.scores`); a record gives the
values it holds (``Predictions.scores``) and the decomposition's ``max_prob``, ``entropy``,
``mutual_info``. :func:`ood_score` and :func:`abstention_score` read a metrics.json of version 2
or 3 by score name, for the tables that compare runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from bnnkit.metrics import schema
from bnnkit.metrics.classification import classification_report
from bnnkit.metrics.ood import ood_report
from bnnkit.metrics.records import DECOMPOSITION, SCORE_ALIASES, UNCERTAINTY_KEYS, Predictions
from bnnkit.metrics.schema import abstention_score, canonical_score, ood_score
from bnnkit.metrics.selective import (
    accuracy_at_coverage,
    aurc,
    aurc_optimal,
    threshold_for_coverage,
)

__all__ = [
    "ABSTAIN_SCORES",
    "DEFAULT_ABSTAIN_SCORE",
    "UNFITTED_ABSTAIN_SCORE",
    "OOD_SCORES",
    "SCORE_ALIASES",
    "abstention_metrics",
    "abstention_score",
    "calibrate_thresholds",
    "canonical_score",
    "clean_json",
    "condition_metrics",
    "ood_score",
    "record_scores",
    "selective_report",
]

#: Scores every record gives (max-probability, entropy, mutual information), under their plugin
#: names and the names metrics.json version 2 used (``total``, ``epistemic``). Any score plugin
#: can be reported and abstained on; these are the ones that need no plugin values.
OOD_SCORES = (*DECOMPOSITION, *SCORE_ALIASES)
ABSTAIN_SCORES = OOD_SCORES
DEFAULT_ABSTAIN_SCORE = schema.DEFAULT_ABSTAIN_SCORE
UNFITTED_ABSTAIN_SCORE = schema.UNFITTED_ABSTAIN_SCORE


def record_scores(data: Predictions) -> list[str]:
    """The scores a record's metrics are computed for by default: those it holds values of,
    else the decomposition's three."""
    return list(data.scores) or list(DECOMPOSITION)


def clean_json(value: Any) -> Any:
    """NaN/inf -> None and -0.0 -> 0.0, recursively, so metrics.json stays valid JSON and never
    shows a negative zero."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return 0.0 if value == 0.0 else value
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def _mean(t: Tensor) -> float:
    return float(t.double().mean()) if t.numel() else float("nan")


def group_report(data: Predictions, mask: Tensor | slice = slice(None)) -> dict[str, Any]:
    """The classification report and mean uncertainties of ``data``'s rows in ``mask`` (all of
    them without one)."""
    out: dict[str, Any] = classification_report(data.p_fake[mask], data.labels[mask])
    for key in UNCERTAINTY_KEYS:
        out[f"{key}_uncertainty"] = _mean(getattr(data, key)[mask])
    return out


def _ood_entry(
    data: Predictions, seen_mask: Tensor, ood_mask: Tensor, scores: Sequence[str]
) -> dict[str, Any]:
    """Seen-generator images (ID) against fakes of unseen generator(s) (OOD), for every score.

    Reals in an unseen generator's folder are ImageNet photos like the seen ones, so only its
    fakes count as out-of-distribution.
    """
    pool = seen_mask | ood_mask
    is_ood = ood_mask[pool]
    entry: dict[str, Any] = {"n_id": int(seen_mask.sum()), "n_ood": int(ood_mask.sum())}
    blocks = {}
    for name in scores:
        rep = ood_report(data.score(name)[pool], is_ood)
        blocks[name] = {k: rep[k] for k in ("auroc", "aupr", "fpr95")}
    entry["scores"] = blocks
    return entry


def selective_report(uncertainty: Tensor, correct: Tensor) -> dict[str, Any]:
    """Risk-coverage summary: AURC, the AURC of a perfect ranking (errors last), accuracy at
    100%, 90% and 80% coverage (most certain images kept)."""
    return {
        "n": int(correct.numel()),
        "aurc": aurc(uncertainty, correct),
        "aurc_optimal": aurc_optimal(correct),
        "accuracy": _mean(correct.double()),
        "accuracy_at_90": accuracy_at_coverage(uncertainty, correct, 0.9),
        "accuracy_at_80": accuracy_at_coverage(uncertainty, correct, 0.8),
    }


def condition_metrics(
    data: Predictions, generators: list[str], n_seen: int, scores: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every metric of one condition: per generator, seen/unseen pooled, GenImage average
    accuracy, OOD detection per unseen generator and pooled and selective prediction on seen
    images, for each of ``scores`` (default :func:`record_scores`)."""
    scores = [canonical_score(s) for s in (scores or record_scores(data))]
    g, y = data.generators, data.labels
    seen_mask = g < n_seen
    unseen_mask = ~seen_mask
    per_generator: dict[str, Any] = {}
    for i, name in enumerate(generators):
        entry = group_report(data, g == i)
        entry["seen"] = i < n_seen
        per_generator[name] = entry
    ood: dict[str, Any] = {}
    for j, name in enumerate(generators[n_seen:], start=n_seen):
        fakes = (g == j) & (y == 1)
        entry = {
            "accuracy": per_generator[name]["accuracy"],
            "fake_detection_rate": _mean((data.p_fake[fakes] >= 0.5).double()),
            "mean_epistemic_unseen_fakes": _mean(data.epistemic[fakes]),
            "mean_epistemic_seen": _mean(data.epistemic[seen_mask]),
        }
        entry.update(_ood_entry(data, seen_mask, fakes, scores))
        ood[name] = entry
    has_unseen = len(generators) > n_seen

    def avg(names: list[str]) -> float:
        accs = [per_generator[n]["accuracy"] for n in names]
        accs = [a for a in accs if a is not None and math.isfinite(a)]
        return sum(accs) / len(accs) if accs else float("nan")

    correct = data.correct
    return {
        "seen": group_report(data, seen_mask),
        "unseen": group_report(data, unseen_mask) if has_unseen else None,
        "per_generator": per_generator,
        "average_accuracy": {
            "all": avg(generators),
            "seen": avg(generators[:n_seen]),
            "unseen": avg(generators[n_seen:]) if has_unseen else float("nan"),
        },
        "ood": ood,
        "ood_combined": (
            _ood_entry(data, seen_mask, unseen_mask & (y == 1), scores) if has_unseen else None
        ),
        "selective": {
            s: selective_report(data.score(s)[seen_mask], correct[seen_mask]) for s in scores
        },
    }


def calibrate_thresholds(
    data: Predictions,
    n_seen: int,
    coverage: float,
    scores: Sequence[str] | None = None,
    conformal: bool = False,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per score (default :func:`record_scores`): the threshold that keeps ``coverage`` of the
    seen-generator images (:func:`~bnnkit.metrics.selective.threshold_for_coverage`, abstain
    when ``u > t``; with ``conformal``, the split-conformal order statistic of
    :func:`~bnnkit.metrics.conformal.conformal_threshold`, which guarantees that a new seen
    image is kept with probability at least ``coverage``), and a 2-fold cross-fit estimate of
    the coverage it reaches on *new* seen images (calibrate on the even-positioned images,
    measure on the odd ones and vice versa)."""
    from bnnkit.metrics.conformal import conformal_threshold

    def fit(u: Tensor) -> float:
        if conformal:
            return conformal_threshold(u, 1.0 - coverage) if coverage < 1.0 else math.inf
        return threshold_for_coverage(u, coverage)

    seen = data.generators < n_seen
    thresholds, crossfit = {}, {}
    for name in [canonical_score(s) for s in (scores or record_scores(data))]:
        u = data.score(name)[seen]
        thresholds[name] = fit(u)
        folds = [u[0::2], u[1::2]]
        if min(f.numel() for f in folds) == 0:
            crossfit[name] = float("nan")
            continue
        kept = sum(int((folds[1 - i] <= fit(folds[i])).sum()) for i in (0, 1))
        crossfit[name] = kept / u.numel()
    return thresholds, crossfit


def _abstain_stats(u: Tensor, correct: Tensor, threshold: float) -> dict[str, Any]:
    keep = u <= threshold
    errors = ~correct
    n_err = int(errors.sum())
    caught = int((errors & ~keep).sum())
    return {
        "n": int(u.numel()),
        "coverage": _mean(keep.double()),
        "accuracy_kept": _mean(correct[keep].double()),
        "accuracy_all": _mean(correct.double()),
        "errors": n_err,
        "errors_caught": caught,
        "errors_caught_rate": caught / n_err if n_err else float("nan"),
        "correct_abstained": int((correct & ~keep).sum()),
    }


def abstention_metrics(
    data: Predictions,
    generators: list[str],
    n_seen: int,
    thresholds: dict[str, float],
    score: str,
    coverage: float,
    crossfit: dict[str, float] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What abstaining at ``u > threshold`` does on seen images and on each unseen generator,
    for every score of ``thresholds``: coverage, accuracy on the kept images, and how many of
    the errors it catches. ``score`` (with its ``options``) is the one ``bnnkit predict``
    uses."""
    g, correct = data.generators, data.correct
    by_score: dict[str, Any] = {}
    for name, t in thresholds.items():
        u = data.score(name)
        entry: dict[str, Any] = {"threshold": t}
        if crossfit is not None:
            entry["coverage_crossfit"] = crossfit[name]
        entry["seen"] = _abstain_stats(u[g < n_seen], correct[g < n_seen], t)
        entry["unseen"] = {
            gen: _abstain_stats(u[g == j], correct[g == j], t)
            for j, gen in enumerate(generators[n_seen:], start=n_seen)
        }
        unseen = g >= n_seen
        entry["unseen_combined"] = (
            _abstain_stats(u[unseen], correct[unseen], t) if len(generators) > n_seen else None
        )
        by_score[name] = entry
    return {
        "score": score,
        "options": dict(options or {}),
        "coverage_target": coverage,
        "by_score": by_score,
    }
