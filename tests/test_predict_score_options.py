"""``bnnkit predict`` computes the abstention score ``evaluate`` calibrated, components' options
included (issue 18, item 2): a ``fused`` score over ``energy`` evaluated with
``--set score.energy.t=5`` is rebuilt by predict with ``t = 5``, not the default."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tomllib

import pytest
from click.testing import CliRunner

from bnnkit.cli import main

OPTIONS = ["--set", "score.energy.t=5", "--set", 'score.fused.scores=["energy","entropy"]']


@pytest.fixture(scope="module")
def fused_run(trained_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("fused") / trained_run.name
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("scores"))
    args = ["evaluate", str(run), "--abstain-on", "fused", "--coverage", "0.5", "--no-plots"]
    result = CliRunner().invoke(main, [*args, *OPTIONS])
    assert result.exit_code == 0, result.output
    return run


def test_threshold_records_every_component_options(fused_run):
    record = json.loads((fused_run / "threshold.json").read_text())
    assert record["score"] == "fused"
    assert record["options"]["scores"] == ["energy", "entropy"]
    given = record["score_options"]
    assert set(given) == {"fused", "energy", "entropy"}
    assert given["energy"]["t"] == 5 and given["fused"] == record["options"]


def test_predict_matches_predictions_csv(fused_run, synth_root):
    """The validation images predicted in evaluate's batches (same order, same batch size, so
    the same backbone numerics and the same posterior draws): every image's fused value is the
    one in predictions.csv and so is its verdict. Batches of one cannot be compared to 1e-9:
    bbb draws its weights per batch, and a seen image lies in the fused score's reference, so
    any last-bit difference of a component moves its mid-rank by 1/(2n)."""
    record = json.loads((fused_run / "threshold.json").read_text())
    with open(fused_run / "predictions.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["condition"] == "clean"]
    assert rows
    images = [str(synth_root / r["path"]) for r in rows]
    batch = tomllib.loads((fused_run / "recipe.toml").read_text())["eval"]["batch_size"]
    args = ["predict", str(fused_run), *images, "--batch-size", str(batch), "--format", "json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    preds = {p["path"]: p for p in json.loads(result.stdout)["predictions"]}
    assert len(preds) == len(rows)
    for image, row in zip(images, rows, strict=True):
        p = preds[image]
        assert p["score"] == "fused"
        assert p["score_value"] == pytest.approx(float(row["fused"]), abs=1e-9, rel=0)
        p_fake = float(row["p_fake"])
        expected = (
            "uncertain"
            if float(row["fused"]) > record["threshold"]
            else ("fake" if p_fake >= 0.5 else "real")
        )
        assert p["verdict"] == expected, image


def test_threshold_without_score_options_still_loads(fused_run, synth_root, tmp_path):
    """A threshold.json written before ``score_options`` (only the abstention score's own
    options) is still read: the components are rebuilt with their defaults."""
    run = tmp_path / fused_run.name
    shutil.copytree(fused_run, run)
    record = json.loads((run / "threshold.json").read_text())
    del record["score_options"]
    (run / "threshold.json").write_text(json.dumps(record))
    image = sorted((synth_root / "imagenet_midjourney" / "val").rglob("*.png"))[0]
    result = CliRunner().invoke(main, ["predict", str(run), str(image), "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["predictions"]
    # a finite fused value (beyond the seen range it leaves [0, 1]: see score_fused.tailed_rank)
    assert row["score"] == "fused" and math.isfinite(row["score_value"])
