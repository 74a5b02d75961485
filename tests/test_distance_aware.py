"""The distance-aware methods ``sngp`` and ``gp`` (issue 22, item 1): epistemic uncertainty that
grows with distance from the training features where a linear Laplace head's does not, method
conformance, spectral normalisation, and the quickstart recipe end to end with each."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import QUICKSTART, fit_head, invoke, train_and_evaluate, two_blobs

from bnnkit.metrics.uncertainty import decompose
from bnnkit.testing import check_method, registered
from bnnkit_plugins import head_gp, head_sngp, method_gp, method_sngp
from bnnkit_plugins.head_gp import GPHead
from bnnkit_plugins.head_linear import LinearHead
from bnnkit_plugins.head_sngp import SNGPHead
from bnnkit_plugins.method_gp import GP
from bnnkit_plugins.method_kflaplace import KFLaplace
from bnnkit_plugins.method_sngp import SNGP

pytestmark = pytest.mark.usefixtures("one_thread")

N, D = 400, 2
#: distances along each ray, in units of the blobs' standard deviation
DISTANCES = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
#: rays that leave the training data away from the decision boundary (x0 = 0): start at a
#: blob's centre (+-1.5 on the first axis) and move outwards, straight or at an angle
RAYS = [((1.5, 0.0), (1.0, 0.0)), ((-1.5, 0.0), (-0.6, 0.8)), ((1.5, 0.0), (0.6, -0.8))]


def _train(method, epochs: int = 60):
    torch.manual_seed(0)
    x, y = two_blobs(N, D)
    head = method.head
    fit_head(method, x, y, epochs)
    head.eval()
    if method.needs_train_features:
        method.after_training(x, y)
    else:
        method.after_training(None, None)
    return method, x, y


def _sngp(**options) -> SNGP:
    torch.manual_seed(0)
    return SNGP(SNGPHead(D, 2), num_train=N, **options)


def _gp() -> GP:
    torch.manual_seed(0)
    return GP(GPHead(D, 2), num_train=N)


@pytest.fixture(scope="module")
def fitted() -> dict:
    return {
        "sngp": _train(_sngp())[0],
        "sngp-diagonal": _train(_sngp(covariance="diagonal"))[0],
        "gp": _train(_gp(), epochs=30)[0],
        "kflaplace": _train(KFLaplace(LinearHead(D, 2), num_train=N, prior_precision=1.0))[0],
    }


def _mi_along(method, start, direction, k: int = 2000) -> torch.Tensor:
    """Mutual information of ``k`` posterior samples at each of :data:`DISTANCES` on a ray."""
    points = torch.tensor(start) + DISTANCES[:, None] * torch.tensor(direction)
    torch.manual_seed(1)
    with torch.no_grad():
        return decompose(method.sample(points, k))["epistemic"]


def _rises(mi: torch.Tensor, tol: float = 0.01) -> bool:
    return bool((mi[1:] >= mi[:-1] - tol).all())


#: far-away MI over MI at a blob's centre, at least. Mean-field SNGP: none. Its diagonal
#: precision 1 + sum_i p_i (1 - p_i) phi_ij^2 is ~1 + N / (10 D) on 2-D blobs (each of D = 1024
#: random features carries ~1/D of phi's norm), i.e. almost the prior: its MI rises only because
#: the mean logit reverts to 0 (as Sigma = I would), see test_sngp_needs_its_laplace_covariance.
RATIO = {"sngp": 15.0, "sngp-diagonal": None, "gp": 15.0}
#: a point on the decision boundary inside the training data: aleatoric, not epistemic
BOUNDARY = (0.0, 0.0)


def _far_over_boundary(method) -> float:
    mi = _mi_along(method, BOUNDARY, (0.0, 1.0))  # along the boundary, out of the data
    return float(mi[-1] / mi[0])


@pytest.mark.parametrize("name", sorted(RATIO))
def test_epistemic_uncertainty_rises_with_distance(fitted, name):
    method = fitted[name]
    for start, direction in RAYS:
        mi = _mi_along(method, start, direction)
        assert _rises(mi), (name, start, direction, mi)
        assert mi[-1] > 0.1, (name, mi)  # far away the posterior is the prior's
        ratio = RATIO[name]
        if ratio is not None:  # near the data it is (almost) all aleatoric
            assert mi[-1] > ratio * mi[0], (name, mi)
    if RATIO[name] is not None:  # even where the label is a coin flip, inside the data
        assert _far_over_boundary(method) > 3


def test_sngp_needs_its_laplace_covariance(fitted):
    """A wrong SNGP (posterior covariance = the prior's, Sigma = I) fails the test above: its
    spread is the same near the data as far away, so near-data MI is not small."""
    wrong = _train(_sngp())[0]
    eye = torch.eye(wrong.sngp.num_inducing).expand(2, -1, -1).contiguous()
    wrong._set_precision(eye)
    mi = _mi_along(wrong, *RAYS[0])
    assert not mi[-1] > RATIO["sngp"] * mi[0], mi
    assert _far_over_boundary(wrong) < 3
    assert _far_over_boundary(fitted["sngp-diagonal"]) < 3  # mean-field: about the prior


def test_a_linear_laplace_head_does_not(fitted):
    for start, direction in RAYS:
        lin = _mi_along(fitted["kflaplace"], start, direction)
        sngp = _mi_along(fitted["sngp"], start, direction)
        assert not _rises(lin, tol=0.0) or lin[-1] < 0.01, lin  # flat at ~0, or falling
        assert lin[-1] <= lin[0] + 1e-3, lin  # no more uncertain far away than at the blob
        assert sngp[-1] > 10 * max(float(lin[-1]), 1e-3)


def test_sngp_precision_is_the_laplace_one(fitted):
    method = fitted["sngp"]
    x, _ = two_blobs(N, D)
    head = method.sngp
    assert {"rff_weight", "rff_bias"} <= set(head.state_dict())  # saved: a loaded run's phi
    with torch.no_grad():
        phi = head.random_features(x).double()
        p = torch.softmax(head(x).double(), -1)[:, 1]
    want = torch.eye(phi.shape[1], dtype=torch.float64) + (phi * (p * (1 - p))[:, None]).T @ phi
    assert method.precision is not None and method.precision.shape == (2, *want.shape)
    for c in range(2):  # binary: both classes' p(1 - p) are the same
        torch.testing.assert_close(method.precision[c].double(), want, atol=1e-4, rtol=1e-4)
    diagonal = fitted["sngp-diagonal"].precision
    assert diagonal is not None and diagonal.shape == (2, phi.shape[1])


def test_sngp_samples_have_the_posterior_covariance(fitted):
    method = fitted["sngp"]
    x = torch.tensor([[0.3, -0.2], [5.0, 5.0]])
    torch.manual_seed(0)
    with torch.no_grad():
        logits = method.sample_logits(x, 20000)
        phi = method.sngp.random_features(x)
    cov = torch.linalg.inv(method.precision[0].double())
    want = torch.einsum("bd,de,be->b", phi.double(), cov, phi.double())
    torch.testing.assert_close(logits[..., 0].var(0).double(), want, rtol=0.05, atol=1e-4)


@pytest.mark.parametrize("name", ["sngp", "sngp-diagonal", "gp"])
def test_conformance(fitted, name):
    method = fitted[name]
    options = {"covariance": "diagonal"} if name == "sngp-diagonal" else {}
    fresh = (lambda: _sngp(**options)) if name.startswith("sngp") else _gp
    check_method(method, torch.randn(6, D), fresh=fresh)


def test_conformance_before_training():
    check_method(_sngp(), torch.randn(5, D), fresh=_sngp)
    check_method(_gp(), torch.randn(5, D), fresh=_gp)


def test_gp_initialises_inducing_points_by_kmeans():
    method = _gp()
    x, y = two_blobs(N, D)
    assert not bool(method.gp_head.initialised)
    method.training_loss(x[:64], y[:64])  # lazily, on the first batch
    assert bool(method.gp_head.initialised)
    strategy = method.gp_head.gp.variational_strategy.base_variational_strategy
    points = strategy.inducing_points.detach()
    assert points.shape == (2, 20, D)
    # k-means centres of the batch: inside its bounding box, distinct
    lo, hi = x[:64].min(0).values, x[:64].max(0).values
    assert ((points >= lo) & (points <= hi)).all()
    assert torch.unique(points[0], dim=0).shape[0] == 20
    before = points.clone()
    method.training_loss(x[64:128], y[64:128])
    torch.testing.assert_close(strategy.inducing_points.detach(), before)  # only once


def test_spectral_norm_wraps_the_backbone_and_refuses_a_frozen_one(synth_root, tmp_path):
    from torch.nn.utils import parametrize

    from bnnkit.plugins import get_registry
    from bnnkit.recipe import load_recipe

    sets = {"inference": '{name = "sngp", spectral_norm = true}', "model.head": '{name = "sngp"}'}
    with registered(head_sngp, method_sngp) as registry:
        assert registry.get("method", "sngp")
        r = load_recipe(QUICKSTART, [f"{k}={v}" for k, v in sets.items()], get_registry())
        from bnnkit.engine.build import build

        detector, method = build(r, num_train=10)
        convs = [m for m in detector.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(parametrize.is_parametrized(m, "weight") for m in convs)
        assert not any(parametrize.is_parametrized(m) for m in detector.head.modules())
        with pytest.raises(ValueError, match="fine-tuned backbone"):
            method.begin_phase("head", 1, 1)
        method.begin_phase("finetune", 1, 1)


@pytest.mark.parametrize("name", ["sngp", "gp"])
def test_quickstart_trains_evaluates_and_predicts(synth_root, tmp_path, name):
    sets = {
        "inference": f'{{name = "{name}"}}',
        "model.head": f'{{name = "{name}"}}',
        "train.backbone": '"frozen"',
        "train.epochs": 4,
    }
    with registered(head_sngp, method_sngp, head_gp, method_gp):
        listed = invoke(["plugins", "--kind", "method"])
        assert "sngp" in listed and "gp" in listed
        result = train_and_evaluate(QUICKSTART, tmp_path, data=synth_root, backbone=None, sets=sets)
        assert result.meta["method"] == name
        assert result.metrics["method"] == name
        assert result.metrics["seen"]["epistemic_uncertainty"] > 0
        images = sorted(synth_root.glob("imagenet_midjourney/val/*/*.png"))[:3]
        out = invoke(["predict", str(result.run), *map(str, images), "--format", "json"])
        rows = json.loads(out)["predictions"]
        assert len(rows) == 3 and not any(row["error"] for row in rows)


def test_sngp_finetunes_jointly_with_spectral_norm(synth_root, tmp_path):
    sets = {
        "inference": '{name = "sngp", spectral_norm = true, covariance = "diagonal"}',
        "model.head": '{name = "sngp", num_inducing = 64}',
        "train.epochs": 1,
    }
    with registered(head_sngp, method_sngp):
        result = train_and_evaluate(QUICKSTART, tmp_path, data=synth_root, backbone=None, sets=sets)
        assert [row["phase"] for row in result.meta["history"]] == ["finetune"]
        assert result.meta["method_meta"]["covariance"] == "diagonal"
        assert result.metrics["seen"]["epistemic_uncertainty"] > 0


def test_gp_likelihood_reads_a_batch_of_exactly_c_images(fitted):
    """gpytorch's SoftmaxLikelihood transposes a batch of C (= 2) images; ours does not: the
    ELBO's data term of a 2-image batch is the mean of the two images' own."""
    from bnnkit_plugins.head_gp import import_gpytorch

    method = fitted["gp"]
    xb, yb = torch.tensor([[-1.5, 0.0], [1.5, 0.5]]), torch.tensor([0, 1])  # a real, a fake

    def nll(rows: torch.Tensor, targets: torch.Tensor) -> float:
        torch.manual_seed(0)
        with torch.no_grad(), import_gpytorch().settings.num_likelihood_samples(20000):
            return float(method.training_loss(rows, targets).nll)

    both = nll(xb, yb)
    alone = (nll(xb[:1], yb[:1]) + nll(xb[1:], yb[1:])) / 2
    assert both == pytest.approx(alone, rel=0.02)


def test_gp_head_phase_initialises_on_a_draw_of_the_whole_training_set():
    """DUE initialises on a random sample of the training features; the first batch of a
    sorted training set holds one cluster only, so the lazy first-batch path could not."""
    method = _gp()
    far = torch.cat([torch.randn(300, D) - 20, torch.randn(300, D) + 20])  # sorted: two clusters
    targets = torch.cat([torch.zeros(300), torch.ones(300)]).long()
    method.begin_head_phase(far, targets)
    strategy = method.gp_head.gp.variational_strategy.base_variational_strategy
    points = strategy.inducing_points.detach()[0]
    assert (points[:, 0] < -10).any() and (points[:, 0] > 10).any()  # both clusters
    before = strategy.inducing_points.detach().clone()
    method.begin_head_phase(far[:10] * 0, targets[:10])  # a resumed phase: kept as it is
    torch.testing.assert_close(strategy.inducing_points.detach(), before)
    lazy = _gp()
    lazy.training_loss(far[:64], targets[:64])  # for contrast: a first batch sees one cluster
    first = lazy.gp_head.gp.variational_strategy.base_variational_strategy.inducing_points
    assert (first.detach()[0, :, 0] < -10).all()


def test_the_trainer_hands_the_head_phase_its_training_set(synth_root, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(GP, "begin_head_phase", lambda self, f, t: seen.append((len(f), len(t))))
    sets = {"inference": '{name = "gp"}', "model.head": '{name = "gp"}',
            "train.backbone": '"frozen"', "train.head_epochs": 1}  # fmt: skip
    with registered(head_gp, method_gp):
        result = train_and_evaluate(QUICKSTART, tmp_path, data=synth_root, backbone=None, sets=sets)
    assert seen == [(result.meta["num_train"], result.meta["num_train"])]
