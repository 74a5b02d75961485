"""The evaluation protocol: OOD scores, selective prediction, abstention, degradations, schema 3.

Hand-computed cases pin the protocol's own logic (which images count as OOD, how the threshold
is calibrated and what it catches); an end-to-end run pins the CLI and the files it writes.
"""

from __future__ import annotations

import csv
import json
import os

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import QUICKSTART, tiny_overrides  # noqa: E402
from PIL import Image  # noqa: E402

from bnnkit.cli import main  # noqa: E402
from bnnkit.engine.evaluate.run import SCHEMA_VERSION  # noqa: E402
from bnnkit.metrics.protocol import (  # noqa: E402
    abstention_metrics,
    calibrate_thresholds,
    condition_metrics,
    selective_report,
)
from bnnkit.metrics.records import Predictions  # noqa: E402
from bnnkit.report import PLOT_FILES  # noqa: E402

SEEN = ["adm", "biggan", "sdv4", "sdv5", "vqdm", "wukong"]
UNSEEN = ["midjourney", "glide"]


def _data(p, labels, gens, total=None, epistemic=None) -> Predictions:
    p = torch.tensor(p, dtype=torch.float64)
    n = p.numel()
    total = torch.tensor(total if total is not None else [0.5] * n, dtype=torch.float64)
    epi = torch.tensor(epistemic if epistemic is not None else [0.0] * n, dtype=torch.float64)
    return Predictions(
        p_fake=p,
        total=total,
        aleatoric=total - epi,
        epistemic=epi,
        labels=torch.tensor(labels),
        generators=torch.tensor(gens),
        indices=torch.arange(n),
    )


# -- hand-computed cases ---------------------------------------------------------------------


def test_selective_report_by_hand():
    u = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    correct = torch.tensor([True, False, True, True, False])
    rep = selective_report(u, correct)
    # risk at k = 1..5 kept: 0, 1/2, 1/3, 1/4, 2/5
    assert rep["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5)
    # a perfect ranking keeps both errors for last: 0, 0, 0, 1/4, 2/5
    assert rep["aurc_optimal"] == pytest.approx((1 / 4 + 2 / 5) / 5)
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["accuracy_at_90"] == pytest.approx(0.6)  # ceil(4.5) = 5 kept
    assert rep["accuracy_at_80"] == pytest.approx(0.75)  # 4 kept, one error


def test_threshold_calibration_and_crossfit_by_hand():
    # 10 seen images with total uncertainty 0.1 .. 1.0, two unseen images.
    total = [round(0.1 * i, 1) for i in range(1, 11)] + [0.05, 2.0]
    data = _data([0.9] * 12, [1] * 12, [0] * 10 + [1, 1], total=total)
    thresholds, crossfit = calibrate_thresholds(data, n_seen=1, coverage=0.8)
    # metrics.json v3 names: entropy = the total uncertainty, mutual_info = the epistemic one
    assert thresholds["entropy"] == pytest.approx(0.8)  # the 8th smallest of the seen ones
    # folds: even positions 0.1,0.3,0.5,0.7,0.9 -> t=0.7 keeps 0.2,0.4,0.6 of the odd fold (3);
    # odd positions 0.2,...,1.0 -> t=0.8 keeps 0.1,0.3,0.5,0.7 of the even fold (4).
    assert crossfit["entropy"] == pytest.approx(7 / 10)
    assert thresholds["mutual_info"] == 0.0  # all zero: nothing above it


def test_abstention_counts_errors_caught_on_unseen_generators():
    # seen: 4 images; unseen generator: 4 images, 3 wrong; the wrong ones are uncertain ones.
    p = [0.9, 0.1, 0.8, 0.3, 0.2, 0.3, 0.4, 0.9]
    labels = [1, 0, 1, 1, 1, 1, 1, 1]  # seen image 3 wrong; unseen images 0-2 wrong
    total = [0.1, 0.2, 0.3, 0.6, 0.7, 0.4, 0.25, 0.9]
    data = _data(p, labels, [0, 0, 0, 0, 1, 1, 1, 1], total=total)
    out = abstention_metrics(
        data, ["adm", "midjourney"], 1, {"total": 0.35}, "total", 0.75, crossfit={"total": 0.5}
    )
    entry = out["by_score"]["total"]
    assert out["score"] == "total" and out["coverage_target"] == 0.75
    assert entry["threshold"] == 0.35 and entry["coverage_crossfit"] == 0.5
    assert entry["seen"] == {
        "n": 4, "coverage": 0.75, "accuracy_kept": 1.0, "accuracy_all": 0.75, "errors": 1,
        "errors_caught": 1, "errors_caught_rate": 1.0, "correct_abstained": 0,
    }  # fmt: skip
    mj = entry["unseen"]["midjourney"]
    # kept: u <= 0.35 -> only the image with 0.25 (wrong); abstained: 0.7 (wrong), 0.4 (wrong),
    # 0.9 (right) -> 2 of 3 errors caught, one correct image abstained.
    assert (mj["errors"], mj["errors_caught"], mj["correct_abstained"]) == (3, 2, 1)
    assert mj["coverage"] == pytest.approx(0.25) and mj["accuracy_kept"] == 0.0
    assert entry["unseen_combined"]["errors"] == 3


def test_ood_uses_unseen_fakes_against_all_seen_images():
    # seen generator 0: 2 reals, 2 fakes; unseen generator 1: 1 real, 2 fakes.
    labels = [0, 0, 1, 1, 0, 1, 1]
    gens = [0, 0, 0, 0, 1, 1, 1]
    p = [0.2, 0.3, 0.8, 0.9, 0.1, 0.6, 0.45]
    # epistemic separates the unseen fakes perfectly; the unseen *real* is low (it is ID).
    epi = [0.01, 0.02, 0.01, 0.03, 0.0, 0.5, 0.4]
    m = condition_metrics(_data(p, labels, gens, epistemic=epi), ["adm", "glide"], 1)
    o = m["ood"]["glide"]
    assert (o["n_id"], o["n_ood"]) == (4, 2)
    assert o["scores"]["mutual_info"] == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    # max-prob score 1 - max(p, 1-p): seen .2 .3 .2 .1, unseen fakes .4 .45 -> also perfect
    assert o["scores"]["max_prob"]["auroc"] == 1.0
    assert o["fake_detection_rate"] == 0.5  # 0.6 detected, 0.45 missed
    assert o["mean_epistemic_unseen_fakes"] == pytest.approx(0.45)
    assert m["ood_combined"]["scores"]["mutual_info"]["auroc"] == 1.0
    assert m["per_generator"]["glide"]["seen"] is False
    assert m["average_accuracy"]["all"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["unseen"]["n"] == 3 and m["seen"]["n"] == 4


def test_max_prob_and_entropy_rank_alike_for_two_classes():
    from bnnkit.metrics.uncertainty import entropy

    g = torch.Generator().manual_seed(0)
    p = torch.rand(40, generator=g, dtype=torch.float64)
    total = entropy(torch.stack([1 - p, p], -1))
    labels = (torch.rand(40, generator=g) < 0.5).long()
    gens = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    data = _data(p.tolist(), labels.tolist(), gens.tolist(), total=total.tolist())
    o = condition_metrics(data, ["adm", "glide"], 1)["ood"]["glide"]
    assert o["scores"]["max_prob"] == pytest.approx(o["scores"]["entropy"])


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def holdout_run(tmp_path_factory, synth_root):
    """A tiny run trained on six generators, with midjourney and glide held out."""
    from click.testing import CliRunner

    runs = tmp_path_factory.mktemp("holdout_runs")
    sets = tiny_overrides(
        synth_root,
        **{
            "data.train_generators": json.dumps(SEEN),
            "data.holdout": json.dumps(UNSEEN),
        },
    )
    result = CliRunner().invoke(
        main, ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q", *sets]
    )
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def test_evaluate_acceptance_command(runner, holdout_run):
    args = ["evaluate", str(holdout_run), "--ood", "midjourney", "--ood", "glide",
            "--degrade", "jpeg:65,blur:3", "--samples", "32"]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output  # no truncated cell in an 80-column console
    for text in ("unseen generator: midjourney", "epistemic AUROC", "abstention", "jpeg:65"):
        assert text in result.output

    metrics = json.loads((holdout_run / "metrics.json").read_text())
    assert metrics["schema_version"] == SCHEMA_VERSION == 3
    assert metrics["samples"] == 32 and metrics["ood_generators"] == UNSEEN
    assert list(metrics["per_generator"]) == SEEN + UNSEEN
    for name in UNSEEN:
        for score in ("max_prob", "entropy", "mutual_info"):
            assert set(metrics["ood"][name]["scores"][score]) == {"auroc", "aupr", "fpr95"}
    assert {"entropy", "mutual_info"} <= set(metrics["selective"]) == set(metrics["scores"])
    assert list(metrics["degradations"]) == ["jpeg:65", "blur:3"]
    jpeg = metrics["degradations"]["jpeg:65"]
    assert jpeg["kind"] == "jpeg" and jpeg["value"] == 65
    assert set(jpeg["per_generator"]) == set(SEEN + UNSEEN)
    a = metrics["abstention"]
    # the pre-registered default abstention score (benchmarks/unseen.py)
    assert a["score"] == "rel_mahalanobis" and a["coverage_target"] == 0.95
    # fitted on the calibration split carved from the training folders, not on what is reported
    assert a["calibration"] == {"split": "calibration", "generators": SEEN, "n": 12,
                                "fraction": 0.1, "file": "threshold.json",
                                # fused: fitted on one half, thresholded on the other
                                "seen_fitted_scores": {"fit_n": 6, "threshold_n": 6}}  # fmt: skip
    chosen = a["by_score"]["rel_mahalanobis"]
    # measured on the seen val images, which the threshold was not set on: near the target
    assert 0.5 <= chosen["seen"]["coverage"] <= 1.0
    for name in UNSEEN:
        v = chosen["unseen"][name]
        assert 0 <= v["errors_caught"] <= v["errors"] <= v["n"] == 8
    # degraded conditions reuse the clean threshold
    assert jpeg["abstention"]["by_score"]["rel_mahalanobis"]["threshold"] == chosen["threshold"]

    threshold = json.loads((holdout_run / "threshold.json").read_text())
    assert threshold["score"] == "rel_mahalanobis" and threshold["samples"] == 32
    assert threshold["threshold"] == chosen["threshold"]
    assert threshold["coverage_target"] == 0.95 and len(threshold["model_sha256"]) == 64

    plots = holdout_run / "plots"
    for kind in ("reliability", "epistemic_histogram", "risk_coverage", "roc", "training_curves",
                 "degradations"):  # fmt: skip
        with Image.open(plots / PLOT_FILES[kind]) as im:
            assert im.format == "PNG" and im.width >= 500 and im.height >= 300
    report = (holdout_run / "report.md").read_text()
    assert "](plots/reliability.png)" in report and "## Abstention" in report
    assert "| jpeg:65 |" in report and "midjourney\\*" in report

    with open(holdout_run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * 64  # clean + 2 degradations, 8 images x 8 generators
    assert {r["condition"] for r in rows} == {"clean", "jpeg:65", "blur:3"}
    assert not any(os.path.isabs(r["path"]) for r in rows)

    # Same options again: identical numbers; --coverage/--abstain-on only move the threshold,
    # and --no-plots removes the stale plots and their links.
    result = runner.invoke(main, [*args, "--coverage", "0.5", "--abstain-on", "epistemic",
                                  "--no-plots", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    assert again == json.loads((holdout_run / "metrics.json").read_text())

    def strip(m):
        m = {k: v for k, v in m.items() if k not in ("abstention", "coverage_target")}
        m["degradations"] = {
            k: {kk: vv for kk, vv in d.items() if kk != "abstention"}
            for k, d in m["degradations"].items()
        }
        return m

    assert strip(again) == strip(metrics)
    assert again["abstention"]["score"] == "mutual_info"  # --abstain-on epistemic: its alias
    assert again["abstention"]["by_score"]["entropy"]["seen"]["coverage"] >= 0.5
    assert json.loads((holdout_run / "threshold.json").read_text())["score"] == "mutual_info"
    assert not any(plots.glob("*.png"))
    assert "![" not in (holdout_run / "report.md").read_text()


def test_evaluate_rejects_bad_degradation_and_coverage(runner, holdout_run):
    result = runner.invoke(main, ["evaluate", str(holdout_run), "--degrade", "jpg:65"])
    assert result.exit_code == 2 and "did you mean 'jpeg'" in result.output
    result = runner.invoke(main, ["evaluate", str(holdout_run), "--coverage", "0"])
    assert result.exit_code == 2 and "--coverage" in result.output
    result = runner.invoke(main, ["evaluate", str(holdout_run), "--ood", "adm"])
    assert result.exit_code == 2 and "trained on adm" in result.output
