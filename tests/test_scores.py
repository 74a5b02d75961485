"""The built-in OOD scores: hand-computed values, the posterior scores of before, conformance."""

from __future__ import annotations

import math

import pytest
import torch

from bnnkit.errors import UsageError
from bnnkit.metrics.records import Predictions
from bnnkit.plugins import get_registry
from bnnkit.scores import ScoreInputs, ScoreNotFitted
from bnnkit.scores.store import build_score
from bnnkit.testing import check_score


def inputs(features: torch.Tensor, logits: torch.Tensor | None = None) -> ScoreInputs:
    n = features.shape[0]
    logits = torch.zeros(1, n, 2) if logits is None else logits
    return ScoreInputs(features.float(), logits, logits.softmax(-1))


# two classes of four points each, in 2-d: class 0 around (1, 1), class 1 around (5, 1)
TRAIN = torch.tensor(
    [[0.0, 0], [2, 0], [0, 2], [2, 2], [4, 0], [6, 0], [4, 2], [6, 2]], dtype=torch.float32
)
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
TEST = torch.tensor([[1.0, 1], [3, 1], [1, 5], [8, 1]])


def test_mahalanobis_matches_a_hand_computed_example() -> None:
    # within-class scatter (not divided by N, as pytorch-ood): each class has centred points
    # (+-1, +-1), so S = 2 * diag(4, 4) = diag(8, 8); score = min_c 0.5 |z - mu_c|^2 / 8
    expected = torch.tensor(
        [
            0.0,  # (1, 1) is class 0's mean
            0.5 * (2**2) / 8,  # (3, 1): 2 from both means
            0.5 * (4**2) / 8,  # (1, 5): 4 above class 0's mean
            0.5 * (3**2) / 8,  # (8, 1): 3 right of class 1's mean
        ],
        dtype=torch.float64,
    )
    score = build_score("mahalanobis")
    score.fit(inputs(TRAIN), LABELS)
    assert score.meta()["dims"] == 2  # both directions carry variance: nothing dropped
    torch.testing.assert_close(score(inputs(TEST)), expected, atol=1e-5, rtol=1e-5)


def test_mahalanobis_projection_drops_a_direction_without_training_variance() -> None:
    # a third coordinate that is 0 on every training image: "auto" keeps the 2 others, so a
    # test point off that plane scores as its projection; "all" (pytorch-ood on the raw
    # features) divides by the 1e-6 ridge there
    train = torch.cat([TRAIN, torch.zeros(8, 1)], dim=1)
    test = torch.tensor([[1.0, 1, 0], [1, 1, 0.01]])
    score = build_score("mahalanobis")
    score.fit(inputs(train), LABELS)
    assert score.meta()["dims"] == 2
    torch.testing.assert_close(
        score(inputs(test)), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0
    )
    raw = build_score("mahalanobis", {"dims": "all"})
    raw.fit(inputs(train), LABELS)
    assert raw(inputs(test))[1] > 10  # 0.5 * 0.01^2 / 1e-6 = 50


def test_feature_scores_stay_finite_and_sane_when_features_outnumber_images() -> None:
    torch.manual_seed(0)
    train, test = torch.randn(24, 64) * 10, torch.randn(30, 64) * 10
    labels = torch.arange(24) % 2
    for name in ("mahalanobis", "rel_mahalanobis", "gmm", "knn", "vim"):
        score = build_score(name)
        score.fit(inputs(train, torch.randn(3, 24, 2)), labels)
        values = score(inputs(test, torch.randn(3, 30, 2)))
        assert torch.isfinite(values).all(), name
    maha = build_score("mahalanobis")
    maha.fit(inputs(train), labels)
    assert maha.meta()["dims"] == 12  # at most N // 2
    assert (maha(inputs(test)) >= 0).all()  # half squared distances; the raw fit gives < 0
    raw = build_score("mahalanobis", {"dims": "all"})
    raw.fit(inputs(train), labels)
    assert (raw(inputs(test)) < 0).any()  # why the projection exists (float32, D > N)


def test_knn_matches_a_hand_computed_example() -> None:
    # normalised training features: the four unit vectors of the axes
    train = torch.tensor([[3.0, 0], [0, 0.5], [-2, 0], [0, -7]])
    test = torch.tensor([[2.0, 0], [1, 1]])
    r = math.sqrt
    for k, expected in [
        (1, [0.0, r(2 - r(2))]),  # (1,0) itself; |(1/r2, 1/r2) - (1, 0)|
        (2, [r(2), r(2 - r(2))]),
        (3, [r(2), r(2 + r(2))]),
        (4, [2.0, r(2 + r(2))]),
    ]:
        score = build_score("knn", {"k": k})
        score.fit(inputs(train), torch.tensor([0, 1, 0, 1]))
        got = score(inputs(test))
        torch.testing.assert_close(
            got, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0
        )
    # without normalisation: distances from the origin are the norms 3, 0.5, 2, 7
    score = build_score("knn", {"k": 3, "normalize": False})
    score.fit(inputs(train), torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(
        score(inputs(torch.zeros(1, 2))), torch.tensor([3.0], dtype=torch.float64)
    )


def test_knn_auto_k_and_too_large_k() -> None:
    torch.manual_seed(0)
    for n, k in [(4, 1), (40, 4), (1000, 50)]:
        score = build_score("knn")
        score.fit(inputs(torch.randn(n, 3)), torch.arange(n) % 2)
        assert score.meta()["k"] == k
    with pytest.raises(UsageError, match="k = 9 exceeds the 4"):
        build_score("knn", {"k": 9}).fit(inputs(torch.randn(4, 3)), torch.tensor([0, 1, 0, 1]))


def test_energy_and_max_logit_by_hand() -> None:
    logits = torch.tensor(
        [[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [2.0, 2.0]]]
    )  # mean [[2,1],[1,1]]
    feats = torch.zeros(2, 4)
    ins = ScoreInputs(feats, logits, logits.softmax(-1))
    energy = [-math.log(math.exp(2) + math.exp(1)), -math.log(2 * math.exp(1))]
    torch.testing.assert_close(
        build_score("energy")(ins), torch.tensor(energy, dtype=torch.float64)
    )
    t2 = [-2 * math.log(math.exp(1) + math.exp(0.5)), -2 * math.log(2 * math.exp(0.5))]
    torch.testing.assert_close(
        build_score("energy", {"t": 2.0})(ins), torch.tensor(t2, dtype=torch.float64)
    )
    torch.testing.assert_close(
        build_score("max_logit")(ins), torch.tensor([-2.0, -1.0], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("name", "old"), [("max_prob", "max_prob"), ("entropy", "total"), ("mutual_info", "epistemic")]
)
def test_posterior_scores_equal_the_prediction_records(name: str, old: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 20, 2) * 2
    probs = logits.softmax(-1)
    got = build_score(name)(ScoreInputs(torch.zeros(20, 3), logits, probs))
    torch.testing.assert_close(got, Predictions.from_probs(probs).score(old), atol=1e-7, rtol=0)


def test_fused_rank_normalises_with_mid_ranks() -> None:
    seen = {"a": torch.tensor([2.0, 1, 3, 2]), "b": torch.full((4,), 7.0)}
    query = {"a": torch.tensor([0.0, 2, 2.5, 3, 5]), "b": torch.tensor([7.0, 7, 8, 6, 7])}
    # a's ECDF on [1, 2, 2, 3]: (#below + #at-or-below) / 8, continued beyond the range in units
    # of the half-ranges (median 2: 1 below, 1 above); b is constant 7 (half-ranges count as 1)
    a = [(0 - 1) / 1, (1 + 3) / 8, (3 + 3) / 8, (3 + 4) / 8, 1 + (5 - 3) / 1]
    b = [(0 + 4) / 8, 4 / 8, 1 + (8 - 7) / 1, (6 - 7) / 1, 4 / 8]
    for combine, rule in (("mean", lambda x, y: (x + y) / 2), ("max", max)):
        fused = build_score("fused", {"scores": ["a", "b"], "combine": combine})
        fused.fit(
            ScoreInputs(torch.zeros(4, 0), torch.zeros(0), torch.zeros(0), seen), torch.zeros(4)
        )
        expected = torch.tensor([rule(x, y) for x, y in zip(a, b, strict=True)]).double()
        out = fused(ScoreInputs(torch.zeros(5, 0), torch.zeros(0), torch.zeros(0), query))
        torch.testing.assert_close(out, expected, msg=combine)
    assert build_score("fused").opts.combine == "max"


def test_fused_error_weights_follow_the_seen_errors() -> None:
    # images 0 and 1 are misclassified; 'good' ranks them highest, 'bad' lowest
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    p_fake = torch.tensor([0.2, 0.9, 0.8, 0.1, 0.7, 0.3])
    probs = torch.stack([1 - p_fake, p_fake], -1)[None]
    comps = {"good": torch.tensor([9.0, 8, 1, 2, 3, 4]), "bad": torch.tensor([0.0, 1, 5, 6, 7, 8])}
    fused = build_score("fused", {"scores": ["good", "bad"], "weights": "errors"})
    fused.fit(ScoreInputs(torch.zeros(6, 0), probs, probs, comps), labels)
    assert fused.meta()["weights"] == {"good": 0.5, "bad": 0.0}
    with pytest.raises(UsageError, match="needs the seen images' probs"):
        build_score("fused", {"scores": ["good"], "weights": "errors"}).fit(
            ScoreInputs(torch.zeros(6, 0), torch.zeros(0), torch.zeros(0), comps), labels
        )


def test_fused_options_are_checked() -> None:
    assert build_score("fused", {"scores": ["total", "knn"]}).needs == ("entropy", "knn")
    with pytest.raises(UsageError, match="its own component"):
        build_score("fused", {"scores": ["fused"]})


def test_unfitted_scores_raise_score_not_fitted() -> None:
    for name in ("mahalanobis", "rel_mahalanobis", "gmm", "knn", "vim", "fused"):
        score = build_score(name)
        ins = inputs(TRAIN)
        ins.scores = {n: torch.zeros(8) for n in score.needs}
        with pytest.raises(ScoreNotFitted):
            score(ins)
        with pytest.raises(ScoreNotFitted):
            score.state_dict()


def test_every_builtin_score_passes_check_score() -> None:
    torch.manual_seed(0)
    n = 40
    labels = torch.arange(n) % 2
    feats = torch.randn(n, 16) + labels[:, None].float()
    logits = torch.randn(4, n, 2) + feats[:, :2]
    ins = ScoreInputs(feats, logits, logits.softmax(-1))
    names = get_registry().names("score")
    assert len(names) >= 10
    values = {}
    for name in sorted(names, key=lambda n: bool(build_score(n).needs)):  # components first
        score = build_score(name)
        given = (
            ins
            if not score.needs
            else ScoreInputs(
                ins.features, ins.logits, ins.probs, {k: values[k] for k in score.needs}
            )
        )
        values[name] = check_score(score, given, labels, fresh=lambda n=name: build_score(n))


def test_check_score_explains_a_fit_that_does_not_survive_its_state() -> None:
    """A fitted score that keeps its fit in an attribute but not in ``state_dict``: the
    conformance check says what is wrong instead of a bare AttributeError."""
    from bnnkit.scores.base import Score

    class Forgetful(Score):
        fit_on = "train"

        def fit(self, inputs, labels) -> None:
            self.centre = inputs.features.double().mean(0)
            self.fitted = True

        def __call__(self, inputs):
            self.check_fitted()
            return self.as_output((inputs.features.double() - self.centre).norm(dim=1))

    feats = torch.randn(12, 3)
    ins = ScoreInputs(feats, torch.zeros(1, 12, 2), torch.full((1, 12, 2), 0.5))
    with pytest.raises(AssertionError, match="did not survive state_dict"):
        check_score(Forgetful(), ins, torch.arange(12) % 2, fresh=Forgetful)


def test_fused_ranks_images_beyond_the_seen_range_instead_of_tying_them_at_one():
    """Beyond the reference's largest value the normalised value keeps growing (it used to be
    1 for all of them, so a threshold set on new seen images was often exactly 1 and abstained
    on nothing); below the smallest it keeps falling; inside, the mid-rank ECDF."""
    from bnnkit_plugins.score_fused import mid_rank_ecdf, tailed_rank

    ref = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    inside = torch.tensor([0.5, 2.0, 3.5], dtype=torch.float64)
    assert torch.equal(tailed_rank(ref, inside), mid_rank_ecdf(ref, inside))
    far = tailed_rank(ref, torch.tensor([4.5, 6.0, 10.0], dtype=torch.float64))
    assert far.tolist() == [1.25, 2.0, 4.0]  # 1 + (v - 4) / (4 - 2)
    low = tailed_rank(ref, torch.tensor([-1.0, -4.0], dtype=torch.float64))
    assert low.tolist() == [-0.5, -2.0]
    flat = tailed_rank(torch.ones(3, dtype=torch.float64), torch.tensor([1.0, 3.0]).double())
    assert flat.tolist() == [0.5, 3.0]  # a constant reference: half-range counts as 1
