"""Heads: vectorised posterior sampling matches the single-sample forward's distribution."""

from __future__ import annotations

import pytest
import torch

from bnnkit.metrics.uncertainty import decompose
from bnnkit_plugins.head_bbb import BBBHead
from bnnkit_plugins.head_dropout import DropoutHead
from bnnkit_plugins.method_bbb import BayesByBackprop
from bnnkit_plugins.method_map import MAP


def test_bbb_vectorised_samples_match_blitz_forward():
    torch.manual_seed(0)
    head = BBBHead(16, 2, posterior_rho_init=-2.0)
    x = torch.randn(4, 16)
    k = 4000
    ours = head.sample_logits(x, k)
    assert ours.shape == (k, 4, 2)
    blitz = torch.stack([head(x) for _ in range(k)]).detach()
    # Monte Carlo error of a mean over k draws is std/sqrt(k): allow 5 of those
    tol = 5 * float(blitz.std(0).max()) / k**0.5 * 2**0.5
    torch.testing.assert_close(ours.mean(0), blitz.mean(0), atol=tol, rtol=0)
    torch.testing.assert_close(ours.std(0), blitz.std(0), atol=tol, rtol=0.05)
    # closed form: var = sum_i x_i^2 sigma_w^2 + sigma_b^2
    w_std, b_std = head.posterior_std()
    var = (x**2) @ (w_std**2).T + b_std**2
    torch.testing.assert_close(ours.var(0), var.detach(), rtol=0.1, atol=0.0)


def test_bbb_kl_weight_is_one_over_n():
    head = BBBHead(8, 2)
    method = BayesByBackprop(head, num_train=400)
    assert method.kl_weight == 1 / 400
    parts = method.training_loss(torch.randn(5, 8), torch.tensor([0, 1, 0, 1, 1]))
    torch.testing.assert_close(parts.loss.detach(), parts.nll + parts.kl / 400)
    assert parts.kl > 0


def test_dropout_samples_are_vectorised_and_unbiased():
    torch.manual_seed(0)
    head = DropoutHead(32, 2, p=0.5)
    head.eval()
    x = torch.randn(3, 32)
    samples = head.sample_logits(x, 5000)
    assert samples.shape == (5000, 3, 2)
    assert samples.std(0).min() > 0  # masks differ across samples
    torch.testing.assert_close(samples.mean(0), head(x).detach(), atol=0.1, rtol=0)


def test_map_predicts_with_dropout_off_even_from_a_training_head():
    """MAP's predictive is the head's deterministic eval-mode pass: with a dropout head left in
    train mode (as after training), its samples must equal that pass, agree across calls, carry
    zero epistemic uncertainty, and leave the head's mode as it was. A MAP that forgot to switch
    dropout off would give one random mask per call: still K equal copies, but not these."""
    torch.manual_seed(0)
    head = DropoutHead(64, 2, p=0.5)
    x = torch.randn(6, 64)
    head.eval()
    expected = torch.softmax(head(x), dim=-1).detach()
    head.train()
    method = MAP(head, num_train=10)
    with torch.no_grad():  # as evaluation calls it
        first = method.sample(x, 7)
        second = method.sample(x, 7)
    assert first.shape == (7, 6, 2)
    assert head.training  # mode restored
    torch.testing.assert_close(first, expected.expand(7, 6, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    assert float(decompose(first)["epistemic"].max()) < 1e-12


def test_the_head_base_parses_options_and_leaves_heads_that_parse_their_own_alone():
    from bnnkit.model.heads import Head
    from bnnkit.options import Field, OptionsError, PluginOptions

    class Width(PluginOptions):
        width: int = Field(description="required: no default")

    class Forwarding(Head):
        plugin_name = "forwarding"
        Options = Width

        def __init__(self, in_features: int, num_classes: int, **options) -> None:
            super().__init__(in_features, num_classes, **options)

    class OwnParse(Head):  # written before the base parsed options
        Options = Width

        def __init__(self, in_features: int, num_classes: int, **options) -> None:
            super().__init__(in_features, num_classes)
            self.own = self.Options.parse(options, "model.head")

    assert Forwarding(4, 2, width=3).opts.width == 3
    with pytest.raises(
        OptionsError, match=r"model\.head\.size: .*head 'forwarding' accepts: width"
    ):
        Forwarding(4, 2, width=3, size=1)
    with pytest.raises(
        OptionsError,
        match=r"model\.head\.width: expected int",
    ):
        Forwarding(4, 2, width="wide")
    head = OwnParse(4, 2, width=5)
    assert head.own.width == 5 and head.opts is None
