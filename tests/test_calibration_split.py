"""The calibration split (issue 18, items 1, 3, 12): post-hoc fits never see the images reported.

Carved out of the training folders (``data.calibration``), never trained on; the temperature,
the abstention thresholds and seen-fitted scores (``fused``, also with ``weights = "errors"``)
are fitted on it; ``evaluate`` reports on the validation folders only. An old run (recipe
without the key) keeps fitting on seen val, with a warning. ``calibrate`` refuses a temperature
at a bound of its search, ``--reset`` removes one, and ``predict`` shows the one applied.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import invoke

from bnnkit.data.genimage import Sample
from bnnkit.data.index import DEFAULT_CACHE_DIR
from bnnkit.data.splits import carve_calibration, train_calibration_split
from bnnkit.engine.posthoc.calibrate import T_BOUNDS, fit_temperature
from bnnkit.metrics.classification import nll
from bnnkit.recipe import load_run_recipe
from bnnkit.run.layout import RunLayout
from bnnkit.run.threshold import model_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(n: int, gens=("adm", "sdv4")) -> list[Sample]:
    return [
        Sample(Path(f"/d/{g}/train/{c}/img_{i:03d}.png"), label, g)
        for g in gens
        for c, label in (("nature", 0), ("ai", 1))
        for i in range(n)
    ]


def test_carve_is_deterministic_disjoint_per_cell_and_stable_when_files_are_added():
    items = _samples(20)
    train, cal = carve_calibration(items, 0.1, seed=3)
    assert set(train).isdisjoint(cal) and len(train) + len(cal) == len(items)
    cells = {(s.generator, s.label) for s in items}
    for cell in cells:  # ceil(0.1 * 20) = 2 per (generator, class)
        assert sum((s.generator, s.label) == cell for s in cal) == 2
    assert carve_calibration(items, 0.1, seed=3) == (train, cal)
    assert carve_calibration(items, 0.1, seed=4)[1] != cal
    # the choice depends on each file's name, not on the order or on the other files
    assert set(carve_calibration(list(reversed(items)), 0.1, seed=3)[1]) == set(cal)
    more = items + [Sample(Path(f"/d/adm/train/ai/new_{i}.png"), 1, "adm") for i in range(2)]
    moved = set(cal) - set(carve_calibration(more, 0.1, seed=3)[1])
    assert len(moved) <= 2 and all(s.generator == "adm" and s.label == 1 for s in moved)
    assert carve_calibration(items, 0.0, seed=3) == (items, [])
    one = _samples(1)  # a folder of one image keeps it for training
    assert carve_calibration(one, 0.5, seed=0) == (one, [])


def _copy(trained_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def _clean_rows(run: Path) -> list[dict[str, str]]:
    with open(RunLayout(run).predictions, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["condition"] == "clean"]


def test_new_run_records_its_split_and_reports_no_image_it_was_fitted_on(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    layout = RunLayout(run)
    assert "calibration = 0.1" in layout.recipe.read_text()  # recorded at train time
    recipe = load_run_recipe(layout.recipe)
    train, cal = train_calibration_split(recipe, DEFAULT_CACHE_DIR)
    assert cal and set(train).isdisjoint(cal)
    meta = json.loads(layout.checkpoint.read_text())
    assert meta["num_train"] == len(train)  # trained on the training part only

    # fused with error weights: item 3, fitted through evaluate on the calibration images
    invoke(["evaluate", run, "--no-plots", "--abstain-on", "fused",
            "--set", 'score.fused.weights="errors"'])  # fmt: skip
    metrics = json.loads(layout.metrics.read_text())
    used = metrics["abstention"]["calibration"]
    assert used["split"] == "calibration" and used["n"] == len(cal)
    assert used["fraction"] == pytest.approx(0.1)
    assert used["generators"] == list(recipe.data.train_generators)
    assert metrics["scores"]["fused"]["fitted_on"]["split"] == "calibration"
    assert metrics["scores"]["fused"]["options"]["weights"] == "errors"
    threshold = json.loads(layout.threshold.read_text())
    assert threshold["calibrated_on"] == {k: used[k] for k in threshold["calibrated_on"]}
    assert threshold["calibrated_on"]["split"] == "calibration"

    root = Path(recipe.data.root)
    reported = {(root / r["path"]).resolve() for r in _clean_rows(run)}
    fitted = {Path(s.path).resolve() for s in cal}
    assert reported and reported.isdisjoint(fitted)
    assert all("/val/" in p.as_posix() for p in reported)
    assert reported.isdisjoint(Path(s.path).resolve() for s in train)


def _nll_from_csv(run: Path, seen: list[str]) -> float:
    rows = [r for r in _clean_rows(run) if r["generator"] in seen]
    p = torch.tensor([float(r["p_fake"]) for r in rows], dtype=torch.float64)
    y = torch.tensor([int(r["label"]) for r in rows])
    return nll(p, y)


def _tempered(p: float, t: float) -> float:
    """The K = 1 predictive tempered by ``t``: softmax(log p / t)."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    a, b = math.log(p) / t, math.log(1 - p) / t
    return 1.0 / (1.0 + math.exp(b - a))


def test_seen_nll_after_calibrate_is_the_nll_of_predictions_csv_tempered(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    layout = RunLayout(run)
    seen = list(load_run_recipe(layout.recipe).data.train_generators)
    invoke(["evaluate", run, "--no-plots", "--samples", "1"])  # K = 1: the same seeded draw
    before = {r["path"]: float(r["p_fake"]) for r in _clean_rows(run) if r["generator"] in seen}
    invoke(["calibrate", run, "--samples", "1"])
    record = json.loads(layout.temperature.read_text())
    assert record["fitted_on"]["split"] == "calibration"
    t = record["temperature"]
    invoke(["evaluate", run, "--no-plots", "--samples", "1"])
    metrics = json.loads(layout.metrics.read_text())
    assert metrics["temperature"]["fitted_on"]["split"] == "calibration"
    assert metrics["seen"]["nll"] == pytest.approx(_nll_from_csv(run, seen), abs=1e-6)
    rows = [r for r in _clean_rows(run) if r["generator"] in seen]
    p = torch.tensor([_tempered(before[r["path"]], t) for r in rows], dtype=torch.float64)
    y = torch.tensor([int(r["label"]) for r in rows])
    assert metrics["seen"]["nll"] == pytest.approx(nll(p, y), abs=1e-4)


def test_old_run_without_the_key_warns_and_still_evaluates_on_seen_val(trained_run, tmp_path):
    from bnnkit.api import Run

    run = _copy(trained_run, tmp_path)
    layout = RunLayout(run)
    text = layout.recipe.read_text()
    layout.recipe.write_text("\n".join(x for x in text.splitlines() if "calibration" not in x))
    assert load_run_recipe(layout.recipe).data.calibration == 0.0  # missing means none
    with pytest.warns(UserWarning, match="in-sample"):
        metrics = Run.load(run).evaluate(device="cpu", plots=False)
    used = metrics["abstention"]["calibration"]
    n_seen_val = sum(
        1 for r in _clean_rows(run) if r["generator"] in metrics["seen_generators"]
    )  # fmt: skip
    assert used["split"] == "val" and used["n"] == n_seen_val
    assert json.loads(layout.threshold.read_text())["calibrated_on"]["split"] == "val"


def test_a_perfectly_separated_fit_set_drives_t_to_the_lower_bound():
    p1 = torch.tensor([0.7, 0.69, 0.3, 0.31], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1], -1)[None]
    assert fit_temperature(probs, torch.tensor([1, 1, 0, 0])) == pytest.approx(T_BOUNDS[0])


def _separated(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The fit set's ``probs`` replaced by a perfectly separated predictive (0.99 / 0.01)."""
    p1 = torch.where(labels.bool(), 0.99, 0.01).double()
    return torch.stack([1 - p1, p1], -1)[None].expand(probs.shape[0], -1, -1)


def test_calibrate_refuses_a_temperature_at_the_bound(trained_run, tmp_path, monkeypatch):
    import bnnkit.engine.posthoc.calibrate as calibrate

    run = _copy(trained_run, tmp_path)
    fit = calibrate.fit_temperature  # the fit itself runs: on a perfectly separated fit set
    monkeypatch.setattr(
        calibrate, "fit_temperature", lambda probs, labels: fit(_separated(probs, labels), labels)
    )
    real_nll = calibrate.tempered_nll
    monkeypatch.setattr(
        calibrate,
        "tempered_nll",
        lambda probs, labels, t: real_nll(_separated(probs, labels), labels, t),
    )
    result = CliRunner().invoke(_main(), ["calibrate", str(run)])
    assert result.exit_code == 2, result.output
    assert "lower bound" in result.output and "separated perfectly" in result.output
    assert "nothing written" in result.output
    assert not RunLayout(run).temperature.exists()


def _main():
    from bnnkit.cli import main

    return main


def _write_temperature(run: Path, t: float) -> None:
    record = {"schema_version": 1, "temperature": t, "model_sha256": model_fingerprint(run)}
    RunLayout(run).temperature.write_text(json.dumps(record))


def test_calibrate_reset_removes_the_temperature(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    _write_temperature(run, 2.0)
    out = invoke(["calibrate", run, "--reset"])
    assert "removed" in out and not RunLayout(run).temperature.exists()
    assert "nothing to do" in invoke(["calibrate", run, "--reset"])


def test_predict_shows_the_applied_temperature(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    image = next(Path(load_run_recipe(RunLayout(run).recipe).data.root).rglob("*.png"))
    table = invoke(["predict", run, image])
    assert "no temperature" in table
    _write_temperature(run, 2.0)
    assert json.loads(invoke(["predict", run, image, "--format", "json"]))["temperature"] == 2.0
    rows = list(csv.DictReader(invoke(["predict", run, image, "--format", "csv"]).splitlines()))
    assert float(rows[0]["temperature"]) == 2.0
    assert "T=2" in invoke(["predict", run, image])


def test_seen_fitted_scores_are_thresholded_on_calibration_images_they_were_not_fitted_on():
    """``fused`` is fitted on one half of the calibration images and its threshold set on the
    other: disjoint halves, each (generator, label) cell split evenly, one-image cells
    alternating; and only scores that are (or read) a seen-fitted score are affected."""
    from bnnkit.engine.posthoc.score_fit import seen_dependent, seen_fit_halves
    from bnnkit.engine.posthoc.score_set import build_scores
    from bnnkit.metrics.records import Predictions

    gens = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 4, 4, 4])  # generator 4 is unseen
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1])
    n = len(gens)
    probs = torch.full((1, n, 2), 0.5)
    record = Predictions.from_probs(probs, labels=labels, generators=gens, indices=torch.arange(n))
    first, second = seen_fit_halves(record, n_seen=4)
    a, b = set(first.indices.tolist()), set(second.indices.tolist())
    assert not a & b and a | b == set(range(8))  # every seen row once, no unseen row
    for g, y in [(0, 0), (0, 1)]:  # two-image cells: one image in each half
        cell = {i for i in range(8) if gens[i] == g and labels[i] == y}
        assert len(cell & a) == len(cell & b) == 1
    assert abs(len(a) - len(b)) <= 1  # one-image cells alternate
    _, scores = build_scores(["entropy", "knn", "fused"])
    assert seen_dependent(scores) == {"fused"}


def test_unreadable_calibration_images_stop_the_evaluation_not_fall_back_to_val(
    trained_run, tmp_path, runner
):
    """Every calibration image unreadable: the fits must not move, silently and still labelled
    "calibration", onto the validation images the evaluation reports on."""
    from bnnkit.cli import main

    run = _copy(trained_run, tmp_path)
    recipe = load_run_recipe(RunLayout(run).recipe)
    root = tmp_path / "data"
    shutil.copytree(recipe.data.root, root)
    recipe.data.root = str(root)
    cal = train_calibration_split(recipe)[1]
    assert cal
    for s in cal:
        Path(s.path).write_bytes(b"not an image")
    result = runner.invoke(main, ["evaluate", str(run), "--no-plots", "--data-root", str(root)])
    assert result.exit_code == 2, result.output
    assert "no readable calibration images" in result.output
