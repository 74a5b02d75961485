"""Tests of the ``kflaplace`` method: its sampler against laplace-torch, the prior at evaluation
time, the predictive off the data, persistence, and a CLI train + evaluate on synthetic data."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from helpers import invoke, recipe, train_and_evaluate, two_blobs
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnnkit.metrics.uncertainty import decompose
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.method_kflaplace import KFLaplace

N, D, C = 240, 4, 2


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return two_blobs(N, D, seed)


def _map_method(**options) -> tuple[KFLaplace, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = _data()
    method = KFLaplace(LinearHead(D, C), num_train=N, **options)
    opt = method.configure_optimizer(
        [{"params": list(method.head.parameters())}], optimizer="adam", lr=0.05, weight_decay=0.0
    )
    for _ in range(300):
        opt.zero_grad()
        method.training_loss(x, y).loss.backward()
        opt.step()
    return method, x, y


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one torch thread


@pytest.fixture(scope="module")
def fitted() -> tuple[KFLaplace, torch.Tensor, torch.Tensor]:
    method, x, y = _map_method()
    method.after_training(x, y)
    return method, x, y


def _laplace_torch(method: KFLaplace, x, y, prior: list[float]):
    """laplace-torch's own KronLaplace on the same head, at the given prior precision."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from laplace import Laplace

        la = Laplace(
            nn.Sequential(method.linear), "classification", "all", hessian_structure="kron"
        )
        la.fit(DataLoader(TensorDataset(x, y), batch_size=64))
    la.prior_precision = torch.tensor(prior)
    return la


def test_marglik_tunes_the_prior(fitted):
    method, _, _ = fitted
    meta = method.extra_meta()
    assert meta["prior_precision_source"] == "marglik"
    assert meta["n_data"] == N
    (prior,) = meta["prior_precision"]
    # tuned away from laplace-torch's initial value 1.0
    assert prior > 0 and abs(prior - 1.0) > 1e-3


def test_covariance_matches_laplace_torch(fitted):
    method, x, y = fitted
    la = _laplace_torch(method, x, y, method.prior_precision)
    reference = la.posterior_precision.to_matrix(exponent=-1).double()
    ours = method.posterior.covariance()
    assert ours.shape == (D * C + C, D * C + C)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    # and the sampler draws from it: empirical covariance of our weight/bias draws
    gen = torch.Generator().manual_seed(1)
    k = 60_000
    dw, db = method.posterior.sample(k, dtype=torch.float64, generator=gen)
    flat = torch.cat([dw.reshape(k, -1), db], dim=1)  # [vec_rowmajor(W), b], laplace's order
    empirical = flat.T @ flat / k
    scale = reference.diagonal().max()
    assert (empirical - reference).abs().max() < 0.03 * scale
    assert flat.mean(0).abs().max() < 0.03 * scale.sqrt()


def test_predictive_matches_laplace_torch_sampling(fitted):
    method, x, y = fitted
    la = _laplace_torch(method, x, y, method.prior_precision)
    points = torch.tensor([[0.0, 0, 0, 0], [0.5, 1, -1, 0], [3.0, -2, 2, 1], [-4.0, 3, 0, -3]])
    torch.manual_seed(2)
    ours = method.sample(points, 20_000).mean(0)
    reference = la.predictive_samples(points, pred_type="nn", n_samples=20_000).mean(0)
    torch.testing.assert_close(ours, reference.float(), atol=0.02, rtol=0)


def test_less_confident_than_map_off_the_data(fitted):
    method, x, _ = fitted
    g = torch.Generator().manual_seed(3)
    directions = torch.nn.functional.normalize(torch.randn(64, D, generator=g), dim=1)
    far = 25.0 * directions  # the data lie within a few units of the origin
    with torch.no_grad():
        p_map = torch.softmax(method.linear(far), -1).amax(-1)
        torch.manual_seed(4)
        probs = method.sample(far, 200)
    p_laplace = probs.mean(0).amax(-1)
    # never more confident; strictly less wherever float32 has not rounded the MAP to 1
    assert bool((p_laplace <= p_map + 1e-6).all())
    unsaturated = p_map < 0.9999
    assert int(unsaturated.sum()) >= 8
    assert bool((p_laplace[unsaturated] < p_map[unsaturated]).all())
    assert float((p_map - p_laplace).mean()) > 0.02
    # epistemic uncertainty grows away from the data
    torch.manual_seed(4)
    near = decompose(method.sample(x[:64], 200))["epistemic"]
    assert float(decompose(probs)["epistemic"].mean()) > 2 * float(near.mean())


def test_samples_decompose(fitted):
    method, x, _ = fitted
    torch.manual_seed(5)
    probs = method.sample(torch.cat([x[:16], 10 * x[:16]]), 64)
    assert probs.shape == (64, 32, C)
    torch.testing.assert_close(probs.sum(-1), torch.ones(64, 32))
    unc = decompose(probs)
    assert float(unc["epistemic"].max()) > 0


def test_prior_changes_spread_without_refit(fitted):
    method, x, _ = fitted
    factors = {k: v.clone() for k, v in method.extra_state().items()}
    tuned = method.prior_precision
    points = 5 * x[:32]

    def spread(prior: float) -> float:
        """Mean over points of the std over samples of the log-odds log p(1) - log p(0)."""
        method.set_prior_precision(prior)
        torch.manual_seed(6)
        log_odds = method.sample(points, 256).log().diff(dim=-1)
        return float(log_odds.std(0).mean())

    try:
        spreads = [spread(p) for p in (0.01, 1.0, 100.0, 10_000.0)]
    finally:
        method.set_prior_precision(tuned)
    assert spreads == sorted(spreads, reverse=True)
    assert spreads[0] > 5 * spreads[-1]
    for key, value in method.extra_state().items():
        assert torch.equal(value, factors[key])  # the factors were not refitted


def test_sample_before_fit_is_the_map():
    method, x, _ = _map_method()
    probs = method.sample(x[:8], 5)
    expected = torch.softmax(method.linear(x[:8]), -1)
    assert probs.shape == (5, 8, C)
    torch.testing.assert_close(probs, expected.expand(5, 8, C))
    assert method.extra_state() == {} and method.extra_meta() == {}


def test_extra_state_roundtrip_and_prior_override(fitted):
    method, x, _ = fitted
    state = {k: v.clone() for k, v in method.extra_state().items()}
    meta = json.loads(json.dumps(method.extra_meta()))  # what checkpoint.json would hold
    assert set(state) == {"kron_G", "kron_A", "kron_G_bias"}
    assert state["kron_G"].shape == (C, C) and state["kron_A"].shape == (D, D)

    restored = KFLaplace(method.head, num_train=N)
    restored.load_extra_state(state)
    restored.load_extra_meta(meta)
    assert restored.prior_precision == pytest.approx(method.prior_precision)
    torch.manual_seed(7)
    a = method.sample(x[:8], 16)
    torch.manual_seed(7)
    b = restored.sample(x[:8], 16)
    torch.testing.assert_close(a, b)

    # a number in the (run's) recipe replaces the saved prior at load time
    override = KFLaplace(method.head, num_train=N, prior_precision=5.0)
    override.load_extra_state(state)
    override.load_extra_meta(meta)
    assert override.prior_precision == [5.0]


def test_fixed_prior_from_recipe_skips_marglik():
    method, x, y = _map_method(prior_precision=3.0)
    method.after_training(x, y)
    assert method.prior_precision == [3.0]
    assert method.extra_meta()["prior_precision_source"] == "recipe"


@pytest.mark.parametrize("bad", ["auto", -1.0, 0.0, True])
def test_bad_prior_option(bad):
    with pytest.raises(ValueError, match="prior_precision"):
        KFLaplace(LinearHead(D, C), num_train=N, prior_precision=bad)


def test_bad_state_is_refused(fitted):
    method, _, _ = fitted
    fresh = KFLaplace(LinearHead(D + 1, C), num_train=N)
    with pytest.raises(ValueError, match="do not fit"):
        fresh.load_extra_state(method.extra_state())


# -- through the CLI -----------------------------------------------------------------------------
def test_cli_train_evaluate_and_change_prior(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything relative stays in tmp
    result = train_and_evaluate(
        recipe("resnet50_kflaplace"),
        tmp_path,
        data=synth_root,
        sets={"eval.batch_size": 64},
        evaluate_args=(),
    )
    run, meta = result.run, result.meta
    assert meta["method"] == "kflaplace"
    assert meta["method_meta"]["prior_precision_source"] == "marglik"
    assert "unseen generator: midjourney" in result.evaluate_output
    metrics = result.metrics
    assert metrics["method"] == "kflaplace"
    first = metrics["seen"]["epistemic_uncertainty"]
    assert first > 0

    # a new prior at evaluation time: edit the run's recipe, evaluate again, no refit
    text = (run / "recipe.toml").read_text()
    text, n = re.subn(r'prior_precision = "marglik"', "prior_precision = 0.001", text)
    assert n == 1
    (run / "recipe.toml").write_text(text)
    invoke(["evaluate", str(run)])
    second = json.loads((run / "metrics.json").read_text())["seen"]["epistemic_uncertainty"]
    assert second > first  # a weaker prior, a wider posterior
