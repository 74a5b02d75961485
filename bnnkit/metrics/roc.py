"""ROC building blocks shared by the classification, OOD and forensic metrics: input checks,
dense unit ranks (so torchmetrics never mistakes scores for logits) and the ROC as integer
counts."""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit.metrics._inputs import paired


def _prep(p_fake: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten, check shapes, return ``(float64 probabilities, long labels)``."""
    return paired(p_fake, labels, label_dtype=torch.long, names=("p_fake", "labels"))


def _unit_ranks(scores: Tensor) -> Tensor:
    """Map scores to dense ranks scaled into ``[0, 1]`` (float64), preserving order and ties.

    Rank metrics are invariant to strictly increasing maps, and the result stays inside
    ``[0, 1]``, so torchmetrics never mistakes it for logits.
    """
    _, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    top = int(inverse.max()) if inverse.numel() else 0
    return inverse.to(torch.float64) / max(top, 1)


def _both_classes(y: Tensor) -> bool:
    n_pos = int(y.sum())
    return 0 < n_pos < y.numel()


def _roc_counts(scores: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """ROC as integer counts ``(false positives, true positives)`` per operating point.

    Operating points come from torchmetrics' exact ROC (flag ``score >= t`` for every distinct
    score, plus the leading point that flags nothing). Counts avoid float comparisons against
    rate targets such as 0.01. torchmetrics returns float32 rates; rounding them back to counts
    is exact while a class has fewer than ~4 million items.
    """
    from torchmetrics.functional.classification import binary_roc

    fpr, tpr, _ = binary_roc(_unit_ranks(scores), y)
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    return torch.round(fpr.double() * n_neg).long(), torch.round(tpr.double() * n_pos).long()
