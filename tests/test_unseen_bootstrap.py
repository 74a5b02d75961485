"""The bootstrap interval of ``benchmarks/unseen.py``'s headline (``benchmarks/unseen_stats.py``)
against hand computations: degenerate cases, exact binomial quantiles, coverage of the truth in a
simulation, stratification and the refitted threshold."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "unseen_stats.py"
_spec = importlib.util.spec_from_file_location("unseen_stats", _PATH)
stats = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, stats)  # dataclasses look their module up
_spec.loader.exec_module(stats)
Stratum = stats.Stratum


def _fixed(caught: int, missed: int, correct: int = 0, threshold: float = 0.0) -> Stratum:
    """Errors above (caught) and below (missed) a fixed threshold, plus correct images."""
    scores = np.r_[np.ones(caught), -np.ones(missed), np.ones(correct)]
    errors = np.r_[np.ones(caught + missed, bool), np.zeros(correct, bool)]
    return Stratum(scores, errors, threshold)


def test_every_error_caught_gives_one_one():
    # the threshold refitted on seen scores that are all 0 is 0 in every resample
    s = Stratum(np.ones(30), np.r_[np.ones(20, bool), np.zeros(10, bool)], 0.0, np.zeros(50))
    assert stats.caught_rate([s]) == 1.0
    assert stats.bootstrap_caught([s]) == (1.0, 1.0)


def test_no_error_at_all_gives_nan():
    low, high = stats.bootstrap_caught([_fixed(0, 0, correct=10)])
    assert math.isnan(low) and math.isnan(high)
    assert math.isnan(stats.caught_rate([_fixed(0, 0, correct=10)]))


def _binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(Binomial(n, p) <= k) >= q, by summing the pmf."""
    cdf = 0.0
    for k in range(n + 1):
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if cdf >= q:
            return k
    return n


def test_fixed_threshold_all_errors_is_the_binomial_percentile_interval():
    # 400 images, all errors, 120 above the fixed threshold: each resample's caught count is
    # Binomial(400, 0.3), so the percentile interval is its 2.5 % and 97.5 % quantiles / 400
    # (up to the Monte Carlo error of 2000 resamples, about half a count).
    n = 400
    low, high = stats.bootstrap_caught([_fixed(120, 280)], resamples=2000, seed=1)
    assert abs(low - _binomial_quantile(n, 0.3, 0.025) / n) <= 3 / n
    assert abs(high - _binomial_quantile(n, 0.3, 0.975) / n) <= 3 / n
    assert low < 0.3 < high


def test_interval_covers_the_true_rate_about_95_percent_of_the_time():
    # 300 images per draw, each an error with p 0.3, an error caught with p 0.6 (the truth)
    rng = np.random.default_rng(7)
    truth, reps, covered = 0.6, 200, 0
    for rep in range(reps):
        errors = rng.random(300) < 0.3
        scores = np.where(rng.random(300) < truth, 1.0, -1.0)
        low, high = stats.bootstrap_caught([Stratum(scores, errors, 0.0)], 500, seed=rep)
        covered += low <= truth <= high
    assert 0.88 * reps <= covered <= 0.99 * reps


def test_strata_keep_their_image_counts():
    # fold A: 50 errors all caught; fold B: 50 errors none caught. Stratified, every resample
    # has 50 + 50 errors and catches exactly 50; pooled unstratified it would vary.
    strata = [_fixed(50, 0), _fixed(0, 50)]
    assert stats.caught_rate(strata) == 0.5
    assert stats.bootstrap_caught(strata) == (0.5, 0.5)


def test_threshold_is_refitted_on_each_resample():
    # fit scores: nine 0s and one 10; coverage 0.9 keeps k = 9, so the threshold is 0 unless a
    # resample draws the 10 at least twice (then 10). Unseen: errors at score 5, caught iff the
    # threshold is 0, which happens with probability 0.9^10 + 10 * 0.1 * 0.9^9 = 0.74: each
    # resample catches all or none, so the interval is [0, 1]. Held fixed at 0: [1, 1].
    fit = np.r_[np.zeros(9), 10.0]
    unseen = np.full(20, 5.0), np.ones(20, bool)
    assert stats.threshold_np(fit) == 0.0
    assert stats.bootstrap_caught([Stratum(*unseen, 0.0, fit)]) == (0.0, 1.0)
    assert stats.bootstrap_caught([Stratum(*unseen, 0.0)]) == (1.0, 1.0)


def test_bootstrap_is_seeded():
    s = [_fixed(30, 70, correct=50)]
    assert stats.bootstrap_caught(s, seed=3) == stats.bootstrap_caught(s, seed=3)


@pytest.mark.parametrize("n", [1, 7, 10, 33, 280])
@pytest.mark.parametrize("coverage", [0.0, 0.3, 0.9, 1.0])
def test_threshold_np_is_bnnkit_threshold_for_coverage(n, coverage):
    torch = pytest.importorskip("torch")
    from bnnkit.metrics.selective import threshold_for_coverage

    u = np.random.default_rng(n).normal(size=n).round(1)  # ties included
    assert stats.threshold_np(u, coverage) == threshold_for_coverage(torch.tensor(u), coverage)
