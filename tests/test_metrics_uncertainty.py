"""Entropy decomposition of MC samples, pinned against hand-computed values."""

import math

import pytest
import torch

from bnnkit.metrics.uncertainty import decompose, entropy, max_prob_score, predictive_mean

# H(0.9) = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.0948245 + 0.2302585 = 0.3250830
H09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))


def test_predictive_mean_and_max_prob_score():
    # item 0: samples [0.9, 0.1] and [0.5, 0.5] -> mean [0.7, 0.3] -> score 1 - 0.7 = 0.3
    # item 1: samples [0.2, 0.8] and [0.0, 1.0] -> mean [0.1, 0.9] -> score 1 - 0.9 = 0.1
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.0, 1.0]]])
    assert torch.allclose(predictive_mean(probs), torch.tensor([[0.7, 0.3], [0.1, 0.9]]))
    assert torch.allclose(max_prob_score(probs), torch.tensor([0.3, 0.1]))


def test_disagreeing_samples_are_epistemic():
    # samples [0.9, 0.1] and [0.1, 0.9] -> mean [0.5, 0.5]
    # total = ln 2 = 0.693147, aleatoric = H(0.9) = 0.325083, epistemic = 0.368064
    probs = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]], dtype=torch.float64)
    d = decompose(probs)
    assert set(d) == {"total", "aleatoric", "epistemic"}
    assert d["total"].shape == (1,)
    assert d["total"].item() == pytest.approx(math.log(2))
    assert d["aleatoric"].item() == pytest.approx(H09)
    assert d["epistemic"].item() == pytest.approx(math.log(2) - H09)
    assert d["epistemic"].item() == pytest.approx(0.368064, abs=1e-6)


def test_identical_samples_have_no_epistemic():
    # all samples [0.5, 0.5]: total = aleatoric = ln 2, epistemic = 0
    # all samples [1, 0]: everything 0 (0 log 0 = 0, no nan)
    probs = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]] * 5)
    d = decompose(probs)
    assert torch.allclose(d["total"], torch.tensor([math.log(2), 0.0]))
    assert torch.allclose(d["aleatoric"], torch.tensor([math.log(2), 0.0]))
    assert torch.equal(d["epistemic"], torch.zeros(2))
    assert not any(torch.isnan(v).any() for v in d.values())


def test_one_hot_disagreement_is_purely_epistemic():
    # samples [1, 0] and [0, 1]: aleatoric = 0, total = epistemic = ln 2
    d = decompose(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    assert d["aleatoric"].item() == 0.0
    assert d["epistemic"].item() == pytest.approx(math.log(2))


def test_entropy_zero_safe():
    assert entropy(torch.tensor([1.0, 0.0])).item() == 0.0
    assert entropy(torch.tensor([0.25, 0.25, 0.5])).item() == pytest.approx(1.5 * math.log(2))


def test_decomposition_identity_on_random_dirichlet():
    g = torch.Generator().manual_seed(0)
    conc = torch.rand(30, 3, generator=g) * 5 + 0.1
    torch.manual_seed(0)
    probs = torch.distributions.Dirichlet(conc).sample((20,))  # [K=20, B=30, C=3]
    d = decompose(probs)
    assert d["total"].shape == (30,)
    assert (d["epistemic"] >= 0).all()
    assert (d["aleatoric"] >= 0).all()
    assert torch.allclose(d["total"], d["aleatoric"] + d["epistemic"], atol=1e-6)
    assert (d["total"] <= math.log(3) + 1e-6).all()


def test_bad_shape_raises():
    with pytest.raises(ValueError):
        decompose(torch.rand(4, 2))


@pytest.mark.parametrize("k", [3, 7, 8, 32])
def test_identical_samples_have_exactly_zero_epistemic(k):
    # a deterministic head (MAP) repeats one pass K times: the mutual information must be 0
    # exactly, or float noise (~1e-16 on a plain mean of K equal values) ranks the images
    p = torch.rand(500, generator=torch.Generator().manual_seed(0))
    probs = torch.stack([1 - p, p], -1).expand(k, -1, -1)
    d = decompose(probs)
    assert (d["epistemic"] == 0).all()
    assert torch.equal(d["total"], d["aleatoric"])
    assert torch.allclose(d["total"], entropy(torch.stack([1 - p, p], -1)), atol=1e-6)
