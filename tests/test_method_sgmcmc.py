"""SG-MCMC (``sgld``, ``psgld``, ``sghmc``): the samplers against a conjugate Gaussian posterior,
the store of kept samples, vectorised prediction, persistence, and CLI train + evaluate. The
posterior spread against a Laplace reference from N = 10^3 to 10^6 is in test_sgmcmc_scaling.py,
one chain under torchrun in test_sgmcmc_distributed.py."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from helpers import recipe, train_and_evaluate

from bnnkit.engine.build import load_run
from bnnkit.methods.sgmcmc import (
    PSGLD,
    SGHMC,
    SGLD,
    SampleStore,
    batched_logits,
    pick,
)
from bnnkit.metrics.uncertainty import decompose
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.method_sghmc import StochasticGradientHMC
from bnnkit_plugins.method_sgld import PreconditionedLangevin, StochasticGradientLangevin

METHODS = {
    "sgld": StochasticGradientLangevin,
    "psgld": PreconditionedLangevin,
    "sghmc": StochasticGradientHMC,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one torch thread


# -- a conjugate problem: Bayesian linear regression with known noise ---------------------------
N, S_NOISE, SIGMA0 = 100, 1.0, 0.3


def _regression():
    """y = X w + noise, prior w ~ N(0, SIGMA0^2 I): the posterior is Gaussian with precision
    H = X^T X / s^2 + I / SIGMA0^2 and mean H^-1 X^T y / s^2 (correlated, so a sampler must
    get the covariance right, not only the marginals)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64) @ mix
    y = x @ torch.tensor([0.7, -0.4], dtype=torch.float64)
    y = y + S_NOISE * torch.randn(N, generator=g, dtype=torch.float64)
    precision = x.T @ x / S_NOISE**2 + torch.eye(2, dtype=torch.float64) / SIGMA0**2
    cov = torch.linalg.inv(precision)
    return x, y, cov @ x.T @ y / S_NOISE**2, cov


def _chains(sampler_cls, *, lr, steps, burn, batch=None, chains=200, **kw):
    """Run ``chains`` independent chains (one parameter tensor, rows independent); the gradient
    of the batch's mean NLL is written into ``.grad`` as ``loss.backward()`` would."""
    x, y, mean, cov = _regression()
    torch.manual_seed(1)
    w = torch.zeros(chains, 2, dtype=torch.float64, requires_grad=True)
    opt = sampler_cls([w], lr=lr, num_data=N, prior_sigma=SIGMA0, **kw)
    xtx, xty = x.T @ x, x.T @ y
    kept = torch.empty(steps - burn, chains, 2, dtype=torch.float64)
    for t in range(steps):
        if isinstance(opt, SGHMC):
            opt.adapting = t < burn
        with torch.no_grad():
            if batch is None:  # full batch
                grad = (w @ xtx - xty) / (N * S_NOISE**2)
            else:  # each chain its own minibatch
                idx = torch.randint(0, N, (chains, batch))
                xb, yb = x[idx], y[idx]
                resid = (xb * w[:, None, :]).sum(-1) - yb
                grad = (xb * resid[..., None]).mean(1) / S_NOISE**2
        w.grad = grad
        opt.step()
        if isinstance(opt, SGHMC) and (t + 1) % 50 == 0:
            opt.resample_momentum()
        if t >= burn:
            kept[t - burn] = w.detach()
    flat = kept.reshape(-1, 2)
    return flat.mean(0), torch.cov(flat.T), mean, cov


def _check(sample_mean, sample_cov, mean, cov, *, mean_tol, var_tol, corr_tol):
    std = cov.diag().sqrt()
    mean_err = ((sample_mean - mean) / std).abs().max().item()
    var_ratio = sample_cov.diag() / cov.diag()
    corr = sample_cov[0, 1] / sample_cov.diag().prod().sqrt()
    true_corr = cov[0, 1] / cov.diag().prod().sqrt()
    assert mean_err < mean_tol, f"mean off by {mean_err:.3f} posterior std"
    assert torch.all((var_ratio - 1).abs() < var_tol), f"variance ratio {var_ratio.tolist()}"
    assert abs(corr - true_corr) < corr_tol, f"correlation {corr:.3f} vs {true_corr:.3f}"


def test_conjugate_problem_discriminates():
    """Sanity of the test itself: dropping the prior or the N-scaling moves the answer far."""
    x, y, mean, cov = _regression()
    no_prior = torch.linalg.solve(x.T @ x, x.T @ y)
    assert ((no_prior - mean) / cov.diag().sqrt()).abs().max() > 1.0
    unscaled = torch.linalg.inv(x.T @ x / N + torch.eye(2, dtype=torch.float64) / SIGMA0**2)
    assert torch.all(unscaled.diag() / cov.diag() > 2.5)


def test_sgld_recovers_the_posterior_full_batch():
    m, c, mean, cov = _chains(SGLD, lr=3e-4, steps=2500, burn=500)
    _check(m, c, mean, cov, mean_tol=0.15, var_tol=0.1, corr_tol=0.05)


def test_sgld_recovers_the_posterior_with_minibatches():
    m, c, mean, cov = _chains(SGLD, lr=3e-4, steps=2500, burn=500, batch=50)
    _check(m, c, mean, cov, mean_tol=0.15, var_tol=0.15, corr_tol=0.05)


def test_psgld_recovers_the_posterior():
    m, c, mean, cov = _chains(PSGLD, lr=3e-4, steps=2500, burn=500, batch=50)
    _check(m, c, mean, cov, mean_tol=0.2, var_tol=0.25, corr_tol=0.1)


@pytest.mark.parametrize(("adaptation", "batch"), [("ema", None), ("ema", 20), ("window", 20)])
def test_sghmc_recovers_the_posterior(adaptation, batch):
    m, c, mean, cov = _chains(
        SGHMC, lr=0.02, steps=2500, burn=1000, batch=batch, adaptation=adaptation
    )
    _check(m, c, mean, cov, mean_tol=0.2, var_tol=0.25, corr_tol=0.1)


def test_sampler_arguments_are_checked():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="step size"):
        SGLD(p, lr=0.0, num_data=10, prior_sigma=1.0)
    with pytest.raises(ValueError, match="prior_sigma"):
        PSGLD(p, lr=1e-3, num_data=10, prior_sigma=0.0)
    with pytest.raises(ValueError, match="adaptation"):
        SGHMC(p, lr=1e-2, num_data=10, prior_sigma=1.0, adaptation="magic")


# -- the store and vectorised prediction ---------------------------------------------------------
def test_store_keeps_after_burn_in_thinned_and_capped():
    store = SampleStore(burn_in=10, thin=2, max_samples=8)
    p = torch.zeros(3)
    kept = []
    for step in range(1, 200):
        p.fill_(step)
        if store.offer(step, [p]):
            kept.append(step)
    assert kept[0] == 12  # the first kept step: burn-in + thin
    rows, buffered = store.buffer()
    assert 8 <= len(buffered) <= 16 and rows.shape == (len(buffered), 3)
    gaps = {b - a for a, b in zip(buffered, buffered[1:], strict=False)}
    assert gaps == {store.thin} and store.thin > 2 and store.thin % 2 == 0  # doubled
    assert buffered[-1] > 199 - store.thin  # spread over the whole chain, not only its start
    samples, steps = store.samples(), store.steps()
    assert samples.shape == (8, 3) and len(store) == 8
    assert all(s > 10 for s in steps) and steps == sorted(steps) and len(set(steps)) == 8
    torch.testing.assert_close(samples[:, 0], torch.tensor(steps, dtype=torch.float32))
    assert steps[0] == buffered[0] and steps[-1] == buffered[-1]


def test_store_before_burn_in_is_empty():
    store = SampleStore(burn_in=5, thin=1, max_samples=4)
    for step in range(1, 6):
        assert not store.offer(step, [torch.ones(2)])
    assert store.samples() is None and len(store) == 0


def test_pick_is_even_or_cycling():
    assert pick(10, 4).tolist() == [0, 3, 6, 9]
    assert pick(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError):
        pick(0, 2)


def test_batched_logits_match_a_loop_over_samples():
    torch.manual_seed(0)
    head = LinearHead(5, 2)
    samples = torch.randn(6, 5 * 2 + 2)
    x = torch.randn(4, 5)
    out = batched_logits(head, samples, x)
    assert out.shape == (6, 4, 2)
    for i, row in enumerate(samples):
        w, b = row[:10].reshape(2, 5), row[10:]
        torch.testing.assert_close(out[i], x @ w.T + b)
    with pytest.raises(ValueError, match="values per row"):
        batched_logits(head, torch.randn(2, 7), x)


# -- the methods, driven as the trainer drives them ----------------------------------------------
def _blobs(n: int = 120, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g)
    x[:, 0] += 1.5 * (2 * y - 1)
    return x, y


def _train(name: str, epochs: int = 6, batch: int = 20, train_lr: float = 0.05, **options):
    """configure_optimizer -> (training_loss, backward, step, after_step)* -> after_training."""
    torch.manual_seed(0)
    x, y = _blobs()
    if name == "sghmc":  # the reference's epsilon (0.01) barely leaves a random init in 36 steps
        options.setdefault("lr", 0.1)
    method = METHODS[name](LinearHead(x.shape[1], 2), num_train=len(y), **options)
    opt = method.configure_optimizer(
        [{"params": list(method.head.parameters())}],
        optimizer="adamw",
        lr=train_lr,
        weight_decay=0.0,
    )
    step = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y))
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            parts = method.training_loss(x[idx], y[idx], idx)
            opt.zero_grad()
            parts.loss.backward()
            opt.step()
            step += 1
            method.after_step(step + 1000)  # the trainer's step counts earlier phases too
        method.after_epoch(epoch)
    method.after_training(None, None)
    return method, x, y


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_keeps_samples_and_decomposes(name):
    # 10 epochs: from a random init the calibrated step (at most train.lr / N) needs a few
    method, x, y = _train(name, epochs=10, burn_in_epochs=2.0, max_samples=10)
    assert method.burn_in_steps == 12  # 2 epochs of ceil(120 / 20) = 6 steps
    assert method.steps == 60
    samples = method.store.samples()
    assert samples.shape == (10, 4 * 2 + 2)
    assert min(method.store.steps()) > 12
    assert samples.std(0).min() > 0  # a chain that moves, not a point
    # the head is left at the samples' mean: its logits are the mean logits
    probs = method.sample(x, 40)
    assert probs.shape == (40, len(y), 2)
    mean_logits = batched_logits(method.head, samples, x).mean(0)
    torch.testing.assert_close(method.head(x), mean_logits, atol=1e-5, rtol=0)
    assert (probs.mean(0).argmax(-1) == y).float().mean() > 0.8
    unc = decompose(probs)
    assert unc["epistemic"].max() > 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_samples_roundtrip_through_extra_state(name):
    method, x, _ = _train(name, burn_in_epochs=1.0, max_samples=8)
    state, meta = method.extra_state(), json.loads(json.dumps(method.extra_meta()))
    assert meta["kept"] == 8 and state["samples"].shape[0] >= 8
    fresh = METHODS[name](LinearHead(x.shape[1], 2), num_train=120, max_samples=8)
    fresh.load_extra_state(state)
    fresh.load_extra_meta(meta)
    fresh.to(torch.device("cpu"))
    torch.testing.assert_close(fresh.store.samples(), method.store.samples())
    assert fresh.store.steps() == method.store.steps() and fresh.finished
    # sample() only uses the kept samples (picked deterministically), not the head's parameters
    torch.testing.assert_close(fresh.sample(x, 16), method.sample(x, 16))
    with pytest.raises(ValueError, match="unexpected"):
        fresh.load_extra_state({"laplace_factors": torch.zeros(2)})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resuming_mid_chain_is_exact(name):
    """Stop after 3 of 6 epochs, save what the trainer saves (extra state and meta, the sampler's
    state dict, the RNG), restore into fresh objects, continue: the same samples as in one go."""
    x, y = _blobs()
    opts = {"burn_in_epochs": 1.0, "max_samples": 5, **({"lr": 0.1} if name == "sghmc" else {})}

    def fresh():
        torch.manual_seed(0)
        method = METHODS[name](LinearHead(4, 2), num_train=120, **opts)
        opt = method.configure_optimizer(
            [{"params": list(method.head.parameters())}],
            optimizer="adamw",
            lr=0.05,
            weight_decay=0.0,
        )
        return method, opt

    def epochs(method, opt, first, last):
        for epoch in range(first, last + 1):
            order = torch.randperm(120, generator=torch.Generator().manual_seed(epoch))
            for start in range(0, 120, 20):
                idx = order[start : start + 20]
                opt.zero_grad()
                method.training_loss(x[idx], y[idx]).loss.backward()
                opt.step()
                method.after_step(0)
            method.after_epoch(epoch)

    whole, opt = fresh()
    torch.manual_seed(7)
    epochs(whole, opt, 1, 6)
    first, opt = fresh()
    torch.manual_seed(7)
    epochs(first, opt, 1, 3)
    saved = (
        {k: v.clone() for k, v in first.extra_state().items()},
        json.loads(json.dumps(first.extra_meta())),
        copy.deepcopy(opt.state_dict()),
        [p.detach().clone() for p in first.head.parameters()],
        torch.get_rng_state(),
    )
    second, opt = fresh()
    second.load_extra_state(saved[0])
    second.load_extra_meta(saved[1])
    with torch.no_grad():
        for p, v in zip(second.head.parameters(), saved[3], strict=True):
            p.copy_(v)
    opt.load_state_dict(saved[2])
    torch.set_rng_state(saved[4])
    epochs(second, opt, 4, 6)
    torch.testing.assert_close(second.store.samples(), whole.store.samples(), rtol=0, atol=0)
    assert second.store.steps() == whole.store.steps()


def test_default_step_is_calibrated_and_capped_by_the_old_default():
    """lr = 0: during burn-in the step is set so that the minibatch noise is noise_fraction of
    the injected noise (worst coordinate or direction), at most train.lr / N (SGHMC: 0.01), then
    frozen; an explicit lr is used as given."""
    method, _, _ = _train("sgld", epochs=3, train_lr=0.05, burn_in_epochs=2.0)
    report = method.noise_report
    assert 0 < method.step_size <= 0.05 / 120
    worst = max(report["gradient_noise_fraction"], report["gradient_noise_fraction_top"])
    if method.step_size < 0.05 / 120:  # not capped: calibrated to the target fraction
        assert worst == pytest.approx(0.25, rel=1e-4)
    frozen = method.step_size
    assert method.sampler.adapting is False
    method.sampler.step()  # after burn-in the step no longer changes
    assert method.step_size == frozen
    method, _, _ = _train("sgld", epochs=1, train_lr=0.05, lr=1e-4)
    assert method.step_size == pytest.approx(1e-4)
    assert method.extra_meta()["step_calibrated"] is False
    method, _, _ = _train("sghmc", epochs=1, train_lr=0.05, lr=0.0)
    assert 0 < method.step_size <= 0.01  # unit-free epsilon, not from train.lr


def test_a_large_fixed_step_is_reported_once():
    """A fixed lr at which the minibatch noise exceeds the needed noise (SGHMC: the injected
    noise is clamped to 0) warns once at the end of burn-in and is recorded in the run."""
    with pytest.warns(RuntimeWarning, match="clamped to 0") as seen:
        method, _, _ = _train("sghmc", epochs=3, burn_in_epochs=1.0, lr=0.3)
    assert sum("clamped" in str(w.message) for w in seen) == 1
    meta = method.extra_meta()["noise"]
    assert meta["noise_clamped"] > 0 and meta["coordinates"] == 10
    with pytest.warns(RuntimeWarning, match="exceeds the noise the sampler needs"):
        method, _, _ = _train("sgld", epochs=2, burn_in_epochs=1.0, lr=0.5)
    assert method.extra_meta()["noise"]["noise_dominated"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train("sgld", epochs=2, burn_in_epochs=1.0)  # the calibrated default: no warning


def test_sghmc_window_update_is_the_references():
    """One step of adaptation = pybnn adaptive_sghmc.py: r = 1 / (tau_old + 1), then tau, the
    averaged gradient and V_hat (the old code used r = 1 / tau_new: 1 instead of 0.5 here)."""
    p = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = SGHMC([p], lr=0.01, num_data=10, prior_sigma=1.0, adaptation="window")
    tau, g, v = (torch.tensor(t, dtype=torch.float64) for t in
                 ([1.0, 3.0, 2.0], [1.0, 0.5, -2.0], [1.0, 4.0, 9.0]))  # fmt: skip
    state = opt._state(p)
    state["tau"], state["g_avg"], state["v_hat"] = tau.clone(), g.clone(), v.clone()
    p.grad = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    d = p.grad * 10 + p.detach()  # grad U (prior sigma 1)
    tiny = SGHMC._tiny
    r = 1.0 / (tau + 1.0)
    tau_ref = tau - tau * g * g / (v + tiny) + 1.0
    g_ref = g - g * r + r * d
    v_ref = v - v * r + r * d**2
    opt.step()
    torch.testing.assert_close(state["tau"], tau_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(state["g_avg"], g_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(state["v_hat"], v_ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", [SGLD, PSGLD, SGHMC])
def test_noise_comes_from_the_samplers_own_generator(cls):
    """Same seed, same chain whatever the global RNG (so torchrun ranks agree); another seed,
    another chain; the generator's state travels with the state dict."""

    def chain(seed: int, global_seed: int, steps: int = 5, opt=None, p=None):
        torch.manual_seed(global_seed)
        if p is None:
            p = torch.zeros(4, requires_grad=True)
            opt = cls([p], lr=1e-3, num_data=50, prior_sigma=1.0, seed=seed)
        for _ in range(steps):
            p.grad = torch.full((4,), 0.1)
            opt.step()
        return p.detach().clone(), opt, p

    a, opt_a, p_a = chain(3, 0)
    b, _, _ = chain(3, 123)
    c, _, _ = chain(4, 0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    saved = copy.deepcopy(opt_a.state_dict())
    more, _, _ = chain(3, 0, opt=opt_a, p=p_a)
    p2 = a.clone().requires_grad_(True)
    opt2 = cls([p2], lr=1e-3, num_data=50, prior_sigma=1.0, seed=99)
    opt2.load_state_dict(saved)
    again, _, _ = chain(99, 7, opt=opt2, p=p2)
    assert torch.equal(more, again)


def test_run_within_burn_in_warns_and_falls_back_to_the_head():
    with pytest.warns(RuntimeWarning, match="burn-in"):
        method, x, _ = _train("sgld", epochs=1, burn_in_epochs=5.0)
    assert method.store.samples() is None
    with pytest.warns(RuntimeWarning, match="no kept samples"):
        probs = method.sample(x, 5)
    assert torch.all(decompose(probs)["epistemic"] < 1e-6)


def test_sampling_during_burn_in_is_silent():
    torch.manual_seed(0)
    x, _ = _blobs()
    method = StochasticGradientLangevin(LinearHead(4, 2), num_train=120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert method.sample(x, 3).shape == (3, 120, 2)  # e.g. the trainer's validation


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("sgld", {"prior_sigma": 0.0}, "prior_sigma"),
        ("sgld", {"thin": 0}, "thin"),
        ("psgld", {"alpha": 1.0}, "alpha"),
        ("sghmc", {"burn_in_epochs": 0.0}, "burn_in_epochs"),
        ("sghmc", {"adaptation": "magic"}, "adaptation"),
    ],
)
def test_bad_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        METHODS[name](LinearHead(4, 2), num_train=10, **options)


def test_sghmc_adapts_only_during_burn_in():
    method, _, _ = _train("sghmc", epochs=3, burn_in_epochs=1.0)
    assert isinstance(method.sampler, SGHMC) and method.sampler.adapting is False
    state = method.sampler.state[next(method.head.parameters())]
    assert state["adapted"] == method.burn_in_steps == 6


# -- through the CLI -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "backbone"), [("sgld", "finetune"), ("psgld", "frozen"),
                                                ("sghmc", "frozen")])  # fmt: skip
def test_cli_train_and_evaluate(name, backbone, synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = {"train.head_epochs": 4, "train.backbone": f'"{backbone}"', "eval.batch_size": 64}
    result = train_and_evaluate(recipe(f"resnet50_{name}"), tmp_path, data=synth_root, sets=sets)
    run, meta = result.run, result.meta
    assert meta["method"] == name and meta["complete"] is True
    mm = meta["method_meta"]
    assert mm["sampler"] == name and mm["kept"] > 0 and mm["burn_in_steps"] < mm["steps"]
    _, _, loaded, _ = load_run(run, torch.device("cpu"))  # the samples come back with the run
    assert loaded.store.samples().shape[0] == mm["kept"] and loaded.finished
    phases = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert phases.count("head") == 4
    assert ("finetune-map" in phases) == (backbone == "finetune")
    metrics = result.metrics
    seen = metrics["seen"]
    assert seen["epistemic_uncertainty"] > 0
    assert "midjourney" in metrics["ood"]
