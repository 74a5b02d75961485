"""Posterior scores of near-saturated predictives: computed from the logits in float64, they keep
their resolution where the float32 softmax rounds ``max p`` to 1 (logit gap > ~16.6) or the
smaller probability to 0 (gap > ~100)."""

from __future__ import annotations

import math

import pytest
import torch

from bnnkit.engine.features.loop import batch_record
from bnnkit.methods.base import InferenceMethod
from bnnkit.metrics.records import Predictions
from bnnkit.metrics.uncertainty import decompose_from_logits, max_prob_from_logits
from bnnkit.scores import ScoreInputs
from bnnkit.scores.store import build_score


def two_class(gaps: list[list[float]]) -> ScoreInputs:
    """Inputs whose sample ``k`` of image ``b`` has logits ``(0, gaps[b][k])`` (float32, as the
    head gives them), and their float32 softmax."""
    g = torch.tensor(gaps, dtype=torch.float32).T  # [K, B]
    logits = torch.stack([torch.zeros_like(g), g], dim=-1)
    return ScoreInputs(torch.zeros(g.shape[1], 3), logits, logits.softmax(-1))


def reference(gaps: list[float]) -> dict[str, float]:
    """By hand in float64 for one image with samples of logits ``(0, gap)``: p_k(real) =
    sigmoid(-gap) from its logarithm, the predictive's min and the entropy decomposition."""
    small = [math.exp(-g - math.log1p(math.exp(-g))) for g in gaps]  # p_k(real)

    def h(p: float) -> float:  # binary entropy, the 1 - p term by log1p (p is the small one)
        if p >= 1:  # only for gaps < 0, where the caller reads max_prob alone
            return 0.0
        return -(p * math.log(p) + (1 - p) * math.log1p(-p))

    mean = sum(small) / len(small)
    total, aleatoric = h(mean), sum(h(p) for p in small) / len(small)
    return {"max_prob": mean, "total": total, "epistemic": total - aleatoric}


def test_max_prob_stays_ordered_past_float32_saturation():
    ins = two_class([[17.0], [20.0], [25.0]])
    got = build_score("max_prob")(ins)
    # float32: 1 - max p is exactly 0 for all three (the old value): a three-way tie
    assert (1.0 - ins.probs.mean(0).max(-1).values == 0).all()
    assert got[0] > got[1] > got[2] > 0
    want = torch.tensor(
        [reference([g])["max_prob"] for g in (17.0, 20.0, 25.0)], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_max_prob_of_several_samples_is_the_smaller_predictive_probability():
    gaps = [[18.0, 22.0, 30.0], [-19.0, -21.0, -40.0], [0.5, -0.5, 3.0]]
    got = build_score("max_prob")(two_class(gaps))
    # mean_k sigmoid(-g) is p(real), mean_k sigmoid(g) p(fake): each computed directly
    want = [
        min(reference(row)["max_prob"], reference([-g for g in row])["max_prob"]) for row in gaps
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(max_prob_from_logits(two_class(gaps).logits), got, rtol=0, atol=0)


def test_entropy_of_a_saturated_predictive_is_positive_and_ordered():
    # past a gap of ~104 the float32 softmax gives (1, 0): the old entropy was exactly 0
    gaps = [90.0, 110.0, 130.0]
    ins = two_class([[g] for g in gaps])
    assert (ins.probs[0, 1:, 0] == 0).all()
    got = build_score("entropy")(ins)
    assert got[0] > got[1] > got[2] > 0
    want = torch.tensor([reference([g])["total"] for g in gaps], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


def test_mutual_information_of_saturated_disagreeing_samples_is_positive():
    # two samples, both saturated in float32 (probs (1, 0) each): the old value was exactly 0
    gaps = [[120.0, 130.0], [110.0, 140.0], [125.0, 125.0]]
    ins = two_class(gaps)
    assert (ins.probs[..., 0] == 0).all()
    got = build_score("mutual_info")(ins)
    want = [reference(row)["epistemic"] for row in gaps[:2]]
    torch.testing.assert_close(got[:2], torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)
    assert got[1] > got[0] > 0
    assert got[2] == 0  # identical samples: exactly 0, not rounding noise


def test_identical_samples_have_exactly_zero_epistemic_from_logits():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 50, 3, generator=g) * 40  # some saturated, some not
    parts = decompose_from_logits(one.expand(7, -1, -1))
    assert torch.equal(parts["epistemic"], torch.zeros(50, dtype=torch.float64))
    assert torch.equal(parts["total"], parts["aleatoric"])


@pytest.mark.parametrize("name", ["max_prob", "entropy", "mutual_info"])
def test_unsaturated_values_agree_with_the_softmax_computation(name: str):
    torch.manual_seed(1)
    logits = torch.randn(5, 40, 2) * 2
    got = build_score(name)(ScoreInputs(torch.zeros(40, 1), logits, logits.softmax(-1)))
    # without logits (e.g. a fusion's empty inputs), the same value from the probs
    from_probs = build_score(name)(
        ScoreInputs(torch.zeros(40, 1), torch.zeros(0), logits.double().softmax(-1))
    )
    torch.testing.assert_close(got, from_probs, rtol=1e-9, atol=1e-12)


class _Fixed(InferenceMethod):
    """A method whose K samples are the given logits (no head needed for this)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def sample_logits(self, features: torch.Tensor, k: int) -> torch.Tensor:
        return self.logits


def test_the_record_and_the_recorded_scores_agree_on_saturated_images():
    # what predictions.csv writes: the record's parts and the score columns, from one batch
    ins = two_class([[30.0, 35.0], [110.0, 120.0], [-125.0, -150.0], [1.0, -1.0]])
    scorer = {n: build_score(n) for n in ("max_prob", "entropy", "mutual_info")}
    record = batch_record(_Fixed(ins.logits), ins.features, 2, scorer)
    assert torch.equal(record.total, record.scores["entropy"])
    assert torch.equal(record.epistemic, record.scores["mutual_info"])
    assert (record.total > 0).all() and (record.epistemic > 0).all()
    # the record's own max_prob (from its float32 p(fake), when not recorded): min(p, 1 - p)
    p_fake = record.p_fake.double()
    fallback = Predictions(record.p_fake, record.total, record.aleatoric, record.epistemic)
    torch.testing.assert_close(fallback.score("max_prob"), torch.minimum(p_fake, 1 - p_fake))


def test_no_negative_zero_entropy():
    # one-hot samples: every part is +0.0 (the old -sum xlogy printed as -0.0)
    probs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]] * 3)
    record = Predictions.from_probs(probs)
    logits = torch.tensor([[[0.0, 800.0]]] * 2)  # even float64 underflows here
    for part in (record.total, record.epistemic, decompose_from_logits(logits)["total"]):
        assert (part == 0).all() and not torch.signbit(part).any()
