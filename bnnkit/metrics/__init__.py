"""Metrics for Bayesian fake-image detectors: uncertainty, classification, OOD, selective.

Predictions are Monte-Carlo samples ``probs[K, B, 2]``; :func:`predictive_mean` and
:func:`decompose` turn them into the mean predictive and per-item uncertainties, which the other
modules score. All metric functions take CPU tensors and return Python floats.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public functions, by the module that defines them; ``bnnkit.metrics.NAME`` imports that
# module on first use (so ``import bnnkit.metrics`` costs nothing until a metric is needed).
_HOMES: dict[str, str] = {
    "classification": "accuracy adaptive_ece auroc average_precision balanced_accuracy brier "
    "classification_report ece ece_bin_index nll tpr_at_fpr",
    "forensic": "cllr eer fake_accuracy forensic_report oracle_accuracy real_accuracy",
    "ood": "fpr_at_95_tpr ood_aupr ood_auroc ood_report",
    "selective": "accuracy_at_coverage aurc aurc_optimal expected_errors risk_coverage "
    "threshold_for_coverage",
    "uncertainty": "decompose entropy max_prob_score predictive_mean",
}
_HOME = {name: module for module, names in _HOMES.items() for name in names.split()}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
