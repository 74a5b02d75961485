"""Weight decay never reaches variational parameters (issue 10, defect 8), and everything else
(MAP heads, ensemble members, the backbone in a joint fine-tune) keeps the recipe's decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnkit.methods.base import InferenceMethod
from bnnkit_plugins.head_bbb import BBBHead
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.head_lrt import LRTHead
from bnnkit_plugins.method_bbb import BayesByBackprop
from bnnkit_plugins.method_ensemble import BootstrapEnsemble
from bnnkit_plugins.method_lrt import LocalReparameterisation
from bnnkit_plugins.method_map import MAP

D, C = 6, 2
LR, BODY_LR, WD = 0.1, 0.01, 0.5


def _groups(head: nn.Module, body: nn.Module) -> list[dict]:
    """The trainer's groups in a joint fine-tune: the head's, then the backbone's own lr."""
    return [{"params": list(head.parameters())}, {"params": list(body.parameters()), "lr": BODY_LR}]


def _decay_of(opt: torch.optim.Optimizer) -> dict[int, float]:
    out: dict[int, float] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            assert id(p) not in out, "a parameter is in two groups"
            out[id(p)] = group["weight_decay"]
    return out


def _zero_grad_step(opt: torch.optim.Optimizer) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize(
    ("head_cls", "method_cls"), [(BBBHead, BayesByBackprop), (LRTHead, LocalReparameterisation)]
)
def test_variational_parameters_get_no_decay(head_cls, method_cls, optimizer):
    torch.manual_seed(0)
    head, body = head_cls(D, C), nn.Linear(3, D)
    method = method_cls(head, num_train=10)
    opt = method.configure_optimizer(
        _groups(head, body), optimizer=optimizer, lr=LR, weight_decay=WD
    )
    decay = _decay_of(opt)
    owner = head.layer if isinstance(head, BBBHead) else head
    variational = [getattr(owner, f"{a}_{b}") for a in ("weight", "bias") for b in ("mu", "rho")]
    assert [decay[id(p)] for p in variational] == [0.0] * 4
    assert all(decay[id(p)] == WD for p in body.parameters())
    assert {id(p) for p in head.variational_parameters()} == {id(p) for p in variational}
    (body_group,) = [g for g in opt.param_groups if g["params"][0] is body.weight]
    assert body_group["lr"] == BODY_LR
    if optimizer == "adamw":
        before = [p.detach().clone() for p in variational]
        body_before = body.weight.detach().clone()
        _zero_grad_step(opt)
        for p, b in zip(variational, before, strict=True):
            torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)  # mu, rho untouched
        torch.testing.assert_close(body.weight.detach(), body_before * (1 - BODY_LR * WD))


def test_map_head_and_backbone_keep_their_decay():
    torch.manual_seed(0)
    head, body = LinearHead(D, C), nn.Linear(3, D)
    opt = MAP(head, num_train=10).configure_optimizer(
        _groups(head, body), optimizer="adamw", lr=LR, weight_decay=WD
    )
    assert len(opt.param_groups) == 2  # unchanged layout: old optimiser states still load
    assert set(_decay_of(opt).values()) == {WD}
    before = head.linear.weight.detach().clone()
    _zero_grad_step(opt)
    torch.testing.assert_close(head.linear.weight.detach(), before * (1 - LR * WD))


def test_ensemble_members_keep_their_decay():
    torch.manual_seed(0)
    head = LinearHead(D, C)
    method = BootstrapEnsemble(head, num_train=10, members=3)
    opt = method.configure_optimizer(
        [{"params": list(head.parameters())}], optimizer="adamw", lr=LR, weight_decay=WD
    )
    decay = _decay_of(opt)
    assert all(decay[id(p)] == WD for p in method.members.parameters())


def test_split_keeps_group_options_and_order():
    from bnnkit.methods.base import split_weight_decay

    a, b, v = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    groups = [{"params": [a, v], "lr": 0.3, "weight_decay": 0.2}, {"params": [b]}]
    out = split_weight_decay(groups, [v])
    assert [[id(p) for p in g["params"]] for g in out] == [[id(a)], [id(v)], [id(b)]]
    assert [g.get("weight_decay") for g in out] == [0.2, 0.0, None]
    assert [g.get("lr") for g in out] == [0.3, 0.3, None]
    assert split_weight_decay(groups, []) == [{**g, "params": list(g["params"])} for g in groups]


def test_base_method_without_variational_head():
    head = LinearHead(D, C)
    opt = InferenceMethod(head, num_train=5).configure_optimizer(
        [{"params": list(head.parameters())}], optimizer="sgd", lr=LR, weight_decay=WD
    )
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == WD
