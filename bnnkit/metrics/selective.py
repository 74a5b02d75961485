"""Selective prediction: abstain on the most uncertain items and measure the risk of the rest.

Inputs are ``uncertainty`` ``[B]`` (higher = less certain) and ``correct`` ``[B]`` (bool, whether
the prediction on that item is right). Items are kept in order of ascending uncertainty, the
most certain first; ties keep their input order (stable sort), so results are deterministic.

torchmetrics has no risk-coverage metrics, so everything here is written by hand.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["accuracy_at_coverage", "aurc", "risk_coverage", "threshold_for_coverage"]

NAN = float("nan")


def _prep(uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    u = torch.as_tensor(uncertainty).detach().reshape(-1).to(torch.float64)
    c = torch.as_tensor(correct).detach().reshape(-1).to(torch.bool)
    if u.shape != c.shape:
        raise ValueError(f"uncertainty and correct differ in size: {u.numel()} vs {c.numel()}")
    return u, c


def _check_coverage(coverage: float) -> None:
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage}")


def _n_kept(coverage: float, n: int) -> int:
    """Smallest ``k`` with ``k / n >= coverage`` (tolerant of float error such as 0.3 * 10)."""
    return min(n, math.ceil(coverage * n - 1e-9))


def risk_coverage(uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    r"""Risk-coverage curve.

    Sort items by ascending uncertainty (stable) and keep the first ``k``:
    :math:`\text{coverage}_k = k / B`, :math:`\text{risk}_k = \frac{1}{k}\sum_{i \le k}
    [\text{item } i \text{ wrong}]`, for :math:`k = 1..B`.

    Returns:
        ``(coverage, risk)``, two float64 tensors of length ``B`` (empty for empty input).
    """
    u, c = _prep(uncertainty, correct)
    n = u.numel()
    order = torch.sort(u, stable=True).indices
    errors = (~c[order]).to(torch.float64).cumsum(0)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return k / n, errors / k


def aurc(uncertainty: Tensor, correct: Tensor) -> float:
    r"""Area under the risk-coverage curve (Geifman et al. 2019), discrete form.

    :math:`\text{AURC} = \frac{1}{B}\sum_{k=1}^{B} \text{risk}_k`. Lower is better; its minimum,
    reached by a perfect ranking, depends on the error rate. ``nan`` on empty input.
    """
    _, risk = risk_coverage(uncertainty, correct)
    return float(risk.mean()) if risk.numel() else NAN


def accuracy_at_coverage(uncertainty: Tensor, correct: Tensor, coverage: float) -> float:
    r"""Accuracy on the :math:`k = \lceil \text{coverage} \cdot B \rceil` most certain items.

    Same ordering as :func:`risk_coverage` (``1 - risk_k``); exactly ``k`` items are kept even if
    the uncertainty at the cut is tied. ``nan`` on empty input or when ``k == 0``.
    """
    _check_coverage(coverage)
    u, c = _prep(uncertainty, correct)
    k = _n_kept(coverage, u.numel())
    if k == 0:
        return NAN
    order = torch.sort(u, stable=True).indices
    return float(c[order[:k]].to(torch.float64).mean())


def threshold_for_coverage(uncertainty: Tensor, coverage: float) -> float:
    r"""Uncertainty threshold ``t`` such that keeping items with ``u <= t`` retains ``coverage``.

    ``t`` is the :math:`k`-th smallest uncertainty with :math:`k = \lceil \text{coverage} \cdot B
    \rceil`, the empirical quantile from the inverse CDF (Hyndman-Fan type 1; no interpolation,
    so ``t`` is an observed value). Keeping ``u <= t`` then retains at least the requested
    fraction (more if values at ``t`` are tied), and ``t`` is the smallest threshold that does.
    Fit it on validation data and abstain on test items with ``u > t``.

    Returns ``-inf`` for ``coverage == 0`` (keep nothing) and ``nan`` on empty input.
    """
    _check_coverage(coverage)
    u = torch.as_tensor(uncertainty).detach().reshape(-1).to(torch.float64)
    if u.numel() == 0:
        return NAN
    k = _n_kept(coverage, u.numel())
    if k == 0:
        return float("-inf")
    return float(torch.sort(u).values[k - 1])
