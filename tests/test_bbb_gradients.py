"""The ``bbb`` head's parameters and ELBO gradient (issue 10, defects 1 and 2).

blitz 0.2.8 wraps ``weight_mu``/``weight_rho`` a second time as ``weight_sampler.mu``/``.rho``
(same storage, distinct ``Parameter`` objects) and refills its noise buffer in place. These tests
check that an optimiser sees each storage once, that the gradient of the ELBO is the one of a
hand-built autograd graph with the same noise, and that state dicts of the old layout still load.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from blitz.modules import BayesianLinear
from torch import Tensor, nn

from bnnkit.run.checkpoint import load_checkpoint, save_checkpoint
from bnnkit_plugins.head_bbb import BBBHead
from bnnkit_plugins.method_bbb import BayesByBackprop

D, C = 5, 3
SIGMA = 0.3

# The state-dict keys the head had before the fix (and still has): blitz's layout.
OLD_KEYS = {
    "layer.weight_mu", "layer.weight_rho", "layer.bias_mu", "layer.bias_rho",
    "layer.weight_sampler.mu", "layer.weight_sampler.rho", "layer.weight_sampler.eps_w",
    "layer.bias_sampler.mu", "layer.bias_sampler.rho", "layer.bias_sampler.eps_w",
}  # fmt: skip


def _head(seed: int = 0, dtype: torch.dtype = torch.float64) -> BBBHead:
    torch.manual_seed(seed)
    head = BBBHead(D, C, prior="gaussian", prior_sigma_1=SIGMA, posterior_rho_init=-1.5)
    return head.to(dtype)


def test_parameters_yield_each_storage_once():
    head = _head(dtype=torch.float32)
    ptrs = [p.untyped_storage().data_ptr() for p in head.parameters()]
    assert len(ptrs) == len(set(ptrs)) == 4
    assert {id(p) for p in head.variational_parameters()} == {id(p) for p in head.parameters()}


def test_conversion_keeps_the_samplers_aliases():
    """``.to(dtype)`` (like ``.to(device)``) converts each Parameter object on its own: blitz's
    distinct alias objects came apart, so training updated one copy and prediction read the
    other."""
    head = _head(dtype=torch.float64)
    layer = head.layer
    for sampler, mu, rho in (
        (layer.weight_sampler, layer.weight_mu, layer.weight_rho),
        (layer.bias_sampler, layer.bias_mu, layer.bias_rho),
    ):
        assert sampler.mu.dtype == torch.float64
        assert sampler.mu.untyped_storage().data_ptr() == mu.untyped_storage().data_ptr()
        assert sampler.rho.untyped_storage().data_ptr() == rho.untyped_storage().data_ptr()
    # a conversion that cannot keep the objects (new Parameters per module key) is re-tied
    meta = BBBHead(D, C).to("meta")
    assert meta.layer.weight_sampler.mu is meta.layer.weight_mu
    assert len(list(meta.parameters())) == 4


def test_zero_gradient_adamw_step_shrinks_by_one_minus_lr_wd():
    """A plain AdamW over ``parameters()`` (the method's optimiser gives these no decay at all,
    see tests/test_weight_decay.py) decays each storage once: 1 - lr*wd, not (1 - lr*wd)^2."""
    head = _head(dtype=torch.float32)
    lr, wd = 0.1, 0.5
    before = head.layer.weight_mu.detach().clone()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
    for p in head.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(head.layer.weight_mu.detach(), before * (1 - lr * wd))


def _storage_grads(head: BBBHead) -> dict[int, Tensor]:
    """Gradient per storage (summed over any aliases), i.e. the first-order update it gets."""
    grads: dict[int, Tensor] = {}
    for p in head.parameters():
        key = p.untyped_storage().data_ptr()
        grads[key] = grads.get(key, 0) + p.grad
    return grads


@pytest.mark.parametrize("samples", [1, 2])
def test_elbo_gradient_matches_a_hand_built_graph(samples):
    head = _head()
    x = torch.randn(4, D, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    method = BayesByBackprop(head, num_train=3, elbo_samples=samples)  # large KL weight 1/3
    torch.manual_seed(7)
    method.training_loss(x, y).loss.backward()
    grads = _storage_grads(head)

    # the same noise: the head draws the weight noise, then the bias noise, once per sample
    torch.manual_seed(7)
    noise = [
        (torch.randn(C, D, dtype=torch.float64), torch.randn(C, dtype=torch.float64))
        for _ in range(samples)
    ]
    leaves = {
        name: getattr(head.layer, name).detach().clone().requires_grad_()
        for name in ("weight_mu", "weight_rho", "bias_mu", "bias_rho")
    }
    mu_w, rho_w, mu_b, rho_b = leaves.values()

    def log_normal(v: Tensor, mean: Tensor | float, std: Tensor | float) -> Tensor:
        std = torch.as_tensor(std, dtype=torch.float64)
        return (-0.5 * math.log(2 * math.pi) - std.log() - (v - mean) ** 2 / (2 * std**2)).sum()

    loss = torch.zeros((), dtype=torch.float64)
    for eps_w, eps_b in noise:
        s_w, s_b = torch.log1p(torch.exp(rho_w)), torch.log1p(torch.exp(rho_b))
        w, b = mu_w + s_w * eps_w, mu_b + s_b * eps_b
        nll = F.cross_entropy(x @ w.T + b, y)
        log_q = log_normal(w, mu_w, s_w) + log_normal(b, mu_b, s_b)
        log_p = log_normal(w, 0.0, SIGMA) + log_normal(b, 0.0, SIGMA)
        loss = loss + nll + (log_q - log_p) / 3
    (loss / samples).backward()

    for name, leaf in leaves.items():
        ours = grads[getattr(head.layer, name).untyped_storage().data_ptr()]
        torch.testing.assert_close(ours, leaf.grad, atol=1e-5, rtol=0, msg=name)
        assert leaf.grad.abs().max() > 1e-3  # a gradient worth comparing


def test_deepcopy_after_a_training_step():
    head = _head()
    method = BayesByBackprop(head, num_train=10, elbo_samples=2)
    method.training_loss(
        torch.randn(3, D, dtype=torch.float64), torch.tensor([0, 1, 2])
    ).loss.backward()
    twin = copy.deepcopy(head)
    ptrs = [p.untyped_storage().data_ptr() for p in twin.parameters()]
    assert len(set(ptrs)) == 4
    torch.testing.assert_close(twin.layer.weight_rho, head.layer.weight_rho)
    assert twin.layer.weight_sampler.rho is twin.layer.weight_rho


class _OldLayout(nn.Module):
    """What the head stored before the fix: a bare blitz layer, aliases and all."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = BayesianLinear(D, C)


def _old_state() -> _OldLayout:
    torch.manual_seed(3)
    old = _OldLayout()
    with torch.no_grad():
        old.layer.weight_rho.fill_(-2.5)
        old.layer.bias_mu.fill_(0.7)
    assert old.layer.weight_sampler.rho.untyped_storage().data_ptr() == (
        old.layer.weight_rho.untyped_storage().data_ptr()
    )
    return old


def test_head_keeps_the_state_dict_keys():
    assert set(BBBHead(D, C).state_dict()) == OLD_KEYS == set(_OldLayout().state_dict())


def test_old_state_dict_loads():
    old = _old_state()
    head = BBBHead(D, C)
    head.load_state_dict(old.state_dict(), strict=True)
    for name in ("weight_mu", "weight_rho", "bias_mu", "bias_rho"):
        torch.testing.assert_close(getattr(head.layer, name), getattr(old.layer, name))
    # the forward samples from the loaded posterior: sigma = softplus(-2.5) ~ 0.079
    x = torch.zeros(1, D)
    draws = torch.stack([head(x) for _ in range(400)]).detach()
    torch.testing.assert_close(draws.mean(), torch.tensor(0.7), atol=0.05, rtol=0)
    predictive = head.sample_logits(x, 400).mean()
    torch.testing.assert_close(predictive, torch.tensor(0.7), atol=0.05, rtol=0)


def test_old_checkpoint_file_loads_and_new_one_saves(tmp_path):
    old = _old_state()
    (tmp_path / "old").mkdir()
    save_checkpoint(tmp_path / "old", old, {}, {"epoch": 1}, tag="e1")  # the unchanged writer
    head = BBBHead(D, C)
    load_checkpoint(tmp_path / "old", head)
    torch.testing.assert_close(head.layer.weight_rho, old.layer.weight_rho)
    assert head.layer.weight_sampler.rho is head.layer.weight_rho
    # and the fixed head saves and reloads through the same writer
    (tmp_path / "new").mkdir()
    with torch.no_grad():
        head.layer.weight_mu.fill_(0.25)
    save_checkpoint(tmp_path / "new", head, {}, {"epoch": 2}, tag="e2")
    fresh = BBBHead(D, C)
    load_checkpoint(tmp_path / "new", fresh)
    torch.testing.assert_close(fresh.layer.weight_mu, torch.full((C, D), 0.25))
    assert len({p.untyped_storage().data_ptr() for p in fresh.parameters()}) == 4
