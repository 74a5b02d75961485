"""OOD detection and selective-prediction metrics, pinned against hand-computed values."""

import math

import pytest
import torch

from bnnkit.metrics.ood import fpr_at_95_tpr, ood_aupr, ood_auroc, ood_report
from bnnkit.metrics.selective import (
    accuracy_at_coverage,
    aurc,
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


def test_risk_coverage_ties_are_stable():
    # equal uncertainty: input order decides, deterministically
    _, risk = risk_coverage(T([0.5, 0.5]), T([False, True]))
    assert torch.allclose(risk, T([1.0, 0.5], dtype=torch.float64))
    _, risk = risk_coverage(T([0.5, 0.5]), T([True, False]))
    assert torch.allclose(risk, T([0.0, 0.5], dtype=torch.float64))


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
