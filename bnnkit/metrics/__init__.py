"""Metrics for Bayesian fake-image detectors: uncertainty, classification, OOD, selective.

Predictions are Monte-Carlo samples ``probs[K, B, 2]``; :func:`predictive_mean` and
:func:`decompose` turn them into the mean predictive and per-item uncertainties, which the other
modules score. All metric functions take CPU tensors and return Python floats.
"""

from bnnkit.metrics.classification import (
    accuracy,
    adaptive_ece,
    auroc,
    average_precision,
    balanced_accuracy,
    brier,
    classification_report,
    ece,
    ece_bin_index,
    nll,
    tpr_at_fpr,
)
from bnnkit.metrics.ood import fpr_at_95_tpr, ood_aupr, ood_auroc, ood_report
from bnnkit.metrics.selective import (
    accuracy_at_coverage,
    aurc,
    aurc_optimal,
    expected_errors,
    risk_coverage,
    threshold_for_coverage,
)
from bnnkit.metrics.uncertainty import decompose, entropy, max_prob_score, predictive_mean

__all__ = [
    "accuracy",
    "accuracy_at_coverage",
    "adaptive_ece",
    "aurc",
    "aurc_optimal",
    "auroc",
    "average_precision",
    "balanced_accuracy",
    "brier",
    "classification_report",
    "decompose",
    "ece",
    "ece_bin_index",
    "entropy",
    "expected_errors",
    "fpr_at_95_tpr",
    "max_prob_score",
    "nll",
    "ood_aupr",
    "ood_auroc",
    "ood_report",
    "predictive_mean",
    "risk_coverage",
    "threshold_for_coverage",
    "tpr_at_fpr",
]
