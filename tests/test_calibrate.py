"""Post-hoc temperature scaling: the fit, ``bnnkit calibrate`` and its use by evaluate/predict."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke

from bnnkit.engine.features.loop import temper
from bnnkit.engine.posthoc.calibrate import (
    fit_temperature,
    read_temperature,
    tempered_nll,
    tempered_p_fake,
)
from bnnkit.recipe import load_recipe
from bnnkit.run.layout import RunLayout


def _probs(k: int, n: int, seed: int, sharpen: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """K posterior samples ``[K, N, 2]`` around calibrated per-image probabilities (labels drawn
    from them), each sample's logits multiplied by ``sharpen`` (> 1: over-confident)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g) * 1.5
    labels = torch.bernoulli(torch.sigmoid(base), generator=g).long()
    logit = base + 0.3 * torch.randn(k, n, generator=g)
    p1 = torch.sigmoid(sharpen * logit).double()
    return torch.stack([1 - p1, p1], dim=-1), labels


def test_fit_equals_the_brute_force_grid_minimiser():
    probs, labels = _probs(k=4, n=60, seed=1, sharpen=2.0)
    t = fit_temperature(probs, labels)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 20001))
    losses = [tempered_nll(probs, labels, float(g)) for g in grid]
    best = float(grid[int(np.argmin(losses))])
    assert t == pytest.approx(best, rel=1e-3)
    # the loop's per-sample tempering is the predictive the fit minimises
    mean = temper(probs.float(), t).mean(0)[:, 1].double()
    assert torch.allclose(mean, tempered_p_fake(probs, t), atol=1e-5)


def test_overconfident_predictive_gets_t_above_one_and_lower_nll():
    probs, labels = _probs(k=8, n=400, seed=2, sharpen=3.0)
    t = fit_temperature(probs, labels)
    assert t > 1.5
    assert tempered_nll(probs, labels, t) < tempered_nll(probs, labels, 1.0) - 0.01


def _csv_p_fake(run: Path) -> dict[str, float]:
    with open(RunLayout(run).predictions, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["condition"] == "clean"]
    return {r["path"]: float(r["p_fake"]) for r in rows}


def test_calibrate_then_evaluate_and_predict_use_the_temperature(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    layout = RunLayout(run)
    recipe = load_recipe(layout.recipe)
    invoke(["evaluate", run, "--no-plots"])
    before = json.loads(layout.metrics.read_text())
    csv_before = _csv_p_fake(run)
    assert "temperature" not in before

    out = invoke(["calibrate", run])
    assert "temperature" in out and layout.temperature.is_file()
    record = json.loads(layout.temperature.read_text())
    t = record["temperature"]
    assert t > 0 and abs(t - 1.0) > 1e-3
    assert record["fitted_on"]["generators"] == list(recipe.data.train_generators)
    assert record["fit"]["nll_after"] <= record["fit"]["nll_before"] + 1e-9

    invoke(["evaluate", run, "--no-plots"])
    after = json.loads(layout.metrics.read_text())
    assert after["schema_version"] == 3
    assert after["temperature"]["value"] == pytest.approx(t)
    assert after["seen"]["nll"] != pytest.approx(before["seen"]["nll"], abs=1e-6)
    assert after["seen"]["ece"] != pytest.approx(before["seen"]["ece"], abs=1e-6)
    assert json.loads(layout.threshold.read_text())["temperature"] == pytest.approx(t)
    assert "Temperature scaling" in layout.report.read_text()

    # predict the first evaluation batch as one batch: the same draws as evaluate's, tempered
    csv_after = _csv_p_fake(run)
    names = list(csv_after)[: recipe.eval.batch_size]
    files = [str(Path(recipe.data.root) / name) for name in names]
    size = str(len(files))
    args = ["predict", run, *files, "--format", "json", "--batch-size", size]
    rows = json.loads(invoke(args))["predictions"]
    got = {Path(r["path"]).resolve(): r["p_fake"] for r in rows}
    for name, path in zip(names, files, strict=True):
        assert got[Path(path).resolve()] == pytest.approx(csv_after[name], abs=1e-5)
    assert any(abs(csv_after[n] - csv_before[n]) > 1e-4 for n in names)


def test_stale_temperature_file_is_ignored_with_a_warning(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    layout = RunLayout(run)
    layout.temperature.write_text(
        json.dumps({"schema_version": 1, "temperature": 3.0, "model_sha256": "0" * 64})
    )
    record, warning = read_temperature(run)
    assert record is None and "other weights" in warning
    from bnnkit.api import Run

    with pytest.warns(UserWarning, match="other weights"):
        metrics = Run.load(run).evaluate(device="cpu", plots=False)
    assert "temperature" not in metrics
    image = next(Path(load_recipe(layout.recipe).data.root).rglob("*.png"))
    result = Run.load(run).predict_result([image], device="cpu")
    assert result.rows[0]["error"] is None
    assert any("other weights" in w for w in result.warnings)
