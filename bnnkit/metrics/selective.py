"""Selective prediction: abstain on the most uncertain items and measure the risk of the rest.

Inputs are ``uncertainty`` ``[B]`` (higher = less certain) and ``correct`` ``[B]`` (bool, whether
the prediction on that item is right). Items are kept in order of ascending uncertainty, the
most certain first.

Ties: items with equal uncertainty cannot be ordered by the score, so every quantity is the
**expected value under a uniformly random order of tied items** (the risk-coverage curve is
defined for a ranking, and ties leave the ranking open). Within a tied block of ``m`` items
holding ``e`` errors, keeping the first ``j`` of them keeps ``j e / m`` errors in expectation,
so the expected number of errors among the ``k`` most certain items is exact and piecewise
linear in ``k`` (no Monte Carlo). Results therefore do not depend on the
order in which items are listed. A constant score (every item tied, including a single item)
ranks nothing, so :func:`aurc` and :func:`accuracy_at_coverage` return ``nan`` for it (written
as ``null`` in ``metrics.json`` and shown as "n/a").

torchmetrics has no risk-coverage metrics, so everything here is written by hand.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnnkit.metrics._inputs import paired

__all__ = [
    "accuracy_at_coverage",
    "aurc",
    "aurc_optimal",
    "expected_errors",
    "risk_coverage",
    "threshold_for_coverage",
]

NAN = float("nan")


def _prep(uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    return paired(uncertainty, correct, label_dtype=torch.bool, names=("uncertainty", "correct"))


def _check_coverage(coverage: float) -> None:
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage}")


def _n_kept(coverage: float, n: int) -> int:
    """Smallest ``k`` with ``k / n >= coverage`` (tolerant of float error such as 0.3 * 10)."""
    return min(n, math.ceil(coverage * n - 1e-9))


def _constant(u: Tensor) -> bool:
    """Whether every score is the same (a score that cannot rank); ``False`` for empty input."""
    return u.numel() > 0 and bool((u == u[0]).all())


def expected_errors(uncertainty: Tensor, correct: Tensor) -> Tensor:
    r"""Expected number of errors among the ``k`` most certain items, for :math:`k = 1..B`.

    Items are sorted by ascending uncertainty; a block of ``m`` tied items with ``e`` errors,
    preceded by ``E`` errors in lower-uncertainty blocks, contributes
    :math:`E + j e / m` for the ``j``-th kept item of the block (:math:`j = 1..m`): the exact
    expectation over a uniformly random order of the tied items.

    Returns:
        float64 tensor of length ``B`` (non-decreasing; the last entry is the number of errors).
    """
    u, c = _prep(uncertainty, correct)
    n = u.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    order = torch.sort(u).indices
    u_sorted, err = u[order], (~c[order]).to(torch.float64)
    _, sizes = torch.unique_consecutive(u_sorted, return_counts=True)
    block = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    block_err = torch.zeros(sizes.numel(), dtype=torch.float64).index_add_(0, block, err)
    before = torch.cumsum(block_err, 0) - block_err  # errors in the more certain blocks
    start = torch.cumsum(sizes, 0) - sizes
    j = torch.arange(1, n + 1) - start[block]  # position within the block, 1..m
    return before[block] + j.to(torch.float64) * block_err[block] / sizes[block]


def risk_coverage(uncertainty: Tensor, correct: Tensor) -> tuple[Tensor, Tensor]:
    r"""Risk-coverage curve, expected over random orders of tied items.

    Keep the ``k`` most certain items: :math:`\text{coverage}_k = k / B`,
    :math:`\text{risk}_k = E_k / k` with :math:`E_k` from :func:`expected_errors`, for
    :math:`k = 1..B`. Without ties this is the plain error rate of the first ``k`` items; a
    constant score gives the flat curve at the overall error rate.

    Returns:
        ``(coverage, risk)``, two float64 tensors of length ``B`` (empty for empty input).
    """
    errors = expected_errors(uncertainty, correct)
    n = errors.numel()
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return k / n, errors / k


def aurc(uncertainty: Tensor, correct: Tensor) -> float:
    r"""Area under the risk-coverage curve (Geifman et al. 2019), discrete form.

    :math:`\text{AURC} = \frac{1}{B}\sum_{k=1}^{B} \text{risk}_k` with the tie-averaged risks of
    :func:`risk_coverage`: by linearity, the expected AURC over random orders of tied items.
    Lower is better; its minimum, reached by a perfect ranking, depends on the error rate (see
    :func:`aurc_optimal`). ``nan`` on empty input and for a constant score.
    """
    u, c = _prep(uncertainty, correct)
    if u.numel() == 0 or _constant(u):
        return NAN
    _, risk = risk_coverage(u, c)
    return float(risk.mean())


def aurc_optimal(correct: Tensor) -> float:
    r"""AURC of a perfect ranking (every error kept last) at the error rate of ``correct``.

    With ``B`` items of which ``R`` are right: :math:`\frac{1}{B}\sum_{k=1}^{B}
    \max(0, k - R) / k`. ``AURC - aurc_optimal`` is the excess AURC. Defined (0 or the mean of
    ``1`` over ``k``) even when every item is right or every item wrong; ``nan`` on empty input.
    """
    c = torch.as_tensor(correct).detach().reshape(-1).to(torch.bool)
    n = c.numel()
    if n == 0:
        return NAN
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((k - int(c.sum())).clamp_min(0.0) / k).mean())


def accuracy_at_coverage(uncertainty: Tensor, correct: Tensor, coverage: float) -> float:
    r"""Expected accuracy on the :math:`k = \lceil \text{coverage} \cdot B \rceil` most certain
    items: :math:`1 - E_k / k` (:func:`expected_errors`).

    Exactly ``k`` items are kept; when the uncertainty at the cut is tied, the kept tied items
    are a uniformly random subset of the tied block, in expectation. ``nan`` on empty input,
    when ``k == 0`` and for a constant score.
    """
    _check_coverage(coverage)
    u, c = _prep(uncertainty, correct)
    k = _n_kept(coverage, u.numel())
    if k == 0 or _constant(u):
        return NAN
    return 1.0 - float(expected_errors(u, c)[k - 1]) / k


def threshold_for_coverage(uncertainty: Tensor, coverage: float) -> float:
    r"""Uncertainty threshold ``t`` such that keeping items with ``u <= t`` retains ``coverage``.

    ``t`` is the :math:`k`-th smallest uncertainty with :math:`k = \lceil \text{coverage} \cdot B
    \rceil`, the empirical quantile from the inverse CDF (Hyndman-Fan type 1; no interpolation,
    so ``t`` is an observed value). Keeping ``u <= t`` then retains at least the requested
    fraction (more if values at ``t`` are tied), and ``t`` is the smallest threshold that does.
    The result depends on the values only, never on the order of the items.
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
