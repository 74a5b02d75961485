"""How a plugin author tests plugins with ``bnnkit.testing``: register them in-process (installed
or not), look them up in the registry, exercise them on small tensors, run the method
conformance check, and train + evaluate a tiny run through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bnnkit_plugin_example import attention_eca, method_swag

from bnnkit.errors import RecipeError, UsageError
from bnnkit.recipe import validate
from bnnkit.testing import check_method, registry_fixture, train_and_evaluate

EXAMPLE = Path(__file__).resolve().parents[1]

registry = registry_fixture(attention_eca, method_swag)


def make_swag(registry, num_train=64, **options):
    head = registry.get("head", "linear").obj(8, 2)
    return registry.get("method", "swag").obj(head, num_train=num_train, **options)


def test_registered_with_their_options(registry):
    assert registry.get("attention", "eca").options() == {
        "kernel_size": 0,
        "gamma": 2.0,
        "beta": 1.0,
    }
    assert registry.get("method", "swag").options()["swa_lr"] == "auto"


def test_eca_keeps_the_feature_map_shape_and_gates_channels(registry):
    block = registry.get("attention", "eca").obj(64)
    x = torch.randn(2, 64, 5, 5)
    y = block(x)
    assert y.shape == x.shape
    gate = y / x  # a per-channel sigmoid gate in (0, 1), constant over space
    assert torch.allclose(gate, gate[:, :, :1, :1].expand_as(gate), atol=1e-5)
    assert (gate > 0).all() and (gate < 1).all()
    with pytest.raises(UsageError, match="odd"):
        registry.get("attention", "eca").obj(64, kernel_size=4)


def test_recipe_validation_knows_the_options(registry):
    raw = {
        "model": {"backbone": {"name": "test_resnet"}, "attention": {"name": "eca", "gama": 2}},
        "inference": {"name": "swag", "scale": "wide"},
    }
    with pytest.raises(RecipeError) as err:
        validate(raw, registry)
    text = str(err.value)
    assert "model.attention.gama" in text and "did you mean 'model.attention.gamma'" in text
    assert "inference.scale: expected float" in text


def test_swag_moments_match_the_iterates(registry):
    swag = make_swag(registry, collect_every=2)
    iterates = []
    for step in range(1, 9):
        with torch.no_grad():
            for p in swag.head.parameters():
                p.normal_()
        if step % 2 == 0:
            iterates.append(torch.nn.utils.parameters_to_vector(swag.head.parameters()).clone())
        swag.after_step(step)
    stacked = torch.stack(iterates)
    assert swag.n_snapshots == 4
    torch.testing.assert_close(swag.mean, stacked.mean(0))
    torch.testing.assert_close(swag.variance, stacked.var(0, unbiased=False), rtol=1e-4, atol=1e-5)


def test_burn_in_skips_the_first_epochs(registry):
    swag = make_swag(registry, burn_in_epochs=1)
    swag.after_step(1)
    assert swag.n_snapshots == 0
    swag.after_epoch(1)
    swag.after_step(2)
    assert swag.n_snapshots == 1


def test_sample_draws_different_heads_and_scale_zero_is_swa(registry):
    torch.manual_seed(0)
    swag = make_swag(registry)
    for step in range(1, 6):
        with torch.no_grad():
            for p in swag.head.parameters():
                p.add_(torch.randn_like(p))
        swag.after_step(step)
    swag.after_training(None, None)
    feats = torch.randn(3, 8)
    probs = swag.sample(feats, 7)
    assert probs.shape == (7, 3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(7, 3))
    assert probs.std(0).max() > 1e-3  # posterior spread -> epistemic uncertainty
    # shapes, probabilities, seeded sampling, state round-trip (bnnkit.testing's check)
    check_method(swag, feats, fresh=lambda: make_swag(registry))
    # the head holds the SWA mean after training; scale 0 samples it exactly
    swag.config["scale"] = 0.0
    swa = torch.softmax(swag.head(feats), -1)
    torch.testing.assert_close(swag.sample(feats, 2), swa.expand(2, 3, 2))


def test_state_round_trips(registry):
    swag = make_swag(registry)
    for step in range(1, 4):
        with torch.no_grad():
            for p in swag.head.parameters():
                p.normal_()
        swag.after_step(step)
    again = make_swag(registry)
    again.load_extra_state(swag.extra_state())
    again.load_extra_meta(swag.extra_meta())
    assert again.n_snapshots == 3
    torch.testing.assert_close(again.variance, swag.variance)


def test_swag_optimises_with_constant_rate_sgd(registry):
    swag = make_swag(registry, swa_lr=0.05, momentum=0.5)
    opt = swag.configure_optimizer(
        [{"params": list(swag.head.parameters()), "lr": 1.0}],
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
    )
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["momentum"] == 0.5
    with pytest.raises(UsageError, match="swa_lr"):
        make_swag(registry, swa_lr=-1.0)


def test_recipe_trains_and_evaluates(registry, tmp_path):
    # 7 generators x 2 classes x (4 - 1 calibration image) = 42 images: 3 SWAG snapshots
    sets = {"train.head_epochs": 1, "data.train_limit": 4}
    result = train_and_evaluate(EXAMPLE / "swag_eca.toml", tmp_path, sets=sets)
    assert result.meta["method"] == "swag" and result.meta["method_meta"]["n_snapshots"] == 3
    assert result.metrics["method"] == "swag"
    assert result.metrics["seen"]["epistemic_uncertainty"] > 0  # SWAG samples differ
