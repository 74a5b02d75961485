"""Classification and calibration metrics for a binary real(0)/fake(1) detector.

Inputs are ``p_fake`` ``[B]``, the mean predictive probability of class 1 (fake), and ``labels``
``[B]`` with values in {0, 1}. Every function returns a Python ``float``; empty inputs give
``nan``, and ranking metrics (AUROC, AP, TPR@FPR) give ``nan`` when only one class is present,
instead of raising or returning torchmetrics' placeholder values.

torchmetrics is used where it has the metric (AUROC, AP, ROC). Three of its conventions
matter here:

- Its binary metrics threshold with ``p > threshold`` (strict); this package calls ``p >= 0.5``
  fake, so the thresholded metrics (accuracy, balanced accuracy) are computed by hand.
- Its binary metrics treat any input outside ``[0, 1]`` as logits and apply a sigmoid. Rank
  metrics therefore receive exact dense ranks scaled to ``[0, 1]`` (see :func:`_unit_ranks`), which
  never leave that interval, keep ties tied and never merge distinct scores (a float32 sigmoid
  maps 20.0 and 30.0 to the same 1.0).
- Its binary calibration error gives a confidence of exactly 1.0 a 16th bin of its own, so the
  ECE (Guo et al.'s 15 bins) is computed by hand.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from bnnkit.metrics.forensic import Roc, forensic_report
from bnnkit.metrics.roc import _both_classes, _prep, _roc_counts, _unit_ranks

# torchmetrics is imported inside the functions that use it: importing it pulls in torchvision
# and its audio/image modules (~3 s), which ``import bnnkit.metrics`` should not cost.

__all__ = [
    "accuracy",
    "adaptive_ece",
    "auroc",
    "average_precision",
    "balanced_accuracy",
    "brier",
    "classification_report",
    "ece",
    "ece_bin_index",
    "nll",
    "tpr_at_fpr",
]

NAN = float("nan")
_EPS = 1e-12


def accuracy(p_fake: Tensor, labels: Tensor) -> float:
    r"""Accuracy at threshold 0.5: :math:`\frac{1}{B}\sum_b [\hat y_b = y_b]`, with
    :math:`\hat y_b = [p_b \ge 0.5]` (a tie goes to fake).

    Hand-written because torchmetrics' binary accuracy uses the strict ``p > 0.5``.
    """
    p, y = _prep(p_fake, labels)
    if p.numel() == 0:
        return NAN
    return float(((p >= 0.5).long() == y).double().mean())


def balanced_accuracy(p_fake: Tensor, labels: Tensor) -> float:
    r"""Mean per-class recall at threshold 0.5: :math:`\frac{1}{2}(\text{TPR} + \text{TNR})`.

    Averages over the classes present (scikit-learn's convention), so a fakes-only subset gives
    the TPR. Thresholding ``p >= 0.5`` as in :func:`accuracy`.
    """
    p, y = _prep(p_fake, labels)
    if p.numel() == 0:
        return NAN
    pred = (p >= 0.5).long()
    recalls = [(pred[y == c] == c).double().mean() for c in (0, 1) if bool((y == c).any())]
    return float(torch.stack(recalls).mean())


def auroc(p_fake: Tensor, labels: Tensor) -> float:
    r"""Area under the ROC curve (fake = positive) via ``torchmetrics`` ``binary_auroc``.

    Equals :math:`P(s_{fake} > s_{real}) + \frac{1}{2} P(s_{fake} = s_{real})`. ``nan`` if only
    one class is present.
    """
    p, y = _prep(p_fake, labels)
    if not _both_classes(y):
        return NAN
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(_unit_ranks(p), y))


def average_precision(p_fake: Tensor, labels: Tensor) -> float:
    r"""Average precision (fake = positive) via ``torchmetrics`` ``binary_average_precision``.

    :math:`\text{AP} = \sum_n (R_n - R_{n-1}) P_n` over distinct thresholds (step-wise, no
    interpolation, as scikit-learn). ``nan`` if only one class is present.
    """
    p, y = _prep(p_fake, labels)
    if not _both_classes(y):
        return NAN
    from torchmetrics.functional.classification import binary_average_precision

    return float(binary_average_precision(_unit_ranks(p), y))


def nll(p_fake: Tensor, labels: Tensor) -> float:
    r"""Mean negative log-likelihood of the true label, in nats.

    :math:`\text{NLL} = -\frac{1}{B}\sum_b \log \max(p_b(y_b), 10^{-12})`, where
    :math:`p_b(1) = p_b` and :math:`p_b(0) = 1 - p_b`.

    Hand-written: torchmetrics has no NLL from probabilities.
    """
    p, y = _prep(p_fake, labels)
    if p.numel() == 0:
        return NAN
    p_true = torch.where(y == 1, p, 1.0 - p).clamp_min(_EPS)
    return float(-torch.log(p_true).mean())


def brier(p_fake: Tensor, labels: Tensor) -> float:
    r"""Brier score, summed over the 2 classes and averaged over items.

    :math:`\text{BS} = \frac{1}{B}\sum_b \sum_{c\in\{0,1\}} (p_{b,c} - [y_b = c])^2
    = \frac{2}{B}\sum_b (p_b - y_b)^2`, in ``[0, 2]`` (the original multi-class convention of
    Brier 1950; the one-column convention is half of this).

    Hand-written: torchmetrics has no Brier score.
    """
    p, y = _prep(p_fake, labels)
    if p.numel() == 0:
        return NAN
    return float((2.0 * (p - y.double()) ** 2).mean())


def _top_label(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence of the predicted class (``p >= 0.5`` -> fake) and whether it is correct."""
    pred = (p >= 0.5).long()
    conf = torch.where(pred == 1, p, 1.0 - p)
    return conf, (pred == y).long()


def ece_bin_index(conf: Tensor, n_bins: int = 15) -> Tensor:
    r"""Bin of each confidence among ``n_bins`` equal-width bins :math:`(i/n, (i+1)/n]`.

    The bins of Guo et al. (2017): bin ``i`` holds :math:`i/n < c \le (i+1)/n`; a confidence of
    exactly 0 goes to bin 0 and exactly 1 to bin ``n - 1``. Edges are the float64 values
    ``i / n``, so a confidence equal to ``i / n`` lies in bin ``i - 1``. Used by :func:`ece` and
    the reliability diagram, so both bin alike.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = torch.arange(1, n_bins, dtype=torch.float64) / n_bins
    # right=False: edges[i-1] < c <= edges[i] -> i
    return torch.bucketize(torch.as_tensor(conf, dtype=torch.float64), edges, right=False)


def ece(
    p_fake: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    convention: Literal["top_label", "positive_class"] = "top_label",
) -> float:
    r"""Expected calibration error with ``n_bins`` equal-width bins on ``[0, 1]`` (L1).

    :math:`\text{ECE} = \sum_m \frac{|B_m|}{B} \, |\text{acc}(B_m) - \text{conf}(B_m)|`
    over the bins :math:`B_m = \{b : m/n < c_b \le (m+1)/n\}` of Guo et al. (2017, "On
    Calibration of Modern Neural Networks"), see :func:`ece_bin_index`; a confidence of exactly 1
    falls in the last bin.

    ``convention="top_label"`` (default; Guo et al. 2017): the confidence is that of the predicted
    class, :math:`\max(p_b, 1 - p_b)` with ``p >= 0.5`` -> fake, and acc is the fraction correct.
    Confidences lie in ``[0.5, 1]``, so only the upper half of the bins is used.

    ``convention="positive_class"``: bins the raw :math:`p_b` (probability of fake) and compares
    it with the fraction of fakes in each bin (a reliability diagram for class 1; torchmetrics'
    ``binary_calibration_error`` convention). It generally differs from the top-label ECE.

    Hand-written: torchmetrics' ``binary_calibration_error`` bins with ``[i/n, (i+1)/n)`` and puts
    a confidence of exactly 1.0 into an extra bin of its own, which can only raise the ECE
    (splitting a bin never lowers the sum of absolute gaps); saturated predictions (p = 0 or 1)
    are common for confident detectors, so the difference is not academic.
    """
    p, y = _prep(p_fake, labels)
    if p.numel() == 0:
        return NAN
    p = p.clamp(0.0, 1.0)  # float error beyond [0, 1] must not leave the bins
    if convention == "top_label":
        conf, hit = _top_label(p, y)
    elif convention == "positive_class":
        conf, hit = p, y
    else:
        raise ValueError(f"unknown convention {convention!r}")
    idx = ece_bin_index(conf, n_bins)
    zeros = torch.zeros(n_bins, dtype=torch.float64)
    conf_sum = zeros.index_add(0, idx, conf)
    hit_sum = zeros.index_add(0, idx, hit.to(torch.float64))
    # |B_m| * |acc_m - conf_m| = |sum of hits - sum of confidences| in bin m
    return float((hit_sum - conf_sum).abs().sum()) / p.numel()


def adaptive_ece(p_fake: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    r"""Equal-mass (adaptive) top-label ECE with ``n_bins`` bins.

    The top-label ECE of :func:`ece` with bins holding equal numbers of items instead of equal
    widths (equal-mass, a.k.a. uniform-mass, binning; see e.g. Kumar et al. 2019, "Verified
    Uncertainty Calibration"). It is *not* the class-wise adaptive calibration error (ACE) of
    Nixon et al. 2019, which bins every class's probability and averages over classes.

    Items are sorted by confidence and split into ``n_bins`` contiguous bins whose sizes differ
    by at most one (the first ``B mod n_bins`` bins get one extra item); empty bins
    (``B < n_bins``) are skipped. Then
    :math:`\text{aECE} = \sum_m \frac{|B_m|}{B} |\text{acc}(B_m) - \text{conf}(B_m)|`.
    Tied confidences may straddle a bin boundary; so that the result does not depend on the
    order of the items, every item of a block of tied confidences counts with the block's
    accuracy (its confidence is the block's anyway).

    Hand-written: torchmetrics only has equal-width bins.
    """
    p, y = _prep(p_fake, labels)
    if p.numel() == 0:
        return NAN
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, hit = _top_label(p, y)
    order = torch.sort(conf).indices
    conf, hit = conf[order], hit[order].double()
    # average correctness within tied blocks: permutation-invariant
    _, inverse, sizes = torch.unique_consecutive(conf, return_inverse=True, return_counts=True)
    block_hit = torch.zeros(sizes.numel(), dtype=torch.float64).index_add_(0, inverse, hit)
    hit = (block_hit / sizes)[inverse]
    total = 0.0
    for idx in torch.tensor_split(torch.arange(conf.numel()), n_bins):
        if idx.numel():
            total += abs(float(hit[idx].sum()) - float(conf[idx].sum()))
    return total / conf.numel()


def tpr_at_fpr(
    p_fake: Tensor, labels: Tensor, fpr: float = 0.01, *, roc: Roc | None = None
) -> float:
    r"""True-positive rate on fakes at a false-positive rate on real images of at most ``fpr``.

    :math:`\max\{\text{TPR}(t) : \text{FPR}(t) \le \text{fpr}\}` over the exact ROC operating
    points (flag fake if :math:`p \ge t`, for every distinct score ``t``; ties move together),
    i.e. the lowest threshold whose FPR stays within the budget. No interpolation: the result is
    conservative and reachable by an actual threshold. The comparison is done in counts,
    ``false positives <= floor(fpr * n_real)``. ``nan`` if only one class is present.
    """
    p, y = _prep(p_fake, labels)
    if not _both_classes(y):
        return NAN
    fps, tps = roc if roc is not None else _roc_counts(p, y)
    n_neg = y.numel() - int(y.sum())
    budget = math.floor(fpr * n_neg + 1e-9)
    ok = fps <= budget  # always true for the leading "flag nothing" point
    return float(tps[ok].max()) / int(y.sum())


def classification_report(p_fake: Tensor, labels: Tensor) -> dict[str, float]:
    """All metrics of this module in one dict.

    Keys: ``accuracy``, ``balanced_accuracy``, ``auroc``, ``ap``, ``nll``, ``brier`` (summed
    over both classes), ``ece`` (top-label, 15 equal-width bins), ``adaptive_ece`` (top-label,
    15 equal-mass bins), ``tpr_at_fpr_0_1``, ``tpr_at_fpr_1`` and ``tpr_at_fpr_5`` (TPR at
    0.1%, 1% and 5% FPR), ``n`` (number of items, an ``int``), and the forensic papers' metrics
    of :func:`bnnkit.metrics.forensic.forensic_report` (``real_accuracy``, ``fake_accuracy``,
    ``eer``, ``oracle_accuracy``, ``cllr``).
    """
    p, y = _prep(p_fake, labels)
    roc = _roc_counts(p, y) if _both_classes(y) else None  # one ROC for its five metrics
    return {
        "accuracy": accuracy(p, y),
        "balanced_accuracy": balanced_accuracy(p, y),
        "auroc": auroc(p, y),
        "ap": average_precision(p, y),
        "nll": nll(p, y),
        "brier": brier(p, y),
        "ece": ece(p, y),
        "adaptive_ece": adaptive_ece(p, y),
        "tpr_at_fpr_0_1": tpr_at_fpr(p, y, 0.001, roc=roc),
        "tpr_at_fpr_1": tpr_at_fpr(p, y, 0.01, roc=roc),
        "tpr_at_fpr_5": tpr_at_fpr(p, y, 0.05, roc=roc),
        "n": p.numel(),
        **forensic_report(p, y, roc=roc),
    }
