"""Training-free methods ``wepe`` (weight perturbation) and ``rigid`` (input noise): the
disagreement features against an independent computation, the calibration on reals only, the
epochs = 0 rule, and whole runs (train -> evaluate -> predict in a new process) that are
deterministic for a seed."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, check_rigid_features, cosine_gap, perturbed_copies

from bnnkit.engine.build import build
from bnnkit.engine.features.cache import model_digest
from bnnkit.engine.train.phases import Phase, plan_phases
from bnnkit.errors import RecipeError, UsageError
from bnnkit.model.perturbed import perturbation_seeds
from bnnkit.plugins import get_registry
from bnnkit.recipe import load_recipe, validate
from bnnkit.testing import check_method, synth_data, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(method: str, **inference):
    raw = {
        "seed": inference.pop("recipe_seed", 0),
        "data": {"image_size": 32},
        "model": {"backbone": {"name": "test_resnet", "pretrained": False}},
        "inference": {"name": method, "perturbations": 3, **inference},
        "train": {"epochs": 0, "backbone": "frozen"},
    }
    return validate(raw, get_registry())


def _built(method: str, seed: int = 0, **inference):
    recipe = _recipe(method, **inference)
    torch.manual_seed(seed)  # what the trainer does (seed_everything) before building
    detector, m = build(recipe, num_train=8)
    return recipe, detector.eval(), m


# -- the features ---------------------------------------------------------------------------------
def test_wepe_features_match_an_independently_perturbed_copy() -> None:
    _, det, _ = _built("wepe", sigma=0.2)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got = det.features(images)
        base = det.backbone.base
        clean = base(images).mean(dim=(2, 3))
        assert got.shape == (4, 3)
        for k, copy_ in enumerate(perturbed_copies(base, 0.2)):
            want = cosine_gap(clean, copy_(images).mean(dim=(2, 3)))
            torch.testing.assert_close(got[:, k].double(), want, atol=1e-6, rtol=1e-4)
    assert (got > 0).all()
    # the clean backbone itself is untouched by the perturbed passes
    with torch.no_grad():
        torch.testing.assert_close(det.clean_features(images), clean)


def test_rigid_features_match_noisy_images() -> None:
    _, det, _ = _built("rigid", sigma=0.1)
    images = torch.randn(4, 3, 32, 32)
    base = det.backbone.base
    got = check_rigid_features(det, lambda x: base(x).mean(dim=(2, 3)), images, 0.1)
    with torch.no_grad():  # one image's features do not depend on the batch it is in
        torch.testing.assert_close(det.features(images[2:3]), got[2:3], atol=1e-6, rtol=1e-5)


def test_layers_select_weights_and_the_seeds_key_the_cache() -> None:
    recipe, det, _ = _built("wepe", layers=["model.layer4.*"])
    assert det.selected and all(n.startswith("model.layer4.") for n in det.selected)
    with pytest.raises(UsageError, match="match no backbone weight"):
        _built("wepe", layers=["model.no_such_block.*"])
    digests = {
        model_digest(det, recipe),
        model_digest(_built("wepe", seed=1, layers=["model.layer4.*"])[1], recipe),
        model_digest(_built("wepe")[1], recipe),  # other layers
        model_digest(_built("rigid")[1], recipe),
    }
    assert len(digests) == 4, "perturbations that differ must not share a feature-cache entry"


# -- calibration and sampling ---------------------------------------------------------------------
def test_calibration_is_fitted_on_reals_only_and_samples_one_row_per_perturbation() -> None:
    _, det, method = _built("wepe", quantile=0.8)
    g = torch.Generator().manual_seed(0)
    reals = torch.rand(50, 3, generator=g) * torch.tensor([1.0, 2.0, 4.0])
    targets = torch.tensor([0] * 50 + [1] * 30)
    for fakes in (torch.full((30, 3), 100.0), torch.zeros(30, 3)):
        method.after_training(torch.cat([reals, fakes]), targets)
        # per perturbation: the reals' quantile, moved by one shift of z (the posterior mean)
        unshifted = method.head.location - method.shift * method.head.scale
        torch.testing.assert_close(unshifted, torch.quantile(reals, 0.8, dim=0))
    med = reals.median(dim=0).values
    torch.testing.assert_close(method.head.scale, 1.4826 * (reals - med).abs().median(dim=0).values)
    at_threshold = method.head.location.expand(2, 3)
    probs = method.sample(at_threshold, 32)
    assert probs.shape == (3, 2, 2)  # P rows whatever k
    torch.testing.assert_close(probs[..., 1], torch.full((3, 2), 0.5))
    meta = method.extra_meta()
    assert meta["calibration"]["images"] == 50
    assert meta["perturbation"]["seeds"] == perturbation_seeds(0, 3, "weights")
    check_method(method, torch.rand(5, 3), rows=3)

    few = _built("wepe", calibration_images=5)[2]
    few.after_training(torch.cat([reals, torch.zeros(30, 3)]), targets)
    assert few.extra_meta()["calibration"]["images"] == 5


def test_training_free_methods_take_zero_epochs_and_nothing_else() -> None:
    registry = get_registry()
    base = {
        "model": {"backbone": {"name": "test_resnet", "pretrained": False}},
        "inference": {"name": "wepe"},
    }
    with pytest.raises(RecipeError, match="training-free.*set train.epochs = 0"):
        validate({**base, "train": {"epochs": 3}}, registry)
    with pytest.raises(RecipeError, match="train.epochs: map needs at least 1 epoch"):
        validate({**base, "inference": {"name": "map"}, "train": {"epochs": 0}}, registry)
    with pytest.raises(RecipeError, match="head"):
        validate({**base, "model": {**base["model"], "head": {"name": "linear"}}}, registry)
    for backbone in ("finetune", "frozen"):
        assert plan_phases(backbone, False, epochs=0) == [Phase("head", 0)]
    assert load_recipe(QUICKSTART).train.epochs > 0


# -- whole runs -----------------------------------------------------------------------------------
def _scores(run: Path) -> list[tuple[str, float, float]]:
    with (run / "predictions.csv").open() as f:
        return [(r["path"], float(r["p_fake"]), float(r["epistemic"])) for r in csv.DictReader(f)]


@pytest.mark.parametrize("method", ["wepe", "rigid"])
def test_a_run_trains_nothing_and_is_deterministic_for_its_seed(method: str, tmp_path) -> None:
    data = synth_data(tmp_path / "data", train_per_class=4, val_per_class=2)
    sets = {
        "train.epochs": 0,
        "data.train_generators": '["adm", "sdv4"]',
        "inference.perturbations": 3,
        "data.calibration": 0,  # no calibration split: the training reals calibrate
    }
    recipe = ROOT / "recipes" / f"quickstart_{method}.toml"

    def run(where: str, seed: int):
        return train_and_evaluate(
            recipe, tmp_path / where, data=data, sets={**sets, "seed": seed},
            evaluate_args=("--no-plots", "--ood", "midjourney"),
        )  # fmt: skip

    first, again, other = run("a", 0), run("b", 0), run("c", 1)  # b: its own (empty) cache
    meta = first.meta
    # nothing optimised: one epoch-0 row validates the calibrated detector
    assert meta["complete"] and [r["epoch"] for r in meta["history"]] == [0]
    assert 0.0 <= meta["history"][0]["val_acc"] <= 1.0
    perturbation = meta["method_meta"]["perturbation"]
    kind = "weights" if method == "wepe" else "input"
    assert perturbation["seeds"] == perturbation_seeds(0, 3, kind)
    assert meta["method_meta"]["calibration"]["images"] == 8  # the reals: 2 generators x 4
    a, b, c = _scores(first.run), _scores(again.run), _scores(other.run)
    assert a == b, "same seed, different p(fake) or uncertainty"
    assert [r[1:] for r in a] != [r[1:] for r in c], "another seed gave the same scores"
    assert max(r[2] for r in a) > 0, "P perturbations should disagree somewhere"
    assert "midjourney" in json.dumps(first.metrics)
    if method == "rigid":
        return
    # a new process loads the run from its directory alone and scores an image the same
    path, p_fake, epistemic = next(r for r in a if "midjourney" in r[0])
    proc = subprocess.run(
        [sys.executable, "-m", "bnnkit", "predict", str(first.run), str(data / path),
         "--format", "json"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row,) = json.loads(proc.stdout)["predictions"]
    assert row["p_fake"] == pytest.approx(p_fake, abs=1e-6)
    assert row["epistemic"] == pytest.approx(epistemic, abs=1e-6)
