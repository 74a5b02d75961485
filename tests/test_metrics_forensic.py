"""R.Acc / F.Acc, EER, oracle-threshold accuracy, balanced Cllr and TPR@0.1/1/5% FPR against
independent computations: scikit-learn's ROC (EER, TPR@FPR), a brute-force threshold sweep
(oracle accuracy) and hand computations (Cllr in its likelihood-ratio form, R.Acc / F.Acc),
with tied and saturated probabilities; undefined cases are NaN (null in metrics.json)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from bnnkit.metrics.classification import classification_report, tpr_at_fpr
from bnnkit.metrics.forensic import (
    EPS,
    cllr,
    eer,
    fake_accuracy,
    forensic_report,
    oracle_accuracy,
    real_accuracy,
)
from bnnkit.metrics.protocol import clean_json, condition_metrics
from bnnkit.metrics.records import Predictions

FORENSIC_KEYS = {"real_accuracy", "fake_accuracy", "eer", "oracle_accuracy", "cllr"}


def T(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# -- independent references ------------------------------------------------------------------


def sk_eer(y: np.ndarray, p: np.ndarray) -> float:
    """Where scikit-learn's ROC polyline (collinear points dropped) meets FPR = 1 - TPR: along
    u = FPR + TPR, which rises from 0 to 2 on the curve, interpolate the FPR at u = 1."""
    fpr, tpr, _ = roc_curve(y, p)
    u = fpr + tpr
    return float(np.interp(1.0, u, fpr))


def sk_tpr_at_fpr(y: np.ndarray, p: np.ndarray, rate: float) -> float:
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    return float(tpr[fpr <= rate + 1e-12].max())


def brute_oracle(y: np.ndarray, p: np.ndarray) -> float:
    thresholds = np.concatenate([np.unique(p), [np.inf]])
    return max(float(((p >= t).astype(int) == y).mean()) for t in thresholds)


def lr_cllr(y: np.ndarray, p: np.ndarray) -> float:
    """The textbook likelihood-ratio form, p clipped at float64 epsilon."""
    eps = np.finfo(np.float64).eps
    q = np.clip(p, eps, 1 - eps)
    lr = q / (1 - q)
    return 0.5 * (np.mean(np.log2(1 + 1 / lr[y == 1])) + np.mean(np.log2(1 + lr[y == 0])))


# -- hand-computed examples ------------------------------------------------------------------

# reals 0.1, 0.4, 0.6, 0.6; fakes 0.6, 0.6, 0.8, 0.3: a tie at 0.6 across the classes
TIED_P = [0.1, 0.4, 0.6, 0.6, 0.6, 0.6, 0.8, 0.3]
TIED_Y = [0, 0, 0, 0, 1, 1, 1, 1]


def test_hand_computed_example_with_a_tie_across_classes():
    p, y = T(TIED_P), T(TIED_Y)
    assert real_accuracy(p, y) == pytest.approx(2 / 4)  # 0.1, 0.4 called real
    assert fake_accuracy(p, y) == pytest.approx(3 / 4)  # 0.6, 0.6, 0.8 called fake
    # ROC: (0,0) (0,.25) (.5,.75) (.75,.75) (.75,1) (1,1); FPR + TPR - 1 crosses 0 between the
    # second and third point (the tied block), at 3/4 of the way: FPR = FNR = 0.375
    assert eer(p, y) == pytest.approx(0.375)
    # correct per operating point: 4, 5, 5, 4, 5, 4 of 8
    assert oracle_accuracy(p, y) == pytest.approx(5 / 8)
    fakes = -(math.log2(0.6) * 2 + math.log2(0.8) + math.log2(0.3)) / 4
    reals = -(math.log2(0.9) + math.log2(0.6) + math.log2(0.4) * 2) / 4
    assert cllr(p, y) == pytest.approx(0.5 * (fakes + reals), abs=1e-12)
    assert cllr(p, y) == pytest.approx(lr_cllr(np.array(TIED_Y), np.array(TIED_P)), abs=1e-12)


def test_reference_points_and_saturation():
    y = T([0, 0, 1, 1])
    # uninformative: Cllr 1 bit, EER 0.5 (the diagonal), oracle = majority (here half)
    flat = T([0.5] * 4)
    assert cllr(flat, y) == pytest.approx(1.0)
    assert eer(flat, y) == pytest.approx(0.5)
    assert oracle_accuracy(flat, y) == pytest.approx(0.5)
    # perfect and saturated: Cllr ~0, EER 0, oracle 1
    perfect = T([0.0, 0.0, 1.0, 1.0])
    assert cllr(perfect, y) == pytest.approx(0.0, abs=1e-12)
    assert eer(perfect, y) == 0.0 and oracle_accuracy(perfect, y) == 1.0
    # one saturated error per class: each costs log2(1 / eps) = 52 bits, finite
    wrong = T([0.0, 1.0, 1.0, 0.0])
    assert EPS == 2.0**-52
    assert cllr(wrong, y) == pytest.approx(0.5 * (52 / 2 + 52 / 2), abs=1e-9)
    assert cllr(wrong, y) == pytest.approx(lr_cllr(np.array([0, 0, 1, 1]), wrong.numpy()))
    # all wrong, saturated: EER 1 (every threshold errs on everything), oracle 1/2
    inverted = T([1.0, 1.0, 0.0, 0.0])
    assert eer(inverted, y) == pytest.approx(1.0)
    assert oracle_accuracy(inverted, y) == pytest.approx(0.5)


def test_one_class_and_empty_are_nan_then_null():
    fakes_only = classification_report(T([0.9, 0.2, 0.7]), T([1, 1, 1]))
    assert fakes_only["fake_accuracy"] == pytest.approx(2 / 3)
    for key in ("real_accuracy", "eer", "oracle_accuracy", "cllr", "tpr_at_fpr_0_1"):
        assert math.isnan(fakes_only[key]), key
    reals_only = forensic_report(T([0.9, 0.2]), T([0, 0]))
    assert reals_only["real_accuracy"] == pytest.approx(0.5)
    assert math.isnan(reals_only["fake_accuracy"]) and math.isnan(reals_only["cllr"])
    empty = forensic_report(T([]), T([]))
    assert set(empty) == FORENSIC_KEYS and all(math.isnan(v) for v in empty.values())
    cleaned = clean_json(fakes_only)
    assert cleaned["eer"] is None and cleaned["real_accuracy"] is None
    json.dumps(cleaned, allow_nan=False)  # null, never NaN


# -- random cross-checks with ties and saturation --------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = [40, 300, 2500][seed % 3]  # 2500: 0.1% FPR allows at least one false positive
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.3, n), 0, 1)
    if seed % 2:
        p = np.round(p * 8) / 8  # 9 distinct values, many ties, 0.5 exactly included
    p[2:6] = [0.0, 1.0, 1.0, 0.0]  # saturated, two of them wrong when the labels say so
    pt, yt = torch.from_numpy(p), torch.from_numpy(y)
    r = classification_report(pt, yt)
    assert r["eer"] == pytest.approx(sk_eer(y, p), abs=1e-9)
    for key, rate in (("tpr_at_fpr_0_1", 0.001), ("tpr_at_fpr_1", 0.01), ("tpr_at_fpr_5", 0.05)):
        assert r[key] == pytest.approx(sk_tpr_at_fpr(y, p, rate), abs=1e-12), key
    assert r["oracle_accuracy"] == pytest.approx(brute_oracle(y, p), abs=1e-12)
    assert r["oracle_accuracy"] >= r["accuracy"]  # the 0.5 threshold is one candidate
    assert r["cllr"] == pytest.approx(lr_cllr(y, p), rel=1e-9)
    assert r["real_accuracy"] == pytest.approx(float(np.mean(p[y == 0] < 0.5)))
    assert r["fake_accuracy"] == pytest.approx(float(np.mean(p[y == 1] >= 0.5)))
    # the two class accuracies average to the balanced accuracy
    assert r["balanced_accuracy"] == pytest.approx((r["real_accuracy"] + r["fake_accuracy"]) / 2)
    # order of the images does not matter (ties move together)
    perm = torch.from_numpy(rng.permutation(n))
    assert forensic_report(pt[perm], yt[perm]) == pytest.approx(forensic_report(pt, yt))


def test_tpr_at_tenth_of_a_percent_reuses_tpr_at_fpr():
    y = T([0] * 1000 + [1] * 4)
    p = T([0.0] * 999 + [0.95] + [0.99, 0.9, 0.97, 0.0])
    r = classification_report(p, y)
    assert r["tpr_at_fpr_0_1"] == tpr_at_fpr(p, y, 0.001) == pytest.approx(3 / 4)  # 1 FP allowed


# -- wiring: per generator, seen and unseen pools of metrics.json ----------------------------


def test_condition_metrics_carry_the_forensic_keys():
    gens = torch.arange(3).repeat_interleave(8)
    labels = torch.arange(8).remainder(2).repeat(3)
    p = torch.where(labels == 1, 0.7, 0.2).double()
    p[16:24:2] = 0.6  # the unseen generator's reals: all called fake
    u = torch.zeros(24, dtype=torch.float64)
    data = Predictions(p, u, u, u, labels, gens, torch.arange(24))
    m = clean_json(condition_metrics(data, ["adm", "biggan", "midjourney"], n_seen=2))
    for group in (*m["per_generator"].values(), m["seen"], m["unseen"]):
        assert FORENSIC_KEYS | {"tpr_at_fpr_0_1"} <= set(group)
    assert m["per_generator"]["midjourney"]["real_accuracy"] == 0.0
    assert m["per_generator"]["midjourney"]["fake_accuracy"] == 1.0
    assert m["unseen"]["eer"] == pytest.approx(sk_eer(labels[16:].numpy(), p[16:].numpy()))
    assert m["seen"]["real_accuracy"] == 1.0 and m["seen"]["eer"] == 0.0


def test_terminal_detection_table_shows_real_and_fake_accuracy():
    import io

    from rich.console import Console

    from bnnkit.report.tables import render_markdown, render_rich
    from bnnkit.report.tables_generators import detection_table, forensic_table

    gens = torch.arange(2).repeat_interleave(6)
    labels = torch.arange(6).remainder(2).repeat(2)
    p = torch.where(labels == 1, 0.9, 0.1).double()
    p[0] = 0.8  # one real of adm called fake: R.Acc 2/3
    u = torch.zeros(12, dtype=torch.float64)
    data = Predictions(p, u, u, u, labels, gens, torch.arange(12))
    m = clean_json(condition_metrics(data, ["adm", "biggan"], n_seen=2))
    m.update(run="r", method="map", samples=1, split="val")
    buf = io.StringIO()
    Console(file=buf, width=80, highlight=False).print(render_rich(detection_table(m)))
    lines = buf.getvalue().splitlines()
    header = next(ln for ln in lines if "generator" in ln).split()
    adm = next(ln for ln in lines if ln.strip().startswith("adm")).split()
    assert adm[header.index("R.Acc")] == "0.667" and adm[header.index("F.Acc")] == "1.000"
    md = render_markdown(forensic_table(m)).splitlines()
    assert md[0].split(" | ")[1:7] == ["n", "R.Acc", "F.Acc", "EER", "oracle acc", "Cllr (bits)"]
    assert md[2].startswith("| adm | 6 | 0.667 | 1.000 | 0.000 | 1.000 |")
