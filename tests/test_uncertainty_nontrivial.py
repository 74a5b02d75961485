"""Every Bayesian method's predictive really is spread, MAP's really is not.

``epistemic >= 0`` and ``total == aleatoric + epistemic`` hold for any ``probs`` (epistemic is
the clamped difference), so they cannot catch a method whose K samples are one draw copied, an
SG-MCMC chain that kept no sample, identical ensemble members or a Laplace fit that predicts
with the mode. These checks can: each built-in method, trained through its own API on tiny
frozen features (as ``train.backbone = "frozen"`` does), must give K samples that differ and
a clearly positive epistemic part on far-away inputs, larger than on the training data
(except MC-dropout, whose spread is set by its rate).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from bnnkit.methods.base import InferenceMethod
from bnnkit.methods.sgmcmc import SGMCMCMethod
from bnnkit.metrics.uncertainty import decompose
from bnnkit.plugins import get_registry

BAYESIAN = [
    "bbb", "lrt", "mcdropout", "sgld", "psgld", "sghmc", "kflaplace", "ensemble", "sngp", "gp",
]  # fmt: skip
ALIASES = {"vi": "bbb"}
#: training-free methods score backbone perturbations, not a head on given features: their spread
#: is checked in tests/test_training_free.py
TRAINING_FREE = {"wepe", "rigid"}
D, N, K = 8, 128, 32
# MC-dropout's spread comes from a fixed rate, not from the data: it does not shrink near the
# training features (dropping feature 0 leaves a near-coin flip there too)
SHRINKS_NEAR_DATA = set(BAYESIAN) - {"mcdropout"}


def _data() -> tuple[Tensor, Tensor, Tensor]:
    """Two overlapping Gaussian blobs along feature 0 (train features, labels; Bayes accuracy
    93 %, so the MAP is finite), and far-away inputs: 4x the data's norm, in the directions the
    labels say nothing about (feature 0 is 0), where a posterior stays wide and a point
    estimate is as confident as anywhere."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(N) % 2
    x = 0.5 * torch.randn(N, D, generator=g)
    x[:, 0] = 1.5 * (2 * y - 1) + torch.randn(N, generator=g)
    far = torch.randn(64, D, generator=g)
    far[:, 0] = 0.0
    far = 4 * x.norm(dim=1).mean() * far / far.norm(dim=1, keepdim=True)
    return x, y, far


def _epochs(
    method: InferenceMethod, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, epochs: int,
    batch_size: int = 16,
) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(0)
    step = 0
    method.head.train()
    for epoch in range(1, epochs + 1):
        for ib in torch.randperm(N, generator=g).split(batch_size):
            parts = method.training_loss(x[ib], y[ib], ib)
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            opt.step()
            step += 1
            method.after_step(step)
        method.after_epoch(epoch)


def _train(name: str, x: Tensor, y: Tensor, epochs: int = 10, lr: float = 0.05) -> InferenceMethod:
    """The trainer's head-only phase on cached features, then ``after_training``. SG-MCMC chains
    start from a MAP fit of the head, as after the trainer's ``finetune-map`` phase."""
    torch.manual_seed(0)
    registry = get_registry()
    cls = registry.get("method", name).obj
    head = registry.get("head", cls.default_head).obj(D, 2)
    method: InferenceMethod = cls(head, num_train=N)
    adamw = {"optimizer": "adamw", "lr": lr, "weight_decay": 0.0}
    if isinstance(method, SGMCMCMethod):
        warm = InferenceMethod(head, num_train=N)
        _epochs(warm, warm.configure_optimizer([{"params": list(head.parameters())}], **adamw),
                x, y, epochs)  # fmt: skip
    opt = method.configure_optimizer([{"params": list(head.parameters())}], **adamw)
    _epochs(method, opt, x, y, epochs)
    if method.needs_train_features:
        method.after_training(x, y)
    else:
        method.after_training(None, None)
    head.eval()
    return method


@pytest.fixture(scope="module")
def data() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only wait on each other
    yield _data()
    torch.set_num_threads(threads)


def test_the_lists_cover_every_builtin_method():
    registry = get_registry()
    entries = registry.entries["method"]
    builtins = {name for name, entry in entries.items() if entry.package == "bnnkit"}
    assert builtins == {*BAYESIAN, "map", *ALIASES, *TRAINING_FREE}
    for alias, name in ALIASES.items():
        assert registry.get("method", alias).obj is registry.get("method", name).obj


@pytest.mark.parametrize("name", BAYESIAN)
def test_bayesian_samples_differ_and_epistemic_grows_off_data(name, data):
    x, y, far = data
    method = _train(name, x, y)
    torch.manual_seed(1)
    with torch.no_grad():
        near_probs = method.sample(x, K)
        far_probs = method.sample(far, K)
    # K samples (an ensemble may return its M members instead, each once)
    assert far_probs.shape[0] > 1 and far_probs.shape[1:] == (far.shape[0], 2)
    # the fit is real: the predictive mean separates the two blobs
    accuracy = (near_probs.mean(0).argmax(-1) == y).float().mean()
    assert accuracy > 0.85, f"{name}: accuracy {accuracy:.2f}"
    # K samples, not one copied K times: p(fake) varies across samples on far inputs
    spread = far_probs[..., 1].std(0)
    assert float((spread > 1e-6).float().mean()) > 0.9, f"{name}: samples do not differ"
    assert float(spread.max()) > 0.05, f"{name}: samples hardly differ"
    near = decompose(near_probs)["epistemic"]
    far_epi = decompose(far_probs)["epistemic"]
    assert float(far_epi.mean()) > 0.01, f"{name}: far epistemic {float(far_epi.mean()):.2e}"
    if name in SHRINKS_NEAR_DATA:
        assert float(far_epi.mean()) > 1.5 * float(near.mean()), (
            f"{name}: epistemic far {float(far_epi.mean()):.3g} vs near {float(near.mean()):.3g}"
        )


def test_map_has_exactly_zero_epistemic_everywhere(data):
    x, y, far = data
    method = _train("map", x, y)
    with torch.no_grad():
        probs = method.sample(torch.cat([x, far]), K)
    assert torch.equal(probs, probs[:1].expand_as(probs))  # K identical passes
    assert float(decompose(probs)["epistemic"].max()) < 1e-12
