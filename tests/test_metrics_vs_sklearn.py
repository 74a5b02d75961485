"""metrics.json against scikit-learn and a textbook ECE, recomputed from predictions.csv.

Independent of bnnkit's metric code: accuracy, balanced accuracy, AUROC, AP, NLL, the 2-class
Brier score, TPR@FPR, R.Acc / F.Acc, EER and the oracle accuracy come from scikit-learn, the
Cllr from its likelihood-ratio form, the ECE from a plain numpy loop over Guo et
al.'s bins (i/15, (i+1)/15]. Checked per generator, on the seen aggregate, and for the OOD
AUROC, AUPR and FPR@95%TPR of every score (per unseen generator and pooled): once on synthetic
per-image results with ties and saturated probabilities, and end to end on tiny CLI runs (BBB,
and MAP, whose epistemic uncertainty is 0 everywhere: all ties).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import QUICKSTART, tiny_overrides  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from bnnkit.cli import main  # noqa: E402
from bnnkit.metrics.protocol import clean_json, condition_metrics  # noqa: E402
from bnnkit.metrics.records import Predictions  # noqa: E402

TOL = 1e-6
NLL_FLOOR = 1e-12  # bnnkit clamps p(true label) at 1e-12; sklearn would clip at float eps


def textbook_ece(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE of Guo et al. 2017: bins (lo, hi] with edges i / n_bins."""
    pred = (p >= 0.5).astype(int)  # bnnkit's rule: p(fake) >= 0.5 -> fake
    conf = np.where(pred == 1, p, 1.0 - p)
    acc = (pred == y).astype(float)
    edges = np.arange(n_bins + 1) / n_bins
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(acc[in_bin].mean() - conf[in_bin].mean())
    return total


def _tpr_at_fpr(y: np.ndarray, p: np.ndarray, fpr: float) -> float:
    fprs, tprs, _ = roc_curve(y, p, drop_intermediate=False)
    return float(tprs[fprs <= fpr + 1e-12].max())


def _eer(y: np.ndarray, p: np.ndarray) -> float:
    """Where the ROC polyline meets FPR = 1 - TPR: interpolate the FPR at FPR + TPR = 1."""
    fprs, tprs, _ = roc_curve(y, p)
    return float(np.interp(1.0, fprs + tprs, fprs))


def _cllr(y: np.ndarray, p: np.ndarray) -> float:
    """Balanced Cllr in its likelihood-ratio form, p clipped at float64 epsilon."""
    q = np.clip(p, np.finfo(np.float64).eps, 1 - np.finfo(np.float64).eps)
    lr = q / (1 - q)
    return 0.5 * (np.mean(np.log2(1 + 1 / lr[y == 1])) + np.mean(np.log2(1 + lr[y == 0])))


def group_reference(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = (p >= 0.5).astype(int)
    both = 0 < y.sum() < len(y)
    clipped = np.clip(p, NLL_FLOOR, 1 - NLL_FLOOR)
    ref = {
        "n": len(y),
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred) if both else None,
        "nll": log_loss(y, np.stack([1 - clipped, clipped], 1), labels=[0, 1]),
        # one-column Brier (sklearn) x 2 = sum over both classes (what metrics.json reports)
        "brier": 2.0 * brier_score_loss(y, p, pos_label=1),
        "ece": textbook_ece(p, y),
    }
    if both:
        ref["auroc"] = roc_auc_score(y, p)
        ref["ap"] = average_precision_score(y, p)
        ref["tpr_at_fpr_1"] = _tpr_at_fpr(y, p, 0.01)
        ref["tpr_at_fpr_5"] = _tpr_at_fpr(y, p, 0.05)
        ref["tpr_at_fpr_0_1"] = _tpr_at_fpr(y, p, 0.001)
        ref["eer"] = _eer(y, p)
        ref["cllr"] = _cllr(y, p)
        cuts = np.append(np.unique(p), np.inf)  # every threshold: the oracle's best accuracy
        ref["oracle_accuracy"] = max(accuracy_score(y, (p >= t).astype(int)) for t in cuts)
        ref["real_accuracy"] = accuracy_score(y[y == 0], pred[y == 0])
        ref["fake_accuracy"] = accuracy_score(y[y == 1], pred[y == 1])
    return ref


def ood_scores(p: np.ndarray, total: np.ndarray, epistemic: np.ndarray) -> dict[str, np.ndarray]:
    # metrics.json v3 names: entropy = the total uncertainty, mutual_info = the epistemic one
    return {"max_prob": 1.0 - np.maximum(p, 1.0 - p), "entropy": total, "mutual_info": epistemic}


def check_against_sklearn(metrics: dict[str, Any], cols: dict[str, np.ndarray]) -> int:
    """Compare metrics.json-style ``metrics`` with the references; return the checks made."""
    p, y, gen, seen = cols["p_fake"], cols["label"], cols["generator"], cols["seen"]
    groups = {name: gen == name for name in metrics["per_generator"]}
    groups["<seen>"] = seen
    checked = 0
    for name, mask in groups.items():
        got = metrics["seen"] if name == "<seen>" else metrics["per_generator"][name]
        ref = group_reference(p[mask], y[mask])
        assert got["n"] == ref.pop("n"), name
        if ref["balanced_accuracy"] is None:  # one class: sklearn warns, bnnkit uses the present
            ref.pop("balanced_accuracy")
        for key, want in ref.items():
            assert got[key] == pytest.approx(want, abs=TOL), (name, key, got[key], want)
            checked += 1
    scores = ood_scores(p, cols["total"], cols["epistemic"])
    unseen_fakes = ~seen & (y == 1)
    blocks = [(metrics["ood"][g], unseen_fakes & (gen == g)) for g in metrics["ood"]]
    if metrics["ood_combined"] is not None:
        blocks.append((metrics["ood_combined"], unseen_fakes))
    for entry, ood in blocks:
        pool = seen | ood
        for score, values in scores.items():
            is_ood, s = ood[pool], values[pool]
            fprs, tprs, _ = roc_curve(is_ood, s, drop_intermediate=False)
            want = {
                "auroc": roc_auc_score(is_ood, s),
                "aupr": average_precision_score(is_ood, s),
                "fpr95": float(fprs[tprs >= 0.95 - 1e-12].min()),
            }
            for key, value in want.items():
                got = entry["scores"][score][key]
                assert got == pytest.approx(value, abs=TOL), (score, key)
                checked += 1
    return checked


# -- synthetic per-image results: ties and saturated probabilities -------------------------


def test_condition_metrics_match_sklearn_with_ties_and_saturation():
    g = torch.Generator().manual_seed(3)
    n_gen, per = 3, 24
    gens = torch.arange(n_gen).repeat_interleave(per)
    labels = torch.arange(per).remainder(2).repeat(n_gen)
    p = (0.3 + 0.4 * labels + 0.5 * (torch.rand(gens.numel(), generator=g) - 0.5)).double()
    p = (p * 8).round() / 8  # only 9 distinct values: many ties, p = 0.5 exactly included
    p[:4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)  # saturated: right, right,
    p[24:26] = torch.tensor([1.0, 0.0], dtype=torch.float64)  # ... and confidently wrong
    p[30:34] = 14 / 15  # an exact ECE bin edge
    epi = (torch.rand(gens.numel(), generator=g) * 4).floor().double() / 100 + 0.05 * (gens == 2)
    total = torch.rand(gens.numel(), generator=g, dtype=torch.float64).round(decimals=1) + epi
    data = Predictions(p, total, total - epi, epi, labels, gens, torch.arange(gens.numel()))
    names = ["adm", "biggan", "midjourney"]
    metrics = clean_json(condition_metrics(data, names, n_seen=2))
    cols = {
        "p_fake": p.numpy(),
        "label": labels.numpy(),
        "generator": np.array([names[i] for i in gens.tolist()]),
        "seen": (gens < 2).numpy(),
        "total": total.numpy(),
        "epistemic": epi.numpy(),
    }
    assert check_against_sklearn(metrics, cols) == 4 * 15 + 2 * 9
    # the confidently wrong saturated items make the NLL large and finite (clamped)
    assert 0 < metrics["per_generator"]["biggan"]["nll"] < 30


# -- end to end: train, evaluate, recompute from predictions.csv ----------------------------


def _read_predictions(run: Path) -> dict[str, np.ndarray]:
    with open(run / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["condition"] == "clean"]
    # the columns are float32 values written with 9 significant digits: exact after float32
    floats = {
        k: np.array([r[k] for r in rows], dtype=np.float64).astype(np.float32).astype(np.float64)
        for k in ("p_fake", "total", "epistemic")
    }
    return {
        **floats,
        "label": np.array([int(r["label"]) for r in rows]),
        "generator": np.array([r["generator"] for r in rows]),
        "seen": np.array([r["seen"] == "1" for r in rows]),
    }


@pytest.fixture(scope="module")
def map_run(tmp_path_factory, synth_root) -> Path:
    """A tiny deterministic (MAP) run: epistemic uncertainty is exactly 0 for every image."""
    from click.testing import CliRunner

    runs = tmp_path_factory.mktemp("map_runs")
    sets = tiny_overrides(synth_root, inference='{name="map"}', **{"model.head": '{name="linear"}'})
    result = CliRunner().invoke(main, ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q",
                                       *sets])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


@pytest.mark.parametrize("which", ["bbb", "map"])
def test_metrics_json_matches_sklearn_from_predictions_csv(runner, request, which):
    run = request.getfixturevalue("trained_run" if which == "bbb" else "map_run")
    result = runner.invoke(main, ["evaluate", str(run), "--no-plots"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["schema_version"] == 3
    cols = _read_predictions(run)
    n_gen = len(metrics["per_generator"])
    n_ood = len(metrics["ood"]) + (metrics["ood_combined"] is not None)
    assert check_against_sklearn(metrics, cols) == (n_gen + 1) * 15 + n_ood * 9
    sel = metrics["selective"]
    if which == "map":
        # constant epistemic score: AURC and accuracy-at-coverage are undefined, not file order
        assert (cols["epistemic"] == 0).all()
        assert sel["mutual_info"]["aurc"] is None and sel["mutual_info"]["accuracy_at_90"] is None
        assert sel["mutual_info"]["aurc_optimal"] == sel["entropy"]["aurc_optimal"]
        assert "n/a" in result.output
        report = (run / "report.md").read_text()
        # the selective-prediction table's row (the per-score summary table has one too)
        rows = [ln for ln in report.splitlines() if ln.startswith("| mutual information")]
        assert [row.count("n/a") for row in rows if "n/a" in row] == [3]
    else:
        assert all(math.isfinite(v) for v in (sel["mutual_info"]["aurc"], sel["entropy"]["aurc"]))
