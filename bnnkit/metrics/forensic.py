"""The metrics forensic-detection papers print beside accuracy and AUROC (real/fake accuracy,
EER, oracle-threshold accuracy, balanced Cllr), for a binary real(0)/fake(1) detector.

Inputs as in :mod:`bnnkit.metrics.classification`: ``p_fake`` ``[B]`` and ``labels`` ``[B]``.
Every function returns a Python ``float``; ``nan`` where the metric is undefined (no image of
the class it needs, or only one class for the ROC-based ones and Cllr), which metrics.json
writes as ``null``. The ROC is the exact one of
:func:`~bnnkit.metrics.classification.tpr_at_fpr` (flag fake if ``p >= t`` for every distinct
score ``t``; tied scores move together), so ties never depend on the order of the images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit.metrics.roc import _both_classes, _prep, _roc_counts

__all__ = [
    "cllr",
    "eer",
    "fake_accuracy",
    "forensic_report",
    "oracle_accuracy",
    "real_accuracy",
]

NAN = float("nan")
#: probabilities are clipped to [EPS, 1 - EPS] before the likelihood ratio (float64 machine
#: epsilon, 2**-52): a saturated wrong answer costs log2(1 / EPS) = 52 bits, not infinity
EPS = float(torch.finfo(torch.float64).eps)


def _class_accuracy(p_fake: Tensor, labels: Tensor, cls: int) -> float:
    p, y = _prep(p_fake, labels)
    mine = y == cls
    if not bool(mine.any()):
        return NAN
    return float(((p[mine] >= 0.5).long() == cls).double().mean())


def real_accuracy(p_fake: Tensor, labels: Tensor) -> float:
    """R.Acc: fraction of real images called real (``p < 0.5``); ``nan`` without reals."""
    return _class_accuracy(p_fake, labels, 0)


def fake_accuracy(p_fake: Tensor, labels: Tensor) -> float:
    """F.Acc: fraction of fakes called fake (``p >= 0.5``); ``nan`` without fakes."""
    return _class_accuracy(p_fake, labels, 1)


#: a precomputed :func:`~bnnkit.metrics.roc._roc_counts` of the same images (one ROC serves
#: every ROC metric of a report)
Roc = tuple[Tensor, Tensor]


def _roc_rates(p: Tensor, y: Tensor, roc: Roc | None = None) -> tuple[Tensor, Tensor]:
    """``(FPR, TPR)`` float64 at every exact operating point, from (0, 0) to (1, 1)."""
    fps, tps = roc if roc is not None else _roc_counts(p, y)
    n_pos = int(y.sum())
    return fps.double() / (y.numel() - n_pos), tps.double() / n_pos


def eer(p_fake: Tensor, labels: Tensor, *, roc: Roc | None = None) -> float:
    r"""Equal error rate: the rate at which FPR = FNR (= 1 − TPR) on the ROC.

    The ROC is the polyline through the exact operating points, from (0, 0) to (1, 1); between
    two adjacent points it is linear (flagging a random share of the images whose scores lie
    between the two thresholds; for a tied block, a random share of the block). It crosses the
    line :math:`\text{FPR} = 1 - \text{TPR}` exactly once, since :math:`d = \text{FPR} +
    \text{TPR} - 1` rises strictly from −1 to 1 along it. At an operating point with
    :math:`d = 0` the EER is its FPR; otherwise, on the segment from point i (:math:`d_i < 0`)
    to point i + 1 (:math:`d_{i+1} > 0`), at :math:`\lambda = -d_i / (d_{i+1} - d_i)` it is
    :math:`\text{FPR}_i + \lambda (\text{FPR}_{i+1} - \text{FPR}_i)`. On a vertical segment (only
    fakes between the thresholds) that is the segment's FPR; on a horizontal one its FNR.
    ``nan`` if only one class is present.
    """
    p, y = _prep(p_fake, labels)
    if not _both_classes(y):
        return NAN
    fpr, tpr = _roc_rates(p, y, roc)
    d = fpr + tpr - 1.0
    i = int(torch.searchsorted(d, torch.tensor([0.0], dtype=torch.float64))[0])  # first d >= 0
    if d[i] == 0.0:
        return float(fpr[i])
    lam = float(-d[i - 1] / (d[i] - d[i - 1]))
    return float(fpr[i - 1] + lam * (fpr[i] - fpr[i - 1]))


def oracle_accuracy(p_fake: Tensor, labels: Tensor, *, roc: Roc | None = None) -> float:
    """Accuracy at the **oracle** threshold: the best accuracy any threshold reaches on these
    very images (flag fake if ``p >= t``, over every exact operating point, including flagging
    none or all).

    The threshold is chosen on the images it is reported on, so this is an upper bound on what
    a threshold fixed in advance would reach (how far the 0.5 threshold is from the best one),
    not an achievable accuracy. ``nan`` if only one class is present (flagging none or all would
    trivially be right).
    """
    p, y = _prep(p_fake, labels)
    if not _both_classes(y):
        return NAN
    fps, tps = roc if roc is not None else _roc_counts(p, y)
    n_neg = y.numel() - int(y.sum())
    return float((tps + n_neg - fps).max()) / y.numel()


def cllr(p_fake: Tensor, labels: Tensor) -> float:
    r"""Balanced log-likelihood-ratio cost, in bits (Brümmer & du Preez 2006).

    :math:`C_{llr} = \frac{1}{2}\Big[\frac{1}{N_f}\sum_{fakes}\log_2(1 + 1/LR)
    + \frac{1}{N_r}\sum_{reals}\log_2(1 + LR)\Big]` with :math:`LR = p / (1 - p)`: p(fake) is
    read as a posterior at prior ½, so its odds are the likelihood ratio. Each class weighs
    half whatever the class balance. 0 is perfect, 1 is an uninformative detector (p = 0.5
    everywhere); larger values are worse than saying nothing.

    Saturation: p is clipped to ``[EPS, 1 - EPS]`` (float64 machine epsilon, :data:`EPS`)
    first, so a saturated right answer costs ~0 and a saturated wrong one
    :math:`\log_2(1/\text{EPS}) = 52` bits instead of infinity. Computed as
    :math:`-\log_2 p` over fakes and :math:`-\log_2(1 - p)` over reals (equal to the LR form).
    ``nan`` if only one class is present.
    """
    p, y = _prep(p_fake, labels)
    if not _both_classes(y):
        return NAN
    p = p.clamp(EPS, 1.0 - EPS)
    fakes = -torch.log2(p[y == 1]).mean()
    reals = -torch.log2(1.0 - p[y == 0]).mean()
    return float(0.5 * (fakes + reals))


def forensic_report(p_fake: Tensor, labels: Tensor, *, roc: Roc | None = None) -> dict[str, float]:
    """``real_accuracy``, ``fake_accuracy``, ``eer``, ``oracle_accuracy`` and ``cllr`` of one
    set of images (merged into :func:`~bnnkit.metrics.classification.classification_report`,
    which passes the ``roc`` it computed)."""
    p, y = _prep(p_fake, labels)
    if roc is None and _both_classes(y):
        roc = _roc_counts(p, y)
    return {
        metric.__name__: metric(p, y, roc=roc) if metric in ROC_METRICS else metric(p, y)
        for metric in FORENSIC_METRICS
    }


#: the metrics of :func:`forensic_report`, in its order; each is keyed by its function's name
FORENSIC_METRICS = (real_accuracy, fake_accuracy, eer, oracle_accuracy, cllr)
#: those that read the ROC (and take a precomputed one)
ROC_METRICS = (eer, oracle_accuracy)
