"""Split-conformal thresholds: finite-sample guarantees from exchangeable calibration scores.

With calibration scores ``s_1..s_n`` of seen images (fitted on nothing they score: bnnkit's
calibration split) and a new seen image's score ``s`` exchangeable with them, the rank of ``s``
among the ``n + 1`` values is uniform, so keeping the image when ``s <= t`` with ``t`` the
``k``-th smallest calibration score, ``k = ceil((n + 1)(1 - alpha))``, gives

    1 - alpha  <=  P(s <= t)  <=  1 - alpha + 1 / (n + 1)   (the upper bound for untied scores)

over the draw of calibration and test image together (Vovk et al. 2005; Angelopoulos & Bates,
"A Gentle Introduction to Conformal Prediction", 2021). When ``k > n`` no finite threshold
achieves it and every image is kept (``t = +inf``). This is the *marginal* guarantee; the
coverage of one fixed calibration set varies around it (a Beta distribution).

The same construction on the **real** calibration images' p(fake) gives a Neyman-Pearson
verdict threshold: calling an image fake when ``p(fake) > t_real`` calls at most ``alpha`` of
real images fake (in expectation over calibration sets), whatever the fakes look like.

Hand-written (a dozen lines): the order statistic and its finite-sample index are the whole
method, and the libraries that provide it (mapie, crepes) carry a scikit-learn estimator API
this does not need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "conformal_index",
    "conformal_threshold",
    "guarantee_record",
    "neyman_pearson_threshold",
]


def conformal_index(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``: the rank (1-based) of the calibration score used as
    threshold; ``k > n`` means no finite threshold gives the guarantee."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # the small tolerance keeps (n + 1)(1 - alpha) that is an integer in exact arithmetic
    # (e.g. n = 9, alpha = 0.1) from rounding up one rank through float error
    return math.ceil((n + 1) * (1.0 - alpha) - 1e-9)


def conformal_threshold(scores: Tensor, alpha: float) -> float:
    """Keep a new image when its score is ``<=`` this threshold: the ``k``-th smallest of
    ``scores`` (:func:`conformal_index`), ``+inf`` when ``k > n`` (keep everything), so that a
    new exchangeable image is kept with probability at least ``1 - alpha``."""
    s = torch.as_tensor(scores).detach().reshape(-1).to(torch.float64)
    k = conformal_index(int(s.numel()), alpha)
    if k > s.numel():
        return math.inf
    return float(torch.sort(s).values[k - 1])


def neyman_pearson_threshold(p_fake: Tensor, labels: Tensor, alpha: float) -> float:
    """The verdict threshold ``t`` such that calling an image fake when ``p(fake) > t`` calls at
    most ``alpha`` of real images fake: :func:`conformal_threshold` of the real images'
    ``p(fake)`` (labels 0)."""
    p = torch.as_tensor(p_fake).detach().reshape(-1).to(torch.float64)
    y = torch.as_tensor(labels).detach().reshape(-1)
    if p.numel() != y.numel():
        raise ValueError(f"p_fake has {p.numel()} values, labels {y.numel()}")
    return conformal_threshold(p[y == 0], alpha)


def guarantee_record(level: float, n: int) -> dict[str, object]:
    """metrics.json's / threshold.json's ``guarantee``: the promised level, the calibration
    size it rests on, the rank used and whether a finite threshold could give it."""
    alpha = 1.0 - level
    k = conformal_index(n, alpha)
    return {
        "level": level,
        "alpha": alpha,
        "n_calibration": n,
        "rank": k,
        "finite": k <= n,
        "bound": f"P(a new seen image is kept) >= {level:g}, marginally over calibration and "
        "test images (exchangeable); at most level + 1/(n + 1) for untied scores",
        "method": "split conformal: keep when score <= the rank-th smallest calibration score, "
        "rank = ceil((n + 1) * level)",
    }
