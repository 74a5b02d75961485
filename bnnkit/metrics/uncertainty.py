"""Predictive uncertainty from Monte-Carlo samples of a posterior.

Every function takes ``probs`` of shape ``[K, B, C]``: ``K`` posterior samples (weights drawn
from the posterior, dropout masks, ...), ``B`` items, ``C`` classes (2 here: real=0, fake=1),
each ``probs[k, b]`` a probability vector.

torchmetrics has no Bayesian uncertainty decomposition, so it is written here by hand. Entropies
use natural logarithms (nats) and ``torch.xlogy`` so that ``0 * log 0 = 0`` exactly (one-hot
samples give entropy 0, never ``nan``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["decompose", "entropy", "max_prob_score", "predictive_mean"]


def _check_probs(probs: Tensor) -> Tensor:
    if probs.ndim != 3:
        raise ValueError(f"expected probs of shape [K, B, C], got shape {tuple(probs.shape)}")
    return probs if probs.is_floating_point() else probs.float()


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    r"""Shannon entropy in nats along ``dim``: :math:`H(p) = -\sum_c p_c \log p_c`.

    Uses ``xlogy`` so that terms with :math:`p_c = 0` contribute exactly 0.
    """
    return -torch.xlogy(p, p).sum(dim=dim)


def predictive_mean(probs: Tensor) -> Tensor:
    r"""Posterior predictive distribution, the Monte-Carlo mean over samples.

    :math:`\bar p_{b,c} = \frac{1}{K} \sum_{k=1}^{K} p_{k,b,c}`

    Args:
        probs: ``[K, B, C]`` sampled class probabilities.

    Returns:
        ``[B, C]`` mean predictive probabilities.
    """
    return _check_probs(probs).mean(dim=0)


def _sample_mean(x: Tensor) -> Tensor:
    """Mean over dim 0 computed as ``x[0] + mean(x - x[0])``: equal to ``x[0]`` exactly when
    every sample is ``x[0]`` (a plain float sum of K equal values is not, e.g. K = 3, 7, 8)."""
    return x[0] + (x - x[0]).mean(dim=0)


def decompose(probs: Tensor) -> dict[str, Tensor]:
    r"""Split predictive uncertainty into aleatoric and epistemic parts (in nats).

    - ``total``     :math:`= H(\bar p_b)`, entropy of the mean predictive;
    - ``aleatoric`` :math:`= \frac{1}{K} \sum_k H(p_{k,b})`, expected entropy of the samples;
    - ``epistemic`` :math:`= \text{total} - \text{aleatoric}`, the mutual information
      :math:`I(y; \theta \mid x_b)` between label and weights (BALD). It is :math:`\ge 0` by
      Jensen's inequality; it is clamped at 0 to absorb floating-point error, so
      ``total == aleatoric + epistemic`` holds up to that rounding. When the K samples of an
      item are identical (MAP, or any deterministic head) it is exactly 0, not rounding noise
      of ~1e-16 that would rank the items by accident.

    Args:
        probs: ``[K, B, C]`` sampled class probabilities.

    Returns:
        dict with keys ``total``, ``aleatoric``, ``epistemic``, each a ``[B]`` tensor.
    """
    probs = _check_probs(probs)
    dtype = probs.dtype
    # float64: the difference of two nearly equal entropies is the epistemic part, and in
    # float32 identical samples would leave ~1e-7 of rounding noise instead of exactly 0
    p64 = probs.double()
    total = entropy(_sample_mean(p64))
    aleatoric = _sample_mean(entropy(p64))
    epistemic = (total - aleatoric).clamp_min(0.0)
    return {"total": total.to(dtype), "aleatoric": aleatoric.to(dtype),
            "epistemic": epistemic.to(dtype)}  # fmt: skip


def max_prob_score(probs: Tensor) -> Tensor:
    r"""Uncertainty score from the top class: :math:`u_b = 1 - \max_c \bar p_{b,c}`.

    Higher means more uncertain; for 2 classes it lies in ``[0, 0.5]``.

    Args:
        probs: ``[K, B, C]`` sampled class probabilities.

    Returns:
        ``[B]`` scores.
    """
    return 1.0 - predictive_mean(probs).max(dim=-1).values
