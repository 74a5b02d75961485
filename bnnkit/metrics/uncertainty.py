"""Predictive uncertainty from Monte-Carlo samples of a posterior.

Every function takes ``probs`` of shape ``[K, B, C]``: ``K`` posterior samples (weights drawn
from the posterior, dropout masks, ...), ``B`` items, ``C`` classes (2 here: real=0, fake=1),
each ``probs[k, b]`` a probability vector.

torchmetrics has no Bayesian uncertainty decomposition, so it is written here by hand. Entropies
use natural logarithms (nats) and ``torch.xlogy`` so that ``0 * log 0 = 0`` exactly (one-hot
samples give entropy 0, never ``nan``).

The ``*_from_logits`` functions take the logits ``[K, B, C]`` instead and compute in float64
from log-probabilities (``log_softmax``, then a log-mean-exp over the samples), so a saturated
predictive keeps its resolution: in float32, ``max_c p`` rounds to exactly 1 once the logit gap
exceeds ~16.6 (and ``1 - max`` to 0), and the smaller probability underflows to 0 past a gap of
~100 (and the entropy with it); from the logits in float64 both stay positive and ordered up to
a gap of ~700.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "decompose",
    "decompose_from_logits",
    "entropy",
    "log_predictive_mean",
    "max_prob_from_logits",
    "max_prob_score",
    "predictive_mean",
    "predictive_uncertainty",
]


def _check_probs(probs: Tensor) -> Tensor:
    if probs.ndim != 3:
        raise ValueError(f"expected probs of shape [K, B, C], got shape {tuple(probs.shape)}")
    return probs if probs.is_floating_point() else probs.float()


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    r"""Shannon entropy in nats along ``dim``: :math:`H(p) = -\sum_c p_c \log p_c`.

    Uses ``xlogy`` so that terms with :math:`p_c = 0` contribute exactly 0.
    """
    return 0.0 - torch.xlogy(p, p).sum(dim=dim)  # 0 - x: never -0.0


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


def _one_minus_max(p: Tensor) -> Tensor:
    """``1 - max_c p_c`` of probability vectors ``[B, C]`` computed as the sum of the other
    classes (``min_c p_c`` for two), so that it does not round to 0 when ``max_c p_c`` rounds
    to 1."""
    top = p.argmax(dim=-1, keepdim=True)
    return p.scatter(-1, top, 0.0).sum(dim=-1)


def max_prob_score(probs: Tensor) -> Tensor:
    r"""Uncertainty score from the top class: :math:`u_b = 1 - \max_c \bar p_{b,c}`.

    Higher means more uncertain; for 2 classes it lies in ``[0, 0.5]``. Computed in float64 as
    the sum of the other classes' probabilities (the smaller one for two classes), which keeps
    its resolution where ``1 - max`` would round to 0; returned in the dtype of ``probs``.
    :func:`max_prob_from_logits` keeps it past float32's range too.

    Args:
        probs: ``[K, B, C]`` sampled class probabilities.

    Returns:
        ``[B]`` scores.
    """
    probs = _check_probs(probs)
    return _one_minus_max(_sample_mean(probs.double())).to(probs.dtype)


# -- from the logits, in float64 -------------------------------------------------------------


def _check_logits(logits: Tensor) -> Tensor:
    if logits.ndim != 3:
        raise ValueError(f"expected logits of shape [K, B, C], got shape {tuple(logits.shape)}")
    return logits.double()


def _log_mean_exp(x: Tensor) -> Tensor:
    """``log mean_k exp(x[k])`` over dim 0, stably (shifted by the maximum; a class at ``-inf``
    in every sample stays ``-inf``). Exactly ``x[0]`` when every sample is ``x[0]``."""
    top = x.max(dim=0).values
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return shift + (x - shift).exp().mean(dim=0).log()


def _entropy_of_log(log_p: Tensor) -> Tensor:
    """Entropy in nats of distributions given by their log-probabilities (last dim). The top
    class's term uses ``log1p(-rest)`` (``rest`` the other classes' total), not its own log:
    near saturation that log is ``-rest`` but rounds to 0 (e.g. ``log_softmax`` of a gap of 90
    gives exactly 0), which would drop a ``1 / (gap + 1)`` share of the entropy. A class of
    probability 0 (``-inf``, or one that underflows) contributes 0."""
    p = log_p.exp()
    top = p.argmax(dim=-1, keepdim=True)
    terms = torch.where(p > 0, p * log_p, torch.zeros_like(p)).scatter(-1, top, 0.0)
    rest = p.scatter(-1, top, 0.0).sum(dim=-1)
    return 0.0 - (terms.sum(dim=-1) + (1.0 - rest) * torch.log1p(-rest))  # never -0.0


def log_predictive_mean(logits: Tensor) -> Tensor:
    r"""``log`` of the posterior predictive :math:`\bar p_{b,c}`, ``[B, C]`` float64, from the
    K samples of the logits ``[K, B, C]``: ``log_softmax`` per sample, then a log-mean-exp over
    the samples (no probability is formed before the logarithm, so none rounds to 0 or 1)."""
    return _log_mean_exp(torch.log_softmax(_check_logits(logits), dim=-1))


def max_prob_from_logits(logits: Tensor) -> Tensor:
    r""":math:`1 - \max_c \bar p_{b,c}` (``[B]``, float64) from the logits ``[K, B, C]``: the sum
    of the other classes' predictive probabilities, exactly :math:`\min_c \bar p_{b,c}` for two
    classes. Strictly ordered where the float32 ``1 - max`` of :func:`max_prob_score` on the
    softmax ties at 0 (logit gaps above ~16.6)."""
    return _one_minus_max(log_predictive_mean(logits).exp())


def decompose_from_logits(logits: Tensor) -> dict[str, Tensor]:
    """:func:`decompose` (``total``, ``aleatoric``, ``epistemic``; ``[B]`` float64 each) from the
    logits ``[K, B, C]``, in float64 from log-probabilities: the entropy of a near-saturated
    predictive stays positive (about ``gap * exp(-gap)``) where the float32 softmax rounds it to
    0. ``epistemic`` is exactly 0 when the K samples of an item are identical, as in
    :func:`decompose`."""
    log_p = torch.log_softmax(_check_logits(logits), dim=-1)
    total = _entropy_of_log(_log_mean_exp(log_p))
    aleatoric = _sample_mean(_entropy_of_log(log_p))
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}


def predictive_uncertainty(logits: Tensor, probs: Tensor) -> dict[str, Tensor]:
    """``max_prob`` and the decomposition (``[B]`` float64 each) of one batch: from the
    ``logits`` when they are given with the shape of ``probs`` (their softmax, as in
    :class:`bnnkit.scores.ScoreInputs`), else from ``probs`` (still in float64)."""
    if logits.ndim == 3 and logits.shape == probs.shape:
        return {"max_prob": max_prob_from_logits(logits), **decompose_from_logits(logits)}
    probs = _check_probs(probs).double()
    return {"max_prob": max_prob_score(probs), **decompose(probs)}
