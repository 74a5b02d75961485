"""Score plugins in ``bnnkit evaluate`` / ``predict`` / ``compare``: metrics.json schema 3 (an OOD
block per score, abstention on any score), fits saved in the run and loaded by a fresh predict
process, a third-party score in evaluate, and old (schema 2) runs in compare."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import QUICKSTART, REPO, train_and_evaluate
from sklearn.metrics import roc_auc_score

from bnnkit import hookimpl
from bnnkit.cli import main
from bnnkit.engine.features.loop import head_outputs, set_temperature
from bnnkit.metrics.records import Predictions
from bnnkit.metrics.schema import abstention_score, ood_score
from bnnkit.scores.base import Score, ScoreInputs
from bnnkit.testing import registered

ACCEPTANCE = ["--ood", "midjourney", "--score", "mahalanobis", "--score", "knn",
              "--score", "mutual_info", "--abstain-on", "knn"]  # fmt: skip
SCORES = ["mahalanobis", "knn", "mutual_info"]


def _cli(args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _csv(run: Path) -> list[dict[str, str]]:
    with open(run / "predictions.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["condition"] == "clean"]


@pytest.fixture(scope="module")
def knn_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the shared run, evaluated by the acceptance command (50% coverage, so that
    about half of the seen images lie above the kNN threshold)."""
    run = tmp_path_factory.mktemp("scores") / trained_run.name
    # without the fits an earlier test's evaluation of the shared run may have saved: this
    # evaluation must fit them itself (the timing assertions below check it did)
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("scores"))
    code, out = _cli(["evaluate", run, *ACCEPTANCE, "--coverage", "0.5"])
    assert code == 0, out
    return run


def test_acceptance_command_writes_schema_3_with_a_block_per_score(knn_run):
    m = json.loads((knn_run / "metrics.json").read_text())
    assert m["schema_version"] == 3
    assert list(m["scores"]) == SCORES
    assert m["scores"]["knn"]["fit_on"] == "train" and m["scores"]["knn"]["fit_n"] > 0
    assert m["scores"]["mutual_info"]["fit_on"] is None
    for entry in (m["ood"]["midjourney"], m["ood_combined"]):
        assert list(entry["scores"]) == SCORES
        for block in entry["scores"].values():
            assert set(block) == {"auroc", "aupr", "fpr95"} and 0 <= block["auroc"] <= 1
    assert list(m["selective"]) == SCORES
    a = m["abstention"]
    assert a["score"] == "knn" and a["options"] == m["scores"]["knn"]["options"]
    assert list(a["by_score"]) == SCORES
    for entry in a["by_score"].values():
        assert "errors_caught_rate" in entry["unseen_combined"]
    # the decomposition's means are kept
    assert {"total_uncertainty", "epistemic_uncertainty"} <= set(m["seen"])

    threshold = json.loads((knn_run / "threshold.json").read_text())
    assert threshold["schema_version"] == 2 and threshold["score"] == "knn"
    assert threshold["threshold"] == a["by_score"]["knn"]["threshold"]
    assert threshold["options"] == a["options"] and threshold["score_fit"]["fit_on"] == "train"
    assert (knn_run / "scores" / "knn.safetensors").is_file()

    # the OOD AUROC of every score is the one scikit-learn gives on predictions.csv's column
    rows = _csv(knn_run)
    seen = np.array([r["seen"] == "1" for r in rows])
    fakes = np.array([r["generator"] == "midjourney" and r["label"] == "1" for r in rows])
    pool = seen | fakes
    for name in SCORES:
        values = np.array([float(r[name]) for r in rows])
        want = roc_auc_score(fakes[pool], values[pool])
        assert m["ood"]["midjourney"]["scores"][name]["auroc"] == pytest.approx(want, abs=1e-6)

    report = (knn_run / "report.md").read_text()
    assert "OOD AUROC" in report and "unseen errors caught" in report
    rows = [ln for ln in report.splitlines() if ln.startswith("| **knn**")]  # bold: abstains
    (row,) = [ln for ln in rows if ln.count("|") == 4]  # score | midjourney AUROC | caught
    auroc = m["ood"]["midjourney"]["scores"]["knn"]["auroc"]
    assert f"| {auroc:.3f} |" in row
    timing = json.loads((knn_run / "timing.json").read_text())
    assert timing["scores"]["fitted"] == ["mahalanobis", "knn"]
    assert timing["scores"]["fit_source"] == "images" and timing["scores"]["fit_images"] > 0


def test_a_second_evaluation_loads_the_fit_and_gives_the_same_file(knn_run, tmp_path):
    run = tmp_path / "again"
    shutil.copytree(knn_run, run)
    before = (run / "metrics.json").read_text()
    code, out = _cli(["evaluate", run, *ACCEPTANCE, "--coverage", "0.5", "--no-plots"])
    assert code == 0, out
    assert json.loads((run / "timing.json").read_text())["scores"]["loaded"] == ["mahalanobis",
                                                                                 "knn"]  # fmt: skip
    again = json.loads((run / "metrics.json").read_text())
    assert again.pop("run") == "again"
    assert again == {k: v for k, v in json.loads(before).items() if k != "run"}


def test_predict_in_a_new_process_abstains_by_the_stored_score(knn_run, synth_root):
    images = sorted((synth_root / "imagenet_midjourney" / "val").rglob("*.png"))
    images += sorted((synth_root / "imagenet_ai_0508_adm" / "val" / "ai").iterdir())
    # the threshold is set on the calibration images, not on these: add a seen image it keeps
    t = json.loads((knn_run / "threshold.json").read_text())["threshold"]
    kept = [r["path"] for r in _csv(knn_run) if r["seen"] == "1" and float(r["knn"]) <= t]
    images += [synth_root / kept[0]]
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "predict", str(knn_run), *map(str, images),
         "--format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    threshold = json.loads((knn_run / "threshold.json").read_text())
    assert out["abstention"]["score"] == "knn"
    assert out["abstention"]["threshold"] == threshold["threshold"]
    by_path = {r["path"]: r for r in _csv(knn_run)}
    verdicts = []
    for p in out["predictions"]:
        assert p["score"] == "knn"
        rel = Path(p["path"]).relative_to(synth_root).as_posix()
        # the fit loaded from the run gives the value evaluate computed
        assert p["score_value"] == pytest.approx(float(by_path[rel]["knn"]), rel=1e-6, abs=1e-9)
        above = p["score_value"] > threshold["threshold"]
        assert (p["verdict"] == "uncertain") == above
        verdicts.append(p["verdict"])
    assert "uncertain" in verdicts and set(verdicts) - {"uncertain"}


def test_predict_refuses_a_run_without_the_fit(knn_run, tmp_path, synth_root):
    run = tmp_path / "nofit"
    shutil.copytree(knn_run, run)
    shutil.rmtree(run / "scores")
    image = next((synth_root / "imagenet_midjourney" / "val" / "ai").iterdir())
    code, out = _cli(["predict", run, image])
    assert code == 2 and "knn" in out and "bnnkit evaluate" in out
    code, out = _cli(["predict", run, image, "--no-abstain", "--format", "json"])
    assert code == 0, out


def test_tiles_refuse_feature_scores(knn_run, synth_root):
    code, out = _cli(["evaluate", knn_run, "--tiles", "--score", "knn", "--no-plots"])
    assert code == 2 and "--tiles" in out and "knn" in out
    image = next((synth_root / "imagenet_midjourney" / "val" / "ai").iterdir())
    code, out = _cli(["predict", knn_run, image, "--tiles"])
    assert code == 2 and "knn" in out


# -- a third-party score ------------------------------------------------------------------------
class FeatureNorm(Score):
    """|‖x‖ - mean training ‖x‖|: a fitted score with one tensor of state."""

    summary = "distance of the feature norm from the training mean"
    fit_on = "train"

    def fit(self, inputs: ScoreInputs, labels: torch.Tensor) -> None:
        self.mean = inputs.features.double().norm(dim=1).mean()
        self.fitted = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean.reshape(1)}

    def load_state_dict(self, state, meta) -> None:
        self.mean = state["mean"][0]
        self.fitted = True

    def __call__(self, inputs: ScoreInputs) -> torch.Tensor:
        self.check_fitted()
        return self.as_output((inputs.features.double().norm(dim=1) - self.mean).abs())


def _fake_score_plugin() -> types.ModuleType:
    module = types.ModuleType("fake_score_plugin")

    @hookimpl
    def register_scores(register):
        register("feature_norm", FeatureNorm)

    module.register_scores = register_scores
    return module


def test_a_registered_score_plugin_is_evaluated_and_abstained_on(knn_run, tmp_path, synth_root):
    run = tmp_path / "fake"
    shutil.copytree(knn_run, run)
    with registered(_fake_score_plugin()):
        code, out = _cli(["evaluate", run, "--ood", "midjourney", "--score", "feature_norm",
                          "--abstain-on", "feature_norm", "--no-plots"])  # fmt: skip
        assert code == 0, out
        m = json.loads((run / "metrics.json").read_text())
        assert list(m["scores"]) == ["feature_norm"] and m["abstention"]["score"] == "feature_norm"
        rows = _csv(run)
        values = np.array([float(r["feature_norm"]) for r in rows])
        assert (values >= 0).all() and values.std() > 0
        seen = np.array([r["seen"] == "1" for r in rows])
        t = m["abstention"]["by_score"]["feature_norm"]["threshold"]
        assert m["abstention"]["by_score"]["feature_norm"]["seen"]["coverage"] == pytest.approx(
            float((values[seen] <= t).mean())
        )
        assert (run / "scores" / "feature_norm.safetensors").is_file()
        code, out = _cli(["predict", run, synth_root / rows[0]["path"], "--format", "json"])
        assert code == 0, out
        (row,) = json.loads(out)["predictions"]
        assert row["score"] == "feature_norm"
        assert row["score_value"] == pytest.approx(values[0], abs=1e-5)  # batch of one
    # the plugin is gone (uninstalled): say which score the run needs, not "did you mean"
    code, out = _cli(["predict", run, synth_root / rows[0]["path"]])
    assert code == 2 and "abstains on score 'feature_norm'" in out, out
    assert "did you mean" not in out and "--no-abstain" in out


# -- compare: v3 and old v2 runs ----------------------------------------------------------------
def _v2_run(root: Path) -> Path:
    run = root / "old-v2"
    run.mkdir()
    (run / "recipe.toml").write_text('name = "old"\n[model.backbone]\nname = "test_resnet"\n')
    (run / "checkpoint.json").write_text(json.dumps({"method": "map", "train_seconds": 1.0}))
    caught = {"n": 8, "errors": 4, "errors_caught": 1, "errors_caught_rate": 0.25}
    metrics = {
        "schema_version": 2, "method": "map", "samples": 1, "seen_generators": ["adm"],
        "seen": {"accuracy": 0.9, "nll": 0.3, "ece": 0.05},
        "ood": {"midjourney": {"accuracy": 0.5, "total": {"auroc": 0.6},
                               "epistemic": {"auroc": 0.7}}},
        "abstention": {"score": "total", "by_score": {"total": {"unseen_combined": caught},
                                                      "epistemic": {"unseen_combined": None}}},
    }  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "timing.json").write_text(json.dumps({"predict_seconds_per_image": 0.01}))
    return run


def test_compare_shows_the_catch_rate_of_each_runs_abstention_score(knn_run, tmp_path):
    old = _v2_run(tmp_path)
    code, out = _cli(["compare", knn_run, old, "--format", "json"])
    assert code == 0, out
    new_row, old_row = json.loads(out)
    m = json.loads((knn_run / "metrics.json").read_text())
    assert new_row["abstain_score"] == "knn"
    want = m["abstention"]["by_score"]["knn"]["unseen_combined"]["errors_caught_rate"]
    assert new_row["caught_rate"] == want
    mi = m["ood"]["midjourney"]["scores"]["mutual_info"]["auroc"]
    assert new_row["epistemic_auroc"] == mi
    assert new_row["abstain_auroc"] == m["ood"]["midjourney"]["scores"]["knn"]["auroc"]
    assert (old_row["abstain_score"], old_row["caught_rate"]) == ("entropy", 0.25)
    assert old_row["epistemic_auroc"] == 0.7
    code, out = _cli(["compare", knn_run, old])
    assert code == 0 and "knn" in out and "25.0%" in out and "caught" in out


# -- units ----------------------------------------------------------------------------------------
def test_schema_readers_take_v2_and_v3_entries():
    v2 = {"total": {"auroc": 0.6}, "epistemic": {"auroc": 0.7}, "max_prob": {"auroc": 0.5}}
    v3 = {"scores": {"entropy": {"auroc": 0.6}, "mutual_info": {"auroc": 0.7}}}
    for entry in (v2, v3):
        assert ood_score(entry, "epistemic") == ood_score(entry, "mutual_info") == {"auroc": 0.7}
        assert ood_score(entry, "total")["auroc"] == 0.6
    assert ood_score(v3, "knn") == {} and ood_score(None, "knn") == {}
    a2 = {"score": "total", "by_score": {"total": {"threshold": 1.0}}}
    a3 = {"score": "entropy", "by_score": {"entropy": {"threshold": 1.0}}}
    for a in (a2, a3):
        assert abstention_score(a) == abstention_score(a, "entropy") == {"threshold": 1.0}
    assert abstention_score({}) == {}


def test_records_carry_scores_through_concat_select_and_aliases():
    probs = torch.softmax(torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(0)), -1)
    parts = [Predictions.from_probs(probs[:, s], scores={"knn": torch.arange(3.0) + i})
             for i, s in enumerate((slice(0, 3), slice(3, 6)))]  # fmt: skip
    record = Predictions.concat(parts)
    assert record.score("knn").tolist() == [0, 1, 2, 1, 2, 3]
    assert record.select(torch.tensor([1, 4])).score("knn").tolist() == [1, 2]
    assert torch.equal(record.score("entropy"), record.total.double())
    assert torch.equal(record.score("mutual_info"), record.score("epistemic"))
    with pytest.raises(ValueError, match="different scores"):
        Predictions.concat([parts[0], Predictions.from_probs(probs[:, :3])])


def test_head_outputs_of_a_method_that_only_overrides_sample():
    from bnnkit.methods.base import InferenceMethod

    class OnlySample(InferenceMethod):
        def __init__(self) -> None:  # no head needed for this
            pass

        def sample(self, features, k):
            p = torch.sigmoid(features[:, :1]).expand(-1, 1)
            return torch.cat([1 - p, p], -1).unsqueeze(0).expand(k, -1, -1)

    method = OnlySample()
    x = torch.tensor([[0.0], [2.0], [-1.0]])
    logits, probs = head_outputs(method, x, 3)
    assert torch.equal(probs, method.sample(x, 3))
    assert torch.allclose(logits, probs.log())
    set_temperature(method, 2.0)
    logits_t, probs_t = head_outputs(method, x, 3)
    assert torch.allclose(logits_t, probs.log() / 2)
    assert torch.allclose(probs_t, torch.softmax(probs.log() / 2, -1))
    want = float(torch.sigmoid(torch.tensor(1.0)))  # sigmoid(2) tempered by T = 2
    assert math.isclose(float(probs_t[0, 1, 1]), want, rel_tol=1e-5)


def test_a_frozen_run_fits_on_its_feature_cache(tmp_path, synth_root):
    trained = train_and_evaluate(QUICKSTART, tmp_path, data=synth_root, evaluate=False,
                                 sets={"train.backbone": '"frozen"'})  # fmt: skip
    code, out = _cli(
        ["evaluate", trained.run, "--score", "knn", "--abstain-on", "knn", "--no-plots"]
    )
    assert code == 0, out
    scores = json.loads((trained.run / "timing.json").read_text())["scores"]
    assert scores["fit_source"] == "feature cache" and scores["fitted"] == ["knn"]


def test_the_fit_subset_is_balanced_over_generator_and_class():
    from bnnkit.engine.posthoc.score_fit import balanced_rows

    labels = torch.tensor([0] * 10 + [1] * 30 + [0] * 4 + [1] * 6)
    groups = torch.tensor([0] * 40 + [1] * 10)
    rows = balanced_rows(labels, groups, 16, seed=0)
    assert rows.tolist() == sorted(set(rows.tolist())) and rows.numel() == 16
    cells = groups[rows] * 2 + labels[rows]
    assert torch.bincount(cells, minlength=4).tolist() == [4, 4, 4, 4]
    assert torch.equal(rows, balanced_rows(labels, groups, 16, seed=0))  # seeded
    assert balanced_rows(labels, groups, 0, seed=0).numel() == 50  # 0 = every row


def test_score_options_from_the_command_line(knn_run, tmp_path, synth_root):
    """``--set score.NAME.KEY=VALUE``: the score is built (and fitted) with the option, which
    metrics.json and threshold.json record and predict uses; malformed items are refused."""
    from bnnkit.engine.evaluate.options import score_overrides
    from bnnkit.errors import UsageError

    opts, rest = score_overrides(["score.knn.k=3", "inference.x=1", "score.fused.scores=['knn']"])
    assert opts == {"knn": {"k": 3}, "fused": {"scores": ["knn"]}} and rest == ["inference.x=1"]
    for bad in ("score.knn=3", "score.knn.k", "score..k=1"):
        with pytest.raises(UsageError, match="score.NAME.KEY=VALUE"):
            score_overrides([bad])
    run = tmp_path / "k3"
    shutil.copytree(knn_run, run)
    args = ["--ood", "midjourney", "--score", "knn", "--abstain-on", "knn", "--no-plots"]
    code, out = _cli(["evaluate", run, *args, "--set", "score.knn.k=3"])
    assert code == 0, out
    m = json.loads((run / "metrics.json").read_text())
    assert m["scores"]["knn"]["options"]["k"] == 3
    assert json.loads((run / "threshold.json").read_text())["options"]["k"] == 3
    assert json.loads((run / "scores" / "knn.json").read_text())["options"]["k"] == 3
    image = sorted((synth_root / "imagenet_midjourney" / "val").rglob("*.png"))[0]
    code, out = _cli(["predict", run, image, "--format", "json"])
    assert code == 0, out
    code, out = _cli(["evaluate", run, *args, "--set", "score.knn.kk=3"])
    assert code == 2 and "did you mean" in out
