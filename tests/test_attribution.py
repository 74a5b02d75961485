"""Open-set generator attribution (``data.labels = "generator"``): a (1 + G)-class head, the
attribution block of evaluate and the generator / known columns of predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, invoke, recipe, train_and_evaluate

from bnnkit.metrics.attribution import attribution_block, class_targets
from bnnkit.metrics.records import Predictions
from bnnkit.run import RunLayout

pytestmark = pytest.mark.usefixtures("one_thread")

SEEN = ["adm", "biggan", "glide", "sdv4", "sdv5", "vqdm", "wukong"]


SETS = {"data.labels": '"generator"', "train.backbone": '"frozen"'}


def _recipe(method: str, folder: Path) -> Path:
    """The quickstart recipe (bbb), or it with a MAP linear head instead."""
    if method == "bbb":
        return QUICKSTART
    lines = QUICKSTART.read_text(encoding="utf-8").splitlines()
    lines = [ln for ln in lines if not ln.startswith(("posterior_rho_init", "kl_weight"))]
    text = "\n".join(lines).replace('[model.head]\nname = "bbb"', '[model.head]\nname = "linear"')
    path = folder / "quickstart_map.toml"
    path.write_text(text.replace('[inference]\nname = "bbb"', '[inference]\nname = "map"'))
    return path


def test_class_targets_and_binary_p_fake_of_a_multiclass_record():
    labels, gens = torch.tensor([0, 1, 1, 0]), torch.tensor([2, 0, 3, 1])
    assert class_targets(labels, gens).tolist() == [0, 1, 4, 0]
    logits = torch.randn(5, 4, 1 + len(SEEN), dtype=torch.float64).float()
    probs = logits.softmax(-1)
    record = Predictions.from_probs(probs, logits=logits)
    assert torch.equal(record.p_fake, 1.0 - probs.mean(0)[:, 0])  # exactly 1 - p(real)
    assert record.attributed and record.class_probs.shape == (4, 1 + len(SEEN))
    # the decomposition is the collapsed real-vs-fake one: identical to a two-class record's
    binary = torch.stack([logits[..., 0], logits[..., 1:].logsumexp(-1)], dim=-1)
    two = Predictions.from_probs(binary.softmax(-1), logits=binary)
    assert torch.allclose(record.epistemic, two.epistemic)
    assert torch.allclose(record.total, two.total)
    assert not two.attributed


def test_attribution_block_counts():
    probs = torch.tensor([[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    record = Predictions.from_probs(probs[None])
    record.labels = torch.tensor([1, 1, 1, 1])
    record.generators = torch.tensor([0, 0, 1, 2])  # the last one unseen
    block = attribution_block(record, ["a", "b", "c"], n_seen=2)
    assert block["confusion"]["counts"] == [[0, 1, 1], [1, 0, 0]]
    assert block["accuracy"] == pytest.approx(1 / 3)  # fake-class argmax: a, b, a vs a, a, b
    assert block["unseen"]["c"]["most_often"] == "b"


@pytest.mark.parametrize("method", ["map", "bbb"])
def test_generator_labels_train_evaluate_predict(tmp_path, synth_root, method):
    done = train_and_evaluate(
        _recipe(method, tmp_path), tmp_path, data=synth_root, backbone=None, sets=SETS,
        evaluate_args=("--no-plots", "--ood", "midjourney"),
    )  # fmt: skip
    a = done.metrics["attribution"]
    assert a["classes"] == ["real", *SEEN]
    with RunLayout(done.run).predictions.open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["condition"] == "clean" and r["label"] == "1"]
    counts = a["confusion"]["counts"]
    assert len(counts) == len(SEEN)
    for name, row in zip(a["confusion"]["rows"], counts, strict=True):
        assert len(row) == 1 + len(SEEN)
        assert sum(row) == sum(r["generator"] == name for r in rows) > 0
    assert 0.0 <= a["accuracy"] <= 1.0 and a["n"] == sum(map(sum, counts))
    assert "midjourney" in a["unseen"]
    assert "generator attribution" in done.evaluate_output
    report = (done.run / "report.md").read_text(encoding="utf-8")
    assert "## Generator attribution" in report

    fakes = sorted((Path(synth_root) / "imagenet_midjourney" / "val" / "ai").iterdir())[:2]
    out = json.loads(invoke(["predict", str(done.run), *fakes, "--format", "json"]))
    rule = out["abstention"]
    threshold = json.loads(RunLayout(done.run).threshold.read_text())
    assert rule is not None and rule["score"] == threshold["score"]
    for row in out["predictions"]:
        above = row["score_value"] > rule["threshold"]
        assert row["known"] is (not above)
        assert (row["verdict"] == "uncertain") is above
        assert row["generator"] is None if row["verdict"] == "real" else row["generator"] in SEEN
    table = invoke(["predict", str(done.run), *fakes])
    assert "generator" in table and "known" in table
    csv_text = invoke(["predict", str(done.run), *fakes, "--format", "csv"])
    assert csv_text.splitlines()[0].split(",")[-4:-1] == ["generator", "known", "error"]


def test_training_free_methods_refuse_generator_labels(tmp_path, synth_root):
    with pytest.raises(AssertionError, match="2-class"):
        train_and_evaluate(
            recipe("quickstart_wepe"), tmp_path, data=synth_root, backbone=None,
            sets={"data.labels": '"generator"', "train.epochs": 0},
            evaluate=False,
        )  # fmt: skip
