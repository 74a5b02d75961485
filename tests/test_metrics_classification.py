"""Classification and calibration metrics, pinned against hand-computed values."""

import math

import pytest
import torch

from bnnkit.metrics.classification import (
    accuracy,
    adaptive_ece,
    auroc,
    average_precision,
    balanced_accuracy,
    brier,
    classification_report,
    ece,
    ece_bin_index,
    nll,
    tpr_at_fpr,
)

T = torch.tensor


def test_accuracy_tie_goes_to_fake():
    # p = [0.9, 0.2, 0.6, 0.5] -> predictions [1, 0, 1, 1] (0.5 counts as fake)
    # labels [1, 0, 0, 1] -> correct [1, 1, 0, 1] -> 3/4
    assert accuracy(T([0.9, 0.2, 0.6, 0.5]), T([1, 0, 0, 1])) == pytest.approx(0.75)


def test_balanced_accuracy():
    # predictions [1, 0, 1, 1], labels [1, 0, 0, 0]: accuracy 2/4
    # TPR = 1/1 (the one fake), TNR = 1/3 (reals at 0.2 / 0.6 / 0.5) -> (1 + 1/3) / 2 = 2/3
    p, y = T([0.9, 0.2, 0.6, 0.5]), T([1, 0, 0, 0])
    assert accuracy(p, y) == pytest.approx(0.5)
    assert balanced_accuracy(p, y) == pytest.approx(2 / 3)
    # a fakes-only subset: balanced accuracy is the TPR (classes present only)
    assert balanced_accuracy(T([0.9, 0.1]), T([1, 1])) == pytest.approx(0.5)


def test_nll():
    # p_true = [0.9, 0.8, 0.4, 1.0] -> -ln: 0.1053605, 0.2231436, 0.9162907, 0 -> mean 0.3111987
    p, y = T([0.9, 0.2, 0.6, 0.0]), T([1, 0, 0, 0])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 4
    assert nll(p, y) == pytest.approx(expected)
    assert nll(p, y) == pytest.approx(0.3111987, abs=1e-6)
    # confidently wrong: p_true = 0 is clamped at 1e-12 -> -ln(1e-12) = 27.631021
    assert nll(T([1.0]), T([0])) == pytest.approx(27.631021, abs=1e-5)


def test_brier_two_class_sum():
    # per item sum over 2 classes = 2 (p - y)^2: 0.02, 0.08, 0.72, 0 -> mean 0.205
    assert brier(T([0.9, 0.2, 0.6, 0.0]), T([1, 0, 0, 0])) == pytest.approx(0.205)
    assert brier(T([1.0, 0.0]), T([0, 1])) == pytest.approx(2.0)


# Calibration example. Top-label view (predicted class, its confidence, correct?):
#   p=0.90 y=1 -> fake 0.90 right   (15 bins of width 1/15: 0.90*15 = 13.5  -> bin 13)
#   p=0.92 y=0 -> fake 0.92 wrong   (13.8  -> bin 13)
#   p=0.30 y=0 -> real 0.70 right   (10.5  -> bin 10)
#   p=0.62 y=1 -> fake 0.62 right   (9.3   -> bin 9)
#   p=0.05 y=0 -> real 0.95 right   (14.25 -> bin 14)
#   p=0.35 y=1 -> real 0.65 wrong   (9.75  -> bin 9)
CAL_P = T([0.90, 0.92, 0.30, 0.62, 0.05, 0.35])
CAL_Y = T([1, 0, 0, 1, 0, 1])


def test_ece_top_label_by_hand():
    # bin 13: conf mean 0.91, acc 1/2 -> 0.41 x 2 items
    # bin 10: 0.70 vs 1 -> 0.30;  bin 9: mean 0.635, acc 1/2 -> 0.135 x 2;  bin 14: 0.05
    # ECE = (0.82 + 0.30 + 0.27 + 0.05) / 6 = 1.44 / 6 = 0.24
    assert ece(CAL_P, CAL_Y) == pytest.approx(0.24, abs=1e-6)


def test_ece_positive_class_convention_by_hand():
    # torchmetrics' binary convention: bin p itself, "accuracy" = fraction of label 1
    # bin 13: mean p 0.91, frac 1/2 -> 0.41 x 2; bin 4 (0.30): 0.30; bin 9 (0.62): |1-0.62| = 0.38
    # bin 0 (0.05): 0.05; bin 5 (0.35): 0.65 -> (0.82 + 0.30 + 0.38 + 0.05 + 0.65) / 6 = 2.2 / 6
    assert ece(CAL_P, CAL_Y, convention="positive_class") == pytest.approx(2.2 / 6, abs=1e-6)
    with pytest.raises(ValueError):
        ece(CAL_P, CAL_Y, convention="nope")


def test_ece_perfectly_calibrated_is_zero():
    # 4 items at p=0.75, 3 fakes: top-label conf 0.75, acc 3/4 -> 0
    assert ece(T([0.75] * 4), T([1, 1, 1, 0])) == pytest.approx(0.0, abs=1e-7)


def test_ece_guo_bins_with_confidence_one_and_exact_edges():
    # Guo et al.'s 15 bins (i/15, (i+1)/15]; top-label (predicted class, confidence, right?):
    #   p=1.0   y=0 -> fake 1.0   wrong  -> bin 14 (a confidence of 1 is in the last bin)
    #   p=0.0   y=0 -> real 1.0   right  -> bin 14
    #   p=0.95  y=1 -> fake 0.95  right  -> bin 14
    #   p=14/15 y=0 -> fake 14/15 wrong  -> bin 13 (upper edge belongs to the lower bin)
    #   p=0.9   y=1 -> fake 0.9   right  -> bin 13
    #   p=0.5   y=0 -> fake 0.5   wrong  -> bin 7  (7/15 < 0.5 <= 8/15)
    #   p=8/15  y=1 -> fake 8/15  right  -> bin 7
    # bin 14: |2 - 2.95| = 0.95; bin 13: |1 - (14/15 + 0.9)| = 0.8333..; bin 7: |1 - 31/30|
    p = T([1.0, 0.0, 0.95, 14 / 15, 0.9, 0.5, 8 / 15], dtype=torch.float64)
    y = T([0, 0, 1, 0, 1, 0, 1])
    want = (0.95 + (14 / 15 + 0.9 - 1) + (0.5 + 8 / 15 - 1)) / 7
    assert ece(p, y) == pytest.approx(want, abs=1e-12)
    # torchmetrics' binning ([i/15, (i+1)/15) plus a bin of its own for 1.0) gives more
    from torchmetrics.functional.classification import binary_calibration_error

    conf = torch.maximum(p, 1 - p)
    hit = ((p >= 0.5).long() == y).long()
    assert float(binary_calibration_error(conf, hit, n_bins=15)) > want + 0.01


def test_ece_positive_class_edges_ten_bins():
    # bins (i/10, (i+1)/10], 0 in bin 0: 0.5 -> bin 4, 0.55 -> bin 5, 1.0 -> bin 9,
    # 0.0 and 0.1 -> bin 0. bin 4: |1 - 1.0| = 0; bin 5: 0.55; bin 9: 0; bin 0: |1 - 0.1| = 0.9
    p = T([0.5, 0.5, 0.55, 1.0, 0.0, 0.1], dtype=torch.float64)
    y = T([1, 0, 0, 1, 1, 0])
    assert ece(p, y, n_bins=10, convention="positive_class") == pytest.approx(1.45 / 6)
    # and at 1/15 with 15 bins: 1/15 -> bin 0 with 0.0, 2/15 -> bin 1
    p = T([0.0, 1 / 15, 2 / 15], dtype=torch.float64)
    y = T([1, 0, 0])
    assert ece(p, y, convention="positive_class") == pytest.approx((1 - 1 / 15 + 2 / 15) / 3)


def test_ece_bin_index():
    conf = T([0.0, 1 / 15, 0.07, 0.5, 8 / 15, 14 / 15, 0.99, 1.0], dtype=torch.float64)
    assert ece_bin_index(conf, 15).tolist() == [0, 0, 1, 7, 7, 13, 14, 14]


def test_adaptive_ece_ties_do_not_depend_on_order():
    # four fakes at p=0.6 (tied confidences), two right: 2 equal-mass bins split the tie.
    # Each tied item counts with the block's accuracy 1/2 -> |0.5 - 0.6| in both bins = 0.1
    # (stable order gave |1 - 0.6| and |0 - 0.6| -> 0.5 for labels [1, 1, 0, 0])
    for labels in ([1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]):
        assert adaptive_ece(T([0.6] * 4), T(labels), n_bins=2) == pytest.approx(0.1)
    g = torch.Generator().manual_seed(0)
    p = torch.randint(1, 6, (30,), generator=g).double() / 6
    y = torch.randint(0, 2, (30,), generator=g)
    ref = adaptive_ece(p, y, n_bins=4)
    for seed in range(4):
        perm = torch.randperm(30, generator=torch.Generator().manual_seed(seed))
        assert adaptive_ece(p[perm], y[perm], n_bins=4) == pytest.approx(ref, abs=1e-12)


def test_adaptive_ece_by_hand():
    # sorted top-label conf: 0.62 r, 0.65 w, 0.70 r, 0.90 r, 0.92 w, 0.95 r
    # 3 equal-mass bins of 2: |0.5 - 0.635| = 0.135, |1 - 0.80| = 0.20, |0.5 - 0.935| = 0.435
    # ACE = (0.135 + 0.20 + 0.435) / 3 = 0.256667
    assert adaptive_ece(CAL_P, CAL_Y, n_bins=3) == pytest.approx(0.77 / 3, abs=1e-6)
    # 15 bins > 6 items: one item per bin -> mean |correct - conf|
    # = (0.38 + 0.65 + 0.30 + 0.10 + 0.92 + 0.05) / 6 = 2.40 / 6 = 0.4
    assert adaptive_ece(CAL_P, CAL_Y) == pytest.approx(0.4, abs=1e-6)
    # uneven split, 7 items in 3 bins -> sizes 3, 2, 2: all right at conf 0.9 -> 0.1
    assert adaptive_ece(T([0.9] * 7), T([1] * 7), n_bins=3) == pytest.approx(0.1, abs=1e-6)


def test_auroc_and_ap_by_hand():
    # reals 0.1, 0.4; fakes 0.35, 0.8. Pairs (fake > real): 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    # AP: ranked 0.8(F) 0.4(R) 0.35(F) 0.1(R): 0.5 * 1 + 0.5 * 2/3 = 0.833333
    p, y = T([0.1, 0.4, 0.35, 0.8]), T([0, 0, 1, 1])
    assert auroc(p, y) == pytest.approx(0.75)
    assert average_precision(p, y) == pytest.approx(5 / 6)
    # ties count one half
    assert auroc(T([0.5, 0.5]), T([0, 1])) == pytest.approx(0.5)


def test_auroc_not_fooled_by_values_outside_unit_interval():
    # float error can push a mean probability slightly above 1; ranking must be unaffected
    assert auroc(T([0.2, 1.0000001, 0.9]), T([0, 1, 0])) == pytest.approx(1.0)


def test_tpr_at_fpr_by_hand():
    # reals 0.1 0.3 0.5 0.7, fakes 0.2 0.6 0.8 0.9; flag fake if p >= t
    #   t=0.9: TP 1 FP 0 | t=0.8: TP 2 FP 0 | t=0.7: TP 2 FP 1 | t=0.6: TP 3 FP 1 | t=0.5: TP 3 FP 2
    p = T([0.1, 0.3, 0.5, 0.7, 0.2, 0.6, 0.8, 0.9])
    y = T([0, 0, 0, 0, 1, 1, 1, 1])
    assert tpr_at_fpr(p, y, fpr=0.25) == pytest.approx(0.75)  # t = 0.6
    assert tpr_at_fpr(p, y, fpr=0.0) == pytest.approx(0.5)  # t = 0.8
    assert tpr_at_fpr(p, y, fpr=0.24) == pytest.approx(0.5)  # budget < 1 real: no interpolation
    assert tpr_at_fpr(p, y, fpr=0.5) == pytest.approx(0.75)
    assert tpr_at_fpr(p, y, fpr=1.0) == pytest.approx(1.0)


def test_tpr_at_fpr_exact_budget_in_counts():
    # 100 reals with distinct scores, 1 fake above all but the top real, 1 below all
    reals = torch.linspace(0.0, 0.5, 99).tolist() + [0.99]
    p = T(reals + [0.9, -0.0])
    y = T([0] * 100 + [1, 1])
    # FPR 1% = exactly 1 real allowed -> threshold 0.9 catches 1 of 2 fakes
    assert tpr_at_fpr(p, y, fpr=0.01) == pytest.approx(0.5)
    assert tpr_at_fpr(p, y, fpr=0.009) == pytest.approx(0.0)


def test_degenerate_inputs_return_nan():
    one_class = (T([0.2, 0.7, 0.9]), T([1, 1, 1]))
    for fn in (auroc, average_precision, tpr_at_fpr):
        assert math.isnan(fn(*one_class))
        assert math.isnan(fn(T([0.2, 0.7]), T([0, 0])))
    empty = (torch.empty(0), torch.empty(0, dtype=torch.long))
    for fn in (
        accuracy,
        balanced_accuracy,
        auroc,
        average_precision,
        nll,
        brier,
        ece,
        adaptive_ece,
        tpr_at_fpr,
    ):
        assert math.isnan(fn(*empty)), fn.__name__


def test_mismatched_sizes_raise():
    with pytest.raises(ValueError):
        accuracy(T([0.1, 0.2]), T([0]))


def test_classification_report():
    p = T([0.1, 0.4, 0.35, 0.8])
    y = T([0, 0, 1, 1])
    r = classification_report(p, y)
    assert set(r) == {
        "accuracy",
        "balanced_accuracy",
        "auroc",
        "ap",
        "nll",
        "brier",
        "ece",
        "adaptive_ece",
        "tpr_at_fpr_0_1",
        "tpr_at_fpr_1",
        "tpr_at_fpr_5",
        "n",
        "real_accuracy",
        "fake_accuracy",
        "eer",
        "oracle_accuracy",
        "cllr",
    }
    assert r["n"] == 4
    # predictions [0, 0, 0, 1]: correct [1, 1, 0, 1]
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["auroc"] == pytest.approx(0.75)
    assert r["ap"] == pytest.approx(5 / 6)
    # 2 reals: 1% / 5% FPR allow no false positive -> only the fake at 0.8 is caught
    assert r["tpr_at_fpr_1"] == pytest.approx(0.5)
    assert r["tpr_at_fpr_5"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for k, v in r.items() if k != "n")
    # a single-class subset still reports, with nan where undefined
    r1 = classification_report(T([0.9, 0.6]), T([1, 1]))
    assert math.isnan(r1["auroc"]) and math.isnan(r1["tpr_at_fpr_1"])
    assert r1["accuracy"] == pytest.approx(1.0)


def test_random_cross_checks():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(200, generator=g)
    y = (torch.rand(200, generator=g) < p).long()
    # top-label ECE == torchmetrics' multiclass ECE on the 2-column probabilities
    from torchmetrics.functional.classification import multiclass_calibration_error

    two_col = torch.stack([1 - p, p], dim=1)
    ref = float(multiclass_calibration_error(two_col, y, num_classes=2, n_bins=15))
    assert ece(p, y) == pytest.approx(ref, abs=1e-6)
    # AUROC == pairwise definition P(fake > real) + P(tie) / 2
    pos, neg = p[y == 1][:, None], p[y == 0][None, :]
    pairwise = ((pos > neg).double() + 0.5 * (pos == neg).double()).mean().item()
    assert auroc(p, y) == pytest.approx(pairwise, abs=1e-6)


def test_package_exports_resolve():
    import bnnkit.metrics as metrics

    for name in metrics.__all__:
        assert callable(getattr(metrics, name)), name
    with pytest.raises(AttributeError):
        _ = metrics.no_such_metric
