"""Training-free methods (``wepe``, ``rigid``), issue 18 items 4, 5 and 13: symmetric logits
for the logit-reading scores, the CLS readout of a ViT (``model.pool = "cls"``), evaluation-time
overrides of what a run was built with refused, and a calibration of the posterior-mean
p(fake) that follows the documented quantile."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import check_rigid_features, cosine_gap, perturbed_copies

from bnnkit.cli import main
from bnnkit.engine.build import build
from bnnkit.engine.features.cache import model_digest
from bnnkit.errors import UsageError
from bnnkit.model.perturbed import PerturbationHead
from bnnkit.plugins import get_registry
from bnnkit.recipe import validate
from bnnkit.scores.base import ScoreInputs
from bnnkit.scores.store import build_score
from bnnkit.testing import synth_data, train_and_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _built(method: str, backbone: str = "test_vit", pool: str = "cls", **inference):
    raw = {
        "seed": 0,
        "data": {"image_size": 32},
        "model": {
            "backbone": {"name": backbone, "pretrained": False, "img_size": 32}
            if backbone == "test_vit"
            else {"name": backbone, "pretrained": False},
            "pool": pool,
        },
        "inference": {"name": method, "perturbations": 3, **inference},
        "train": {"epochs": 0, "backbone": "frozen"},
    }
    recipe = validate(raw, get_registry())
    torch.manual_seed(0)
    detector, m = build(recipe, num_train=8)
    return recipe, detector.eval(), m


# -- item 4: symmetric logits ---------------------------------------------------------------------
def _inputs(z: torch.Tensor, p: int = 3) -> ScoreInputs:
    head = PerturbationHead(p)  # location 0, scale 1: z is the feature itself
    logits = head.sample_logits(z[:, None].expand(-1, p), 8)
    return ScoreInputs(z[:, None].expand(-1, p), logits, logits.softmax(-1))


def test_logits_are_symmetric_so_energy_and_max_logit_treat_both_classes_alike() -> None:
    z = torch.tensor([5.0, -5.0, -1.0, -3.0])
    inputs = _inputs(z)
    torch.testing.assert_close(inputs.probs[0, :, 1], torch.sigmoid(z))  # the same softmax
    energy = build_score("energy")(inputs)
    assert energy[0] == pytest.approx(float(energy[1]), abs=1e-12), "energy(+5) != energy(-5)"
    max_logit = build_score("max_logit")(inputs)
    reals = max_logit[1:]  # z < 0: called real, at different confidences
    assert len(set(reals.tolist())) == 3, "max_logit ties every real image"
    assert max_logit[1] == pytest.approx(float(max_logit[0]))


# -- item 5: the CLS readout ----------------------------------------------------------------------
def _timm_cls(base, images: torch.Tensor) -> torch.Tensor:
    """The CLS embedding by timm's own route: a copy with global_pool='token',
    forward_head(pre_logits=True)."""
    import timm

    ref = timm.create_model("test_vit", pretrained=False, num_classes=0, global_pool="token",
                            img_size=32)  # fmt: skip
    ref.load_state_dict(base.model.state_dict())
    return ref.eval().forward_head(ref.forward_features(images), pre_logits=True)


def test_wepe_on_a_vit_reads_the_cls_embedding() -> None:
    _, det, _ = _built("wepe", sigma=0.2)
    images = torch.randn(3, 3, 32, 32)
    base = det.backbone.base
    with torch.no_grad():
        got = det.features(images)
        clean = _timm_cls(base, images)
        for k, moved in enumerate(perturbed_copies(base, 0.2)):
            want = cosine_gap(clean, _timm_cls(moved, images))
            torch.testing.assert_close(got[:, k].double(), want, atol=1e-6, rtol=1e-4)
        # not the mean of the patch tokens
        patches = base.model.forward_features(images)[:, 1:].mean(1)
        assert not torch.allclose(det.clean_features(images), patches, atol=1e-3)


def test_rigid_on_a_vit_reads_the_cls_embedding() -> None:
    _, det, _ = _built("rigid", sigma=0.1)
    images = torch.randn(3, 3, 32, 32)
    check_rigid_features(det, lambda x: _timm_cls(det.backbone.base, x), images, 0.1)


def test_pool_cls_keys_the_cache_and_is_refused_where_there_is_no_cls_token() -> None:
    recipe, cls_det, _ = _built("wepe")
    _, avg_det, _ = _built("wepe", pool="avg")
    assert model_digest(cls_det, recipe) != model_digest(avg_det, recipe)
    with pytest.raises(UsageError, match="pool = 'cls'.*CLS token"):
        _built("wepe", backbone="test_resnet")  # a CNN: a map, no token
    raw = {
        "model": {
            "backbone": {"name": "test_vit", "pretrained": False, "img_size": 32},
            "pool": "cls",
            "attention": {"name": "se"},
        },
        "inference": {"name": "map"},
    }
    with pytest.raises(UsageError, match="attention 'se'"):
        build(validate(raw, get_registry()), num_train=8)


# -- item 5: evaluation-time overrides of a training-free run ------------------------------------
def test_evaluate_refuses_to_change_what_a_training_free_run_was_built_with(tmp_path) -> None:
    data = synth_data(tmp_path / "data", train_per_class=4, val_per_class=2)
    trained = train_and_evaluate(
        "quickstart_wepe", tmp_path, data=data, evaluate=False,
        sets={"train.epochs": 0, "data.train_generators": '["adm", "sdv4"]',
              "inference.perturbations": 3, "inference.layers": '["model.layer4.*"]'},
    )  # fmt: skip
    for item in (
        "inference.sigma=0.1",
        "inference.seed=7",
        "inference.quantile=0.9",
        "inference.perturbations=4",
        "inference.calibration_images=2",
        'inference.layers=["model.layer3.*"]',
    ):
        key = item.split("=")[0].split(".")[1]
        result = CliRunner().invoke(
            main, ["evaluate", str(trained.run), "--no-plots", "--data-root", str(data),
                   "--set", item],
        )  # fmt: skip
        assert result.exit_code == 2, (item, result.output, result.exception)
        assert f"inference.{key}" in result.output and "fixed when it is made" in result.output
        assert not (trained.run / "metrics.json").exists()
    # the run's own values are accepted
    out = CliRunner().invoke(
        main, ["evaluate", str(trained.run), "--no-plots", "--data-root", str(data),
               "--set", "inference.quantile=0.95", "--set", "inference.seed=0"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert json.loads((trained.run / "metrics.json").read_text())


# -- item 13: the posterior-mean p(fake) follows the documented quantile -------------------------
def _reals(n: int, g: torch.Generator, p: int = 8) -> torch.Tensor:
    """Disagreements of real images: an image's own level, mostly independent per
    perturbation (as a random or weakly correlated set of perturbations gives)."""
    common = 0.5 * torch.randn(n, 1, generator=g)
    return (common + torch.randn(n, p, generator=g)).exp() * torch.linspace(1, 3, p)


@pytest.mark.parametrize("method", ["wepe", "rigid"])
def test_posterior_mean_p_fake_is_one_half_at_the_reals_quantile(method: str) -> None:
    _, _, m = _built(method, backbone="test_resnet", pool="avg", perturbations=8, quantile=0.95)
    g = torch.Generator().manual_seed(0)
    n = 320
    reals, fakes = _reals(n, g), _reals(40, g) * 5
    m.after_training(torch.cat([reals, fakes]), torch.tensor([0] * n + [1] * 40))

    def share(x: torch.Tensor) -> float:  # mean over the P samples of the softmax, as evaluate
        return float((m.sample(x, 8)[..., 1].mean(0) >= 0.5).double().mean())

    se = (0.05 * 0.95 / n) ** 0.5
    assert abs(share(reals) - 0.05) <= 2 * se, share(reals)  # ~16 of 320 (was 1)
    fresh = _reals(4000, g)  # new reals of the same kind: 5 % up to the calibration's error
    assert abs(share(fresh) - 0.05) <= 3 * (se + (0.05 * 0.95 / 4000) ** 0.5), share(fresh)
    assert m.extra_meta()["calibration"]["shift"] == m.shift
