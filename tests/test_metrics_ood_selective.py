"""OOD detection and selective-prediction metrics, pinned against hand-computed values."""

import itertools
import math

import pytest
import torch

from bnnkit.metrics.ood import fpr_at_95_tpr, ood_aupr, ood_auroc, ood_report
from bnnkit.metrics.selective import (
    accuracy_at_coverage,
    aurc,
    aurc_optimal,
    expected_errors,
    risk_coverage,
    threshold_for_coverage,
)

T = torch.tensor

# ---------------------------------------------------------------- OOD


def test_fpr95_small_by_hand():
    # ID 0.1 0.3 0.5 0.7; OOD 0.2 0.6 0.8 0.9. 95% of 4 OOD = 3.8 -> all 4 must be caught
    # -> threshold 0.2 flags ID 0.3, 0.5, 0.7 -> FPR 3/4
    s = T([0.1, 0.3, 0.5, 0.7, 0.2, 0.6, 0.8, 0.9])
    ood = T([False] * 4 + [True] * 4)
    assert fpr_at_95_tpr(s, ood) == pytest.approx(0.75)
    # AUROC: OOD 0.2 > 1 ID, 0.6 > 3, 0.8 > 4, 0.9 > 4 -> 12/16
    assert ood_auroc(s, ood) == pytest.approx(0.75)


def test_ood_metrics_unbounded_scores_by_hand():
    # 20 OOD scored 1..20, 4 ID scored 0.5, 1.5, 10.5, 30 (scores far outside [0, 1])
    # FPR95: catch 19 of 20 OOD -> threshold 2 -> ID 10.5 and 30 flagged -> 2/4
    # AUROC: OOD above ID 0.5: 20, above 1.5: 19, above 10.5: 10, above 30: 0 -> 49/80
    s = torch.cat([torch.arange(1.0, 21.0), T([0.5, 1.5, 10.5, 30.0])])
    ood = torch.cat([torch.ones(20, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)])
    assert fpr_at_95_tpr(s, ood) == pytest.approx(0.5)
    assert ood_auroc(s, ood) == pytest.approx(49 / 80)
    r = ood_report(s, ood)
    assert r["n_id"] == 4 and r["n_ood"] == 20
    assert r["auroc"] == pytest.approx(49 / 80)
    assert r["fpr95"] == pytest.approx(0.5)
    assert 0.0 < r["aupr"] <= 1.0


def test_ood_large_scores_not_merged():
    # a float32 sigmoid would map both to 1.0 and report 0.5
    s, ood = T([50.0, 60.0]), T([False, True])
    assert ood_auroc(s, ood) == pytest.approx(1.0)
    assert ood_aupr(s, ood) == pytest.approx(1.0)
    assert fpr_at_95_tpr(s, ood) == pytest.approx(0.0)


def test_ood_aupr_by_hand():
    # ranked 0.9(O) 0.8(I) 0.7(O) 0.1(I): AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    assert ood_aupr(T([0.9, 0.8, 0.7, 0.1]), T([True, False, True, False])) == pytest.approx(5 / 6)


def test_ood_degenerate_nan():
    for fn in (ood_auroc, ood_aupr, fpr_at_95_tpr):
        assert math.isnan(fn(T([0.1, 0.2]), T([True, True])))
        assert math.isnan(fn(T([0.1, 0.2]), T([False, False])))
        assert math.isnan(fn(torch.empty(0), torch.empty(0, dtype=torch.bool)))
    r = ood_report(torch.empty(0), torch.empty(0, dtype=torch.bool))
    assert r["n_id"] == 0 and r["n_ood"] == 0 and math.isnan(r["auroc"])


# ---------------------------------------------------------------- selective

# sorted by uncertainty: 0.1 right, 0.2 wrong, 0.3 right, 0.4 wrong
U = T([0.1, 0.4, 0.2, 0.3])
C = T([True, False, False, True])


def test_risk_coverage_and_aurc_by_hand():
    # risk_k: 0/1, 1/2, 1/3, 2/4 -> AURC = (0 + 0.5 + 0.333333 + 0.5) / 4 = 0.333333
    cov, risk = risk_coverage(U, C)
    assert torch.allclose(cov, T([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    assert torch.allclose(risk, T([0.0, 0.5, 1 / 3, 0.5], dtype=torch.float64))
    assert aurc(U, C) == pytest.approx(1 / 3)


def test_aurc_perfect_and_worst_ranking():
    # errors last: risks 0, 0, 1/3 -> 1/9; errors first: 1, 1/2, 1/3 -> 11/18
    assert aurc(T([0.1, 0.2, 0.3]), T([True, True, False])) == pytest.approx(1 / 9)
    assert aurc(T([0.3, 0.2, 0.1]), T([True, True, False])) == pytest.approx(11 / 18)


def _brute_force(u: list[float], correct: list[bool]) -> tuple[float, list[float]]:
    """AURC and accuracy of the k most certain items, averaged over every order of the items
    (each order sorted stably by uncertainty): the expectation under random tie-breaking."""
    n = len(u)
    aurcs, accs = [], []
    for perm in itertools.permutations(range(n)):
        ranked = sorted(perm, key=lambda i: u[i])  # stable: ties keep the permuted order
        wrong = [not correct[i] for i in ranked]
        risks = [sum(wrong[:k]) / k for k in range(1, n + 1)]
        aurcs.append(sum(risks) / n)
        accs.append([1 - r for r in risks])
    return sum(aurcs) / len(aurcs), [sum(a[k] for a in accs) / len(accs) for k in range(n)]


# partial ties: a tied block of 3 (1 error) at 0.2, a tied pair (1 error) at 0.5, one alone
TIED_U = [0.5, 0.2, 0.9, 0.2, 0.5, 0.2]
TIED_C = [True, False, False, True, False, True]


def test_ties_equal_brute_force_expectation_over_orders():
    want_aurc, want_acc = _brute_force(TIED_U, TIED_C)
    u, c = T(TIED_U), T(TIED_C)
    assert aurc(u, c) == pytest.approx(want_aurc, abs=1e-12)
    n = len(TIED_U)
    for k in range(1, n + 1):
        assert accuracy_at_coverage(u, c, k / n) == pytest.approx(want_acc[k - 1], abs=1e-12)
    _, risk = risk_coverage(u, c)
    assert risk.tolist() == pytest.approx([1 - a for a in want_acc], abs=1e-12)
    # by hand: block 0.2 (1 error in 3) -> expected errors 1/3, 2/3, 1; block 0.5 -> 1.5, 2; 3
    assert risk.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.5 / 4, 2 / 5, 3 / 6])


def test_ties_invariant_to_permuting_items():
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 4, (40,), generator=g).double() / 4  # 4 values: many ties
    c = torch.rand(40, generator=g) < 0.7
    u[:3] = T([0.1, 0.6, 0.9], dtype=torch.float64)  # and a few untied items
    ref = (aurc(u, c), [accuracy_at_coverage(u, c, q) for q in (0.1, 0.33, 0.8, 0.9)])
    for seed in range(5):
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
        got = (aurc(u[perm], c[perm]), [accuracy_at_coverage(u[perm], c[perm], q)
                                       for q in (0.1, 0.33, 0.8, 0.9)])  # fmt: skip
        assert got[0] == pytest.approx(ref[0], abs=1e-12)
        assert got[1] == pytest.approx(ref[1], abs=1e-12)


def test_map_like_constant_score_is_nan_whatever_the_order():
    # the case: epistemic = 0 for every item, reals and fakes listed in either order
    # (stable order gave AURC 0.629 or 0.065 for the same 10 items)
    c = T([True] * 7 + [False] * 3)
    for order in (c, c.flip(0)):
        assert math.isnan(aurc(torch.zeros(10), order))
        assert math.isnan(accuracy_at_coverage(torch.zeros(10), order, 0.8))
        # the curve itself is the expected one: flat at the error rate
        _, risk = risk_coverage(torch.zeros(10), order)
        assert torch.allclose(risk, torch.full((10,), 0.3, dtype=torch.float64))
    assert math.isnan(aurc(T([0.4]), T([True])))  # a single item ranks nothing either
    assert expected_errors(torch.zeros(4), T([False, True, True, False])).tolist() == [
        0.5, 1.0, 1.5, 2.0
    ]  # fmt: skip


def test_aurc_optimal():
    # a perfect ranking keeps the 2 errors of 5 for last: risks 0, 0, 0, 1/4, 2/5
    c = T([True, False, True, True, False])
    assert aurc_optimal(c) == pytest.approx((1 / 4 + 2 / 5) / 5)
    assert aurc_optimal(c) == pytest.approx(aurc((~c).double(), c))
    assert aurc_optimal(T([True] * 4)) == 0.0  # defined although (~correct) would be constant
    assert aurc_optimal(T([False] * 2)) == 1.0
    assert math.isnan(aurc_optimal(torch.empty(0, dtype=torch.bool)))


def test_accuracy_at_coverage_by_hand():
    assert accuracy_at_coverage(U, C, 0.25) == pytest.approx(1.0)  # keep 0.1
    assert accuracy_at_coverage(U, C, 0.5) == pytest.approx(0.5)  # keep 0.1, 0.2
    assert accuracy_at_coverage(U, C, 0.3) == pytest.approx(0.5)  # ceil(1.2) = 2 items
    assert accuracy_at_coverage(U, C, 0.75) == pytest.approx(2 / 3)
    assert accuracy_at_coverage(U, C, 1.0) == pytest.approx(0.5)
    assert math.isnan(accuracy_at_coverage(U, C, 0.0))
    assert math.isnan(accuracy_at_coverage(torch.empty(0), torch.empty(0, dtype=torch.bool), 0.5))
    with pytest.raises(ValueError):
        accuracy_at_coverage(U, C, 1.5)


def test_threshold_for_coverage_by_hand():
    assert threshold_for_coverage(U, 0.5) == pytest.approx(0.2)  # 2nd smallest
    assert threshold_for_coverage(U, 0.6) == pytest.approx(0.3)  # ceil(2.4) = 3rd smallest
    assert threshold_for_coverage(U, 1.0) == pytest.approx(0.4)
    assert threshold_for_coverage(U, 0.0) == float("-inf")
    # 0.3 * 10 = 3.0000000000000004 in floats: still the 3rd smallest, not the 4th
    assert threshold_for_coverage(torch.arange(10.0), 0.3) == 2.0
    # ties: keeping u <= 0.2 retains 3 of 4 (>= the requested half)
    assert threshold_for_coverage(T([0.1, 0.2, 0.2, 0.3]), 0.5) == pytest.approx(0.2)
    assert math.isnan(threshold_for_coverage(torch.empty(0), 0.5))


def test_threshold_for_coverage_retains_at_least_requested():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(101, generator=g).round(decimals=1)  # many ties
    for cov in (0.05, 0.1, 0.33, 0.5, 0.8, 0.95, 1.0):
        t = threshold_for_coverage(u, cov)
        kept = (u <= t).double().mean().item()
        assert kept >= cov - 1e-12
        # t is the smallest such threshold: keeping u < t would fall short
        assert (u < t).double().mean().item() < cov


def test_aurc_empty_is_nan():
    assert math.isnan(aurc(torch.empty(0), torch.empty(0, dtype=torch.bool)))
    cov, risk = risk_coverage(torch.empty(0), torch.empty(0, dtype=torch.bool))
    assert cov.numel() == 0 and risk.numel() == 0
