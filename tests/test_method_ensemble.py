"""Tests of the ``ensemble`` method: bootstrap counts, the vectorised weighted loss, members that
differ, sampling, persistence, and a CLI train + evaluate + compare on synthetic data."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import fit_head, invoke, recipe, train_and_evaluate, two_blobs

from bnnkit.metrics.uncertainty import decompose
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.method_ensemble import BootstrapEnsemble, bootstrap_counts

N, D, C, M = 200, 6, 2, 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: one torch thread


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return two_blobs(N, D, seed)


def _method(seed: int = 0, **options) -> BootstrapEnsemble:
    torch.manual_seed(seed)  # the trainer seeds the global RNG with the recipe's seed
    return BootstrapEnsemble(LinearHead(D, C), num_train=N, **{"members": M, **options})


def _train(method: BootstrapEnsemble, epochs: int = 60) -> BootstrapEnsemble:
    x, y = _data()
    fit_head(method, x, y, epochs)
    return method


@pytest.fixture(scope="module")
def trained() -> BootstrapEnsemble:
    return _train(_method())


# -- bootstrap counts -----------------------------------------------------------------------------
def test_bootstrap_counts_are_multinomial_resamples():
    m, n = 40, 2000
    counts = bootstrap_counts(m, n, torch.Generator().manual_seed(0))
    assert counts.shape == (m, n)
    assert bool((counts == counts.round()).all()) and bool((counts >= 0).all())
    assert bool((counts.sum(1) == n).all())  # every member resamples exactly N images
    # marginals are Binomial(N, 1/N): mean 1, variance 1 - 1/N, P(0) = (1 - 1/N)^N ~ 1/e
    assert float(counts.mean()) == pytest.approx(1.0)
    assert float(counts.var()) == pytest.approx(1 - 1 / n, abs=0.03)
    assert float((counts == 0).double().mean()) == pytest.approx((1 - 1 / n) ** n, abs=0.01)
    # members resample independently
    assert not torch.equal(counts[0], counts[1])
    assert abs(float(torch.corrcoef(counts[:2])[0, 1])) < 0.1


def test_counts_follow_the_seed():
    a, b, c = _method(seed=1), _method(seed=1), _method(seed=2)
    assert torch.equal(a.counts, b.counts) and torch.equal(a.members.weight, b.members.weight)
    assert not torch.equal(a.counts, c.counts)
    assert bool((a.counts.sum(1) == N).all())


def test_no_bootstrap_means_unit_weights():
    method = _method(bootstrap=False)
    assert bool((method.counts == 1).all())
    w = method.sample_weights(torch.arange(10), 10, torch.device("cpu"))
    assert torch.equal(w, torch.ones(M, 10))


# -- the loss --------------------------------------------------------------------------------------
def test_vectorised_loss_equals_per_member_bootstrap_losses():
    method = _method()
    x, y = _data()
    idx = torch.arange(20, 52)
    parts = method.training_loss(x[idx], y[idx], idx)
    expected = 0.0
    for m in range(M):
        logits = x[idx] @ method.members.weight[m].T + method.members.bias[m]
        nll = F.cross_entropy(logits, y[idx], reduction="none")
        expected = expected + (method.counts[m, idx] * nll).sum() / len(idx)
    torch.testing.assert_close(parts.loss, expected)


def test_a_member_learns_nothing_from_images_it_did_not_draw():
    method = _method()
    x, y = _data()
    i = int((method.counts == 0).any(0).nonzero()[0])  # an image some member left out
    method.training_loss(x[i : i + 1], y[i : i + 1], torch.tensor([i])).loss.backward()
    grad_norm = method.members.weight.grad.flatten(1).norm(dim=1)
    left_out = method.counts[:, i] == 0
    assert bool(left_out.any()) and bool((grad_norm[left_out] == 0).all())
    assert bool((grad_norm[~left_out] > 0).all())


def test_optimizer_gets_the_member_heads():
    method = _method()
    opt = method.configure_optimizer(
        [{"params": list(method.head.parameters())}], optimizer="sgd", lr=0.1, weight_decay=1e-4
    )
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(method.members.weight) in params and id(method.members.bias) in params
    assert all(g["weight_decay"] == 1e-4 for g in opt.param_groups)


# -- trained members -------------------------------------------------------------------------------
def test_members_differ_and_each_fits(trained):
    x, y = _data()
    w = trained.members.weight.detach().flatten(1)
    distances = torch.cdist(w, w)
    off_diagonal = distances[~torch.eye(M, dtype=torch.bool)]
    assert float(off_diagonal.min()) > 1e-3
    with torch.no_grad():
        logits = trained.members(x)  # [M, N, C]
    accuracy = (logits.argmax(-1) == y).double().mean(1)
    assert bool((accuracy > 0.8).all())
    far = 20 * torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p_far = torch.softmax(trained.members(far), -1)[..., 1]
    assert float(p_far.std(0).mean()) > 0.01  # they disagree off the data


def test_sample_returns_each_member_once(trained):
    x, _ = _data()
    with torch.no_grad():
        per_member = torch.softmax(trained.members(x[:7]), -1)
        for k in (1, 3, M, 12, 100):
            torch.testing.assert_close(trained.sample(x[:7], k), per_member)


@pytest.mark.parametrize("k", [16, 32, 3])
def test_predictive_is_the_equal_weight_mixture_whatever_k(trained, k):
    """Through the engine's own reduction (validation, evaluate and predict all use it): p(fake)
    is the plain mean of the M members and epistemic their equal-weight mutual information,
    also when M does not divide K (the trainer's K = 16, the recipe's K = 32) or K < M."""
    from bnnkit.engine.features.loop import predict_features

    x, _ = _data()
    points = torch.cat([x[:40], 20 * x[40:80]])  # on and far off the data: members disagree
    with torch.no_grad():
        p = torch.softmax(trained.members(points), -1).double()  # [M, B, C]
    mean = p.mean(0)
    entropy = lambda q: -torch.xlogy(q, q).sum(-1)  # noqa: E731
    mutual_info = entropy(mean) - entropy(p).mean(0)
    assert float(mutual_info.max()) > 1e-2  # the check below has something to see
    pred = predict_features(trained, points, k, torch.device("cpu"))
    torch.testing.assert_close(pred.p_fake.double(), mean[:, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.epistemic.double(), mutual_info, atol=1e-6, rtol=0)
    torch.testing.assert_close(pred.total.double(), entropy(mean), atol=1e-6, rtol=0)


def test_samples_decompose(trained):
    x, _ = _data()
    with torch.no_grad():
        probs = trained.sample(x[:32], 2 * M)
    unc = decompose(probs)
    assert float(unc["epistemic"].max()) > 1e-3


def test_extra_state_roundtrip(trained):
    state = {k: v.detach().clone() for k, v in trained.extra_state().items()}
    meta = json.loads(json.dumps(trained.extra_meta()))
    assert meta["members"] == M and meta["bootstrap"] is True
    fresh = _method(seed=123)
    assert not torch.equal(fresh.members.weight, state["members.weight"])
    fresh.load_extra_state(state)
    fresh.load_extra_meta(meta)
    x, _ = _data()
    with torch.no_grad():
        torch.testing.assert_close(fresh.sample(x, M), trained.sample(x, M))
    assert torch.equal(fresh.counts, trained.counts)  # the bootstrap is restored from its seed
    with pytest.raises(ValueError, match="do not fit"):
        _method(members=3).load_extra_state(state)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_bad_members_option(bad):
    with pytest.raises(ValueError, match="members"):
        BootstrapEnsemble(LinearHead(D, C), num_train=N, members=bad)


# -- through the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["finetune", "frozen"])
def test_cli_train_evaluate_compare(synth_root, tmp_path, monkeypatch, backbone):
    monkeypatch.chdir(tmp_path)
    sets = {
        "train.head_epochs": 2, "train.backbone": f'"{backbone}"', "inference.members": 3,
        "eval.samples": 6, "eval.batch_size": 64,
    }  # fmt: skip
    result = train_and_evaluate(
        recipe("resnet50_ensemble"), tmp_path, data=synth_root, sets=sets, evaluate_args=()
    )
    run, meta = result.run, result.meta
    assert meta["method"] == "ensemble" and meta["method_meta"]["members"] == 3
    assert "unseen generator: midjourney" in result.evaluate_output
    metrics = result.metrics
    assert metrics["seen"]["epistemic_uncertainty"] > 0  # the 3 heads disagree

    (row,) = json.loads(invoke(["compare", str(run), "--format", "json"]))
    assert row["method"] == "ensemble"
    assert row["id_accuracy"] == metrics["seen"]["accuracy"]
    assert row["epistemic_auroc"] == metrics["ood"]["midjourney"]["scores"]["mutual_info"]["auroc"]
