"""The ``bbb`` head's priors (gaussian, scale_mixture, laplace): exact log-densities, an unbiased
one-sample KL, selection from the recipe, and a CLI train + evaluate with a non-default prior."""

from __future__ import annotations

import math

import pytest
import torch
from blitz.modules.weight_sampler import PriorWeightDistribution
from helpers import QUICKSTART, recipe, train_and_evaluate
from torch.distributions import Laplace, Normal

from bnnkit.errors import UsageError
from bnnkit.metrics.uncertainty import decompose
from bnnkit_plugins.head_bbb import BBBHead, ExactPrior
from bnnkit_plugins.method_bbb import BayesByBackprop

PRIORS = ("gaussian", "scale_mixture", "laplace")
OPTS = {"sigma_1": 0.3, "sigma_2": 0.02, "pi": 0.6, "b": 0.2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one torch thread


def _formula(kind: str, w: list[float]) -> list[float]:
    """Each prior's log-density written out by hand (float64, plain math)."""

    def log_normal(x: float, s: float) -> float:
        return -0.5 * math.log(2 * math.pi * s * s) - x * x / (2 * s * s)

    out = []
    for x in w:
        if kind == "gaussian":
            out.append(log_normal(x, OPTS["sigma_1"]))
        elif kind == "laplace":
            out.append(-math.log(2 * OPTS["b"]) - abs(x) / OPTS["b"])
        else:
            pi = OPTS["pi"]
            a = math.log(pi) + log_normal(x, OPTS["sigma_1"])
            b = math.log(1 - pi) + log_normal(x, OPTS["sigma_2"])
            m = max(a, b)
            out.append(m + math.log(math.exp(a - m) + math.exp(b - m)))
    return out


@pytest.mark.parametrize("kind", PRIORS)
def test_prior_log_prob_matches_the_formula(kind):
    prior = ExactPrior(kind, **OPTS)
    w = torch.tensor([-2.0, -0.5, -0.03, 0.0, 0.01, 0.2, 0.9, 4.0], dtype=torch.float64)
    ours = prior.log_prob(w)
    torch.testing.assert_close(ours, torch.tensor(_formula(kind, w.tolist()), dtype=torch.float64))
    torch.testing.assert_close(prior.log_prior(w), ours.sum())
    if kind == "gaussian":
        torch.testing.assert_close(ours, Normal(0.0, OPTS["sigma_1"]).log_prob(w))
    if kind == "laplace":
        torch.testing.assert_close(ours, Laplace(0.0, OPTS["b"]).log_prob(w))
    # a density: integrates to 1 (trapezoid on a fine grid)
    grid = torch.linspace(-6, 6, 200_001, dtype=torch.float64)
    assert abs(float(torch.trapezoid(prior.log_prob(grid).exp(), grid)) - 1) < 1e-4


def test_priors_agree_with_blitz_in_the_bulk_but_not_its_floored_tails():
    """blitz's log_prior is sum(log(p(w) + 1e-6) - 0.5): same as ours (minus 0.5 per weight) for
    typical weights; in the tails it floors the density, and the prior's pull vanishes."""
    w = torch.tensor([-0.2, 0.05, 0.1], dtype=torch.float64)
    ours = ExactPrior("laplace", **OPTS)
    blitz = PriorWeightDistribution(dist=Laplace(0.0, OPTS["b"]))
    torch.testing.assert_close(blitz.log_prior(w), ours.log_prior(w) - 0.5 * 3, rtol=1e-5, atol=0)
    tail = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    exact = ours.log_prior(tail)
    assert float(exact.detach()) == pytest.approx(-math.log(2 * OPTS["b"]) - 5.0 / OPTS["b"])
    assert float(blitz.log_prior(tail.detach())) > float(exact.detach()) + 5  # floored at log(1e-6)
    (grad,) = torch.autograd.grad(exact, tail)
    assert float(grad) == pytest.approx(-1 / OPTS["b"])  # the prior still pulls the weight back


def _head(kind: str, rho: float = -1.5) -> BBBHead:
    torch.manual_seed(0)
    head = BBBHead(
        3, 2, prior=kind, prior_sigma_1=OPTS["sigma_1"], prior_sigma_2=OPTS["sigma_2"],
        prior_pi=OPTS["pi"], prior_b=OPTS["b"], posterior_rho_init=rho,
    )  # fmt: skip
    return head.double()


@pytest.mark.parametrize("kind", PRIORS)
def test_head_uses_the_selected_prior(kind):
    head = _head(kind)
    x = torch.randn(4, 3, dtype=torch.float64)
    logits = head(x)
    w, b = (t.detach() for t in head.last_sample())
    torch.testing.assert_close(logits.detach(), x @ w.T + b)  # the KL's sample is the forward's
    expected = sum(_formula(kind, w.flatten().tolist())) + sum(_formula(kind, b.tolist()))
    assert float(head.log_prior(w, b)) == pytest.approx(expected, rel=1e-9)
    # log q is the exact Gaussian density of the weights drawn in that forward
    w_std, b_std = (t.detach() for t in head.posterior_std())
    log_q = (
        Normal(head.layer.weight_mu.detach(), w_std).log_prob(w).sum()
        + Normal(head.layer.bias_mu.detach(), b_std).log_prob(b).sum()
    )
    torch.testing.assert_close(head.kl().detach(), log_q - expected)


@pytest.mark.parametrize("kind", PRIORS)
def test_one_sample_kl_is_unbiased(kind):
    """The mean of the head's one-sample KL estimates matches KL(q || p): in closed form for the
    Gaussian prior, by an independent float64 Monte Carlo estimate for the others."""
    head = _head(kind)
    x = torch.randn(1, 3, dtype=torch.float64)
    draws = 1000
    with torch.no_grad():
        est = torch.stack([(head(x), head.kl())[1] for _ in range(draws)])
    w_std, b_std = (t.detach() for t in head.posterior_std())
    mu = torch.cat([head.layer.weight_mu.detach().flatten(), head.layer.bias_mu.detach()])
    std = torch.cat([w_std.flatten(), b_std])
    q = Normal(mu, std)
    if kind == "gaussian":
        s1 = OPTS["sigma_1"]
        truth = float((math.log(s1) - std.log() + (std**2 + mu**2) / (2 * s1 * s1) - 0.5).sum())
    else:
        z = q.sample((100_000,))
        truth = float((q.log_prob(z) - ExactPrior(kind, **OPTS).log_prob(z)).sum(1).mean())
    se = float(est.std()) / math.sqrt(draws)
    assert abs(float(est.mean()) - truth) < 5 * se + 1e-3, (float(est.mean()), truth, se)


def test_priors_give_different_kl_for_the_same_posterior():
    kls = {}
    for kind in PRIORS:
        head = _head(kind)
        torch.manual_seed(1)
        head(torch.randn(2, 3, dtype=torch.float64))
        kls[kind] = float(head.kl().detach())
    assert len({round(v, 6) for v in kls.values()}) == 3


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"prior": "cauchy"}, "unknown prior"),
        ({"prior": "laplace", "prior_b": 0.0}, "prior_b"),
        ({"prior": "scale_mixture", "prior_pi": 1.5}, "prior_pi"),
        ({"prior_sigma_1": -1.0}, "prior_sigma_1"),
    ],
)
def test_bad_prior_options_are_usage_errors(opts, match):
    with pytest.raises(UsageError, match=match):
        BBBHead(4, 2, **opts)


@pytest.mark.parametrize("kind", PRIORS)
def test_prior_is_selectable_in_the_recipe(kind):
    from bnnkit.engine.build import build
    from bnnkit.recipe import load_recipe

    recipe = load_recipe(QUICKSTART, [f'model.head.prior="{kind}"'])
    detector, method = build(recipe, num_train=100)
    assert detector.head.prior.kind == kind
    assert method.kl_weight == 1 / 100


@pytest.mark.parametrize("kind", PRIORS)
def test_bbb_samples_decompose(kind):
    head = _head(kind).float()
    method = BayesByBackprop(head, num_train=50, elbo_samples=2)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0])
    parts = method.training_loss(x, y)
    assert torch.isfinite(parts.loss) and parts.kl.abs() > 0
    probs = method.sample(x, 32)
    assert probs.shape == (32, 6, 2)
    unc = decompose(probs)
    assert unc["epistemic"].max() > 0


def test_cli_train_and_evaluate_with_laplace_prior(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = {
        "train.backbone": '"frozen"', "model.head.prior": '"laplace"', "model.head.prior_b": 0.1,
        "eval.batch_size": 64,
    }  # fmt: skip
    result = train_and_evaluate(recipe("resnet50_bbb"), tmp_path, data=synth_root, sets=sets)
    run = result.run
    assert 'prior = "laplace"' in (run / "recipe.toml").read_text()
    metrics = result.metrics
    assert metrics["seen"]["epistemic_uncertainty"] > 0
    assert "midjourney" in metrics["ood"]
