"""Detection of out-of-distribution inputs (e.g. images from an unseen generator).

Inputs are ``scores`` ``[B]`` (any real values, higher = more likely OOD, e.g. epistemic
uncertainty) and ``is_ood`` ``[B]`` (bool). OOD is the positive class. Functions return ``nan``
on empty input or when only one of ID/OOD is present.

AUROC and AUPR come from torchmetrics; scores are passed as dense ranks in ``[0, 1]`` so that
torchmetrics never applies its automatic sigmoid to scores outside ``[0, 1]`` (which would merge
large scores in float32). FPR@95%TPR is read off torchmetrics' exact ROC, in integer counts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnnkit.metrics._inputs import paired
from bnnkit.metrics.roc import _both_classes, _roc_counts, _unit_ranks

__all__ = ["fpr_at_95_tpr", "ood_aupr", "ood_auroc", "ood_report"]

NAN = float("nan")


def _prep(scores: Tensor, is_ood: Tensor) -> tuple[Tensor, Tensor]:
    s, flag = paired(scores, is_ood, label_dtype=torch.bool, names=("scores", "is_ood"))
    return s, flag.long()


def ood_auroc(scores: Tensor, is_ood: Tensor) -> float:
    r"""AUROC of the score for separating OOD (positive) from ID items.

    :math:`P(s_{ood} > s_{id}) + \frac{1}{2} P(s_{ood} = s_{id})`; 0.5 is chance.
    """
    s, y = _prep(scores, is_ood)
    if not _both_classes(y):
        return NAN
    from torchmetrics.functional.classification import binary_auroc  # lazy: slow import

    return float(binary_auroc(_unit_ranks(s), y))


def ood_aupr(scores: Tensor, is_ood: Tensor) -> float:
    r"""Area under the precision-recall curve with OOD as the positive class ("AUPR-Out").

    Computed as average precision :math:`\sum_n (R_n - R_{n-1}) P_n` (step-wise, no
    interpolation). Its chance level is the OOD fraction.
    """
    s, y = _prep(scores, is_ood)
    if not _both_classes(y):
        return NAN
    from torchmetrics.functional.classification import binary_average_precision  # lazy

    return float(binary_average_precision(_unit_ranks(s), y))


def fpr_at_95_tpr(scores: Tensor, is_ood: Tensor, tpr: float = 0.95) -> float:
    r"""Fraction of ID items flagged when the threshold catches at least ``tpr`` of OOD items.

    Flag OOD if :math:`s \ge t`; take the highest threshold ``t`` (over distinct scores) with
    :math:`\text{TPR}(t) \ge 0.95`, i.e. at least :math:`\lceil 0.95 \, n_{ood} \rceil` OOD items
    caught, and return :math:`\text{FPR}(t) = \#\{id: s \ge t\} / n_{id}`. Tied scores are flagged
    together, so the TPR reached can exceed 95%. No interpolation. Lower is better.
    """
    s, y = _prep(scores, is_ood)
    if not _both_classes(y):
        return NAN
    fps, tps = _roc_counts(s, y)
    n_ood = int(y.sum())
    needed = math.ceil(tpr * n_ood - 1e-9)
    first = int(torch.nonzero(tps >= needed)[0, 0])  # tps is non-decreasing; last point = n_ood
    return float(fps[first]) / (y.numel() - n_ood)


def ood_report(scores: Tensor, is_ood: Tensor) -> dict[str, float]:
    """``auroc``, ``aupr``, ``fpr95`` (floats) and ``n_id``, ``n_ood`` (ints)."""
    s, y = _prep(scores, is_ood)
    n_ood = int(y.sum())
    return {
        "auroc": ood_auroc(s, y),
        "aupr": ood_aupr(s, y),
        "fpr95": fpr_at_95_tpr(s, y),
        "n_id": y.numel() - n_ood,
        "n_ood": n_ood,
    }
