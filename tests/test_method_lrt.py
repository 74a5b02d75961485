"""The ``lrt`` head and method: local reparameterisation against weight-sampling Monte Carlo,
the closed-form KL against a Monte Carlo estimate, the ELBO, and a CLI train + evaluate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import recipe, train_and_evaluate
from torch.distributions import Normal

from bnnkit.errors import UsageError
from bnnkit.metrics.uncertainty import decompose
from bnnkit_plugins.head_lrt import LRTHead
from bnnkit_plugins.method_lrt import LocalReparameterisation

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one torch thread


def _head(d: int = 5, c: int = 3, seed: int = 0, prior_sigma: float = 0.5) -> LRTHead:
    """A head with spread-out posterior means and visibly non-zero posterior std."""
    torch.manual_seed(seed)
    head = LRTHead(d, c, prior_sigma=prior_sigma, posterior_rho_init=-1.0)
    with torch.no_grad():
        head.weight_mu.normal_(0, 0.7)
        head.bias_mu.normal_(0, 0.7)
        head.weight_rho.uniform_(-2.0, 0.0)
        head.bias_rho.uniform_(-2.0, 0.0)
    return head.double()


def _weight_samples(head: LRTHead, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    w_std, b_std = head.posterior_std()
    w = head.weight_mu + w_std * torch.randn(s, *head.weight_mu.shape, dtype=torch.float64)
    b = head.bias_mu + b_std * torch.randn(s, *head.bias_mu.shape, dtype=torch.float64)
    return w.detach(), b.detach()


def test_lrt_moments_match_weight_sampling_monte_carlo():
    head = _head()
    x = torch.randn(4, 5, dtype=torch.float64) * 1.5
    s = 200_000
    w, b = _weight_samples(head, s)
    logits = torch.einsum("bd,scd->sbc", x, w) + b[:, None, :]  # sample weights, not activations
    mean, var = (t.detach() for t in head.moments(x))
    # standard errors of the MC mean and variance (Gaussian: var(s^2) = 2 var^2 / (s - 1))
    se_mean = (var / s).sqrt()
    se_var = var * math.sqrt(2 / (s - 1))
    assert torch.all((logits.mean(0) - mean).abs() < 5 * se_mean)
    assert torch.all((logits.var(0) - var).abs() < 5 * se_var)
    # and the closed form itself: var = x^2 @ sigma_W^2^T + sigma_b^2
    w_std, b_std = head.posterior_std()
    torch.testing.assert_close(var, (x.square() @ w_std.square().T + b_std.square()).detach())


def test_lrt_sampled_logits_have_those_moments():
    head = _head()
    x = torch.randn(3, 5, dtype=torch.float64)
    k = 100_000
    with torch.no_grad():
        samples = head.sample_logits(x, k)
        mean, var = head.moments(x)
    assert samples.shape == (k, 3, 3)
    assert torch.all((samples.mean(0) - mean).abs() < 5 * (var / k).sqrt())
    assert torch.all((samples.var(0) / var - 1).abs() < 5 * math.sqrt(2 / k))
    # the training-mode forward draws from the same Gaussian, one draw per activation
    head.train()
    with torch.no_grad():
        fwd = head(x.repeat(k, 1)).reshape(k, 3, 3)
    assert torch.all((fwd.mean(0) - mean).abs() < 5 * (var / k).sqrt())
    assert torch.all((fwd.var(0) / var - 1).abs() < 5 * math.sqrt(2 / k))


def test_lrt_forward_samples_in_training_and_is_the_mean_in_eval():
    head = _head()
    x = torch.randn(2, 5, dtype=torch.float64)
    head.train()
    assert not torch.equal(head(x), head(x))
    head.eval()
    torch.testing.assert_close(head(x), head.moments(x)[0])


def test_closed_form_kl_matches_monte_carlo():
    head = _head(prior_sigma=0.5)
    s = 200_000
    w, b = _weight_samples(head, s)
    w_std, b_std = (t.detach() for t in head.posterior_std())
    q_w, q_b = Normal(head.weight_mu.detach(), w_std), Normal(head.bias_mu.detach(), b_std)
    prior = Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))
    per_sample = (q_w.log_prob(w) - prior.log_prob(w)).sum((1, 2)) + (
        q_b.log_prob(b) - prior.log_prob(b)
    ).sum(1)
    mc, se = per_sample.mean(), per_sample.std() / math.sqrt(s)
    kl = head.kl().detach()
    assert abs(float(kl - mc)) < 5 * float(se), (float(kl), float(mc), float(se))
    # and torch's own closed form, as a second opinion
    exact = (
        torch.distributions.kl_divergence(q_w, prior).sum()
        + torch.distributions.kl_divergence(q_b, prior).sum()
    )
    torch.testing.assert_close(kl, exact)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    head = LRTHead(4, 2, prior_sigma=0.3).double()
    with torch.no_grad():
        rho = math.log(math.expm1(0.3))  # softplus(rho) = 0.3
        head.weight_mu.zero_()
        head.bias_mu.zero_()
        head.weight_rho.fill_(rho)
        head.bias_rho.fill_(rho)
    assert abs(float(head.kl().detach())) < 1e-10
    with torch.no_grad():
        head.weight_mu[0, 0] = 0.6  # KL grows by mu^2 / (2 p^2) = 2
    torch.testing.assert_close(head.kl().detach(), torch.tensor(2.0, dtype=torch.float64))


def test_bad_prior_sigma_is_a_usage_error():
    with pytest.raises(UsageError, match="prior_sigma"):
        LRTHead(4, 2, prior_sigma=0.0)


def test_elbo_is_nll_plus_kl_over_n():
    torch.manual_seed(0)
    head = LRTHead(6, 2)
    method = LocalReparameterisation(head, num_train=250)
    assert method.kl_weight == 1 / 250
    x, y = torch.randn(8, 6), torch.tensor([0, 1] * 4)
    head.train()
    parts = method.training_loss(x, y)
    torch.testing.assert_close(parts.loss.detach(), parts.nll + head.kl().detach() / 250)
    fixed = LocalReparameterisation(LRTHead(6, 2), num_train=250, kl_weight=0.1, elbo_samples=3)
    assert fixed.kl_weight == 0.1 and fixed.elbo_samples == 3


def test_lrt_learns_and_its_samples_decompose():
    torch.manual_seed(0)
    n = 200
    y = torch.arange(n) % 2
    x = torch.randn(n, 4)
    x[:, 0] += 2.0 * (2 * y - 1)
    head = LRTHead(4, 2, posterior_rho_init=-3.0)
    method = LocalReparameterisation(head, num_train=n)
    opt = method.configure_optimizer(
        [{"params": list(head.parameters())}], optimizer="adam", lr=0.05, weight_decay=0.0
    )
    head.train()
    for _ in range(150):
        opt.zero_grad()
        method.training_loss(x, y).loss.backward()
        opt.step()
    head.eval()
    probs = method.sample(x, 64)
    assert probs.shape == (64, n, 2)
    assert (probs.mean(0).argmax(-1) == y).float().mean() > 0.9
    unc = decompose(probs)
    assert unc["epistemic"].max() > 0  # a real posterior spread, not a point mass
    # far from the data the posterior is wider: more epistemic uncertainty
    far = decompose(method.sample(x[:20] * 20, 256))["epistemic"].mean()
    assert far > unc["epistemic"].mean()
    # posterior std shrank from the prior where the data pins the weight down
    assert F.softplus(head.weight_rho).mean() < 0.1


def test_cli_train_and_evaluate_lrt(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = train_and_evaluate(
        recipe("resnet50_lrt"), tmp_path, data=synth_root, sets={"eval.batch_size": 64}
    )
    meta = result.meta
    assert meta["method"] == "lrt" and meta["complete"] is True
    assert "midjourney" in result.evaluate_output
    metrics = result.metrics
    seen = metrics["seen"]
    assert seen["epistemic_uncertainty"] > 0
    assert "midjourney" in metrics["ood"]
