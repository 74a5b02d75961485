"""Split-conformal thresholds (issue 22, item 2), checked by simulation: over 1000 random
calibration/test splits of a synthetic record, the share of seen test images kept is at least
1 - alpha on average and at most 1 - alpha + 1/(n + 1); the Neyman-Pearson verdict threshold
calls at most alpha of the real test images fake on average. The naive empirical quantile
(index ceil(n (1 - alpha)) instead of ceil((n + 1)(1 - alpha))) fails the same simulation at
small n, so the test would catch that mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bnnkit.metrics.conformal import (
    conformal_index,
    conformal_threshold,
    neyman_pearson_threshold,
)

SPLITS = 1000


def _record(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic evaluation record: per image a score (a heavy-tailed mixture with a tied
    atom), a label and p(fake)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.where(rng.random(n) < 0.1, 0.0, rng.standard_t(3, n) ** 2)  # 10 % tied at 0
    p_fake = 1 / (1 + np.exp(-(2.0 * labels - 1.0) * 1.5 - rng.normal(0, 1.5, n)))
    return scores, labels, p_fake


def _mean_kept(n_cal: int, alpha: float, threshold=conformal_threshold) -> float:
    scores, _, _ = _record()
    rng = np.random.default_rng(1)
    kept = []
    for _ in range(SPLITS):
        order = rng.permutation(scores.size)
        cal, test = scores[order[:n_cal]], scores[order[n_cal : n_cal + 200]]
        t = threshold(torch.from_numpy(cal), alpha)
        kept.append(np.mean(test <= t))
    return float(np.mean(kept))


@pytest.mark.parametrize(("n_cal", "alpha"), [(5, 0.2), (19, 0.1), (50, 0.1), (200, 0.05)])
def test_split_conformal_keeps_at_least_one_minus_alpha_of_new_seen_images(n_cal, alpha):
    mean = _mean_kept(n_cal, alpha)
    mc = 3 * math.sqrt(alpha * (1 - alpha) / (SPLITS * 200)) + 3 * math.sqrt(
        alpha * (1 - alpha) / SPLITS / n_cal
    )  # Monte-Carlo slack: test images and calibration sets
    assert mean >= 1 - alpha - mc
    # the upper bound holds for untied scores; 10 % of these tie at 0, below every threshold
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + mc


def test_the_naive_quantile_violates_the_guarantee_at_small_n():
    def naive(scores, alpha):
        s = torch.sort(scores.double()).values
        return float(s[math.ceil(s.numel() * (1 - alpha)) - 1])

    assert _mean_kept(5, 0.2, naive) < 0.8 - 0.05  # 4 of 6 ranks: about 0.67
    assert _mean_kept(5, 0.2) >= 0.8 - 0.02


def test_neyman_pearson_threshold_bounds_the_real_images_called_fake():
    scores, labels, p_fake = _record(2)
    rng = np.random.default_rng(3)
    alpha, n_cal, false_alarms = 0.05, 100, []
    for _ in range(SPLITS):
        order = rng.permutation(labels.size)
        cal, test = order[:n_cal], order[n_cal : n_cal + 400]
        t = neyman_pearson_threshold(
            torch.from_numpy(p_fake[cal]), torch.from_numpy(labels[cal]), alpha
        )
        reals = test[labels[test] == 0]
        false_alarms.append(np.mean(p_fake[reals] > t))
    assert np.mean(false_alarms) <= alpha + 3 * math.sqrt(alpha / (SPLITS * 200))
    assert np.mean(false_alarms) >= alpha - 0.03  # not trivially conservative


def test_index_edge_cases():
    assert conformal_index(9, 0.1) == 9  # (n + 1)(1 - alpha) = 9 exactly: no round-up
    assert conformal_index(5, 0.2) == 5
    assert conformal_threshold(torch.tensor([1.0, 2.0]), 0.1) == math.inf  # k = 3 > n
    assert conformal_threshold(torch.tensor([3.0, 1.0, 2.0]), 0.5) == 2.0  # k = 2
    with pytest.raises(ValueError):
        conformal_index(10, 0.0)
