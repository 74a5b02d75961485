"""Adversarial conditions (``--degrade fgsm:EPS`` / ``pgd:EPS,STEPS``): FGSM against a hand
computation of the predictive-mean gradient, PGD's monotone loss and eps ball, the success /
caught counts, the spec syntax, and ``bnnkit evaluate --degrade fgsm:0.03`` end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from bnnkit.cli import main
from bnnkit.data.dataset import Normalisation
from bnnkit.data.degrade import Degradation, parse_degradations
from bnnkit.engine.evaluate import attack
from bnnkit.engine.evaluate.write import CLEAN
from bnnkit.errors import UsageError
from bnnkit.metrics.records import Predictions

NORM = Normalisation((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


class TinyDetector(nn.Module):
    """Features = the per-channel mean of the normalised image (differentiable, linear)."""

    normalisation = NORM
    feature_dim = 3

    def feature_map(self, images: Tensor) -> Tensor:
        return images

    def pool_features(self, fmap: Tensor) -> Tensor:
        return fmap.mean(dim=(2, 3))


class FixedSamples:
    """A 'posterior' of K fixed linear heads ``W_k f + b_k`` (``head``: their mean)."""

    def __init__(self, w: Tensor, b: Tensor, no_grad: bool = False) -> None:
        self.w, self.b, self.no_grad = w, b, no_grad  # [K, 2, 3], [K, 2]
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.head.weight.copy_(w.mean(0))
            self.head.bias.copy_(b.mean(0))

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        with torch.set_grad_enabled(not self.no_grad and torch.is_grad_enabled()):
            return torch.einsum("bd,kcd->kbc", features, self.w) + self.b.unsqueeze(1)

    def sample(self, features: Tensor, k: int) -> Tensor:
        return torch.softmax(self.sample_logits(features, k), -1)


def _method(seed: int = 0, k: int = 3, same_sign: bool = False) -> FixedSamples:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, 2, 3, generator=g)
    if same_sign:  # every sample's fake-minus-real direction has the same signs
        w[:, 1] = w[:, 0] + torch.tensor([1.0, -2.0, 0.5]) * (1 + torch.rand(k, 1, generator=g))
    return FixedSamples(w, torch.randn(k, 2, generator=g))


def _pixels(n: int = 4, size: int = 5, seed: int = 1) -> Tensor:
    """Pixels in [0, 1], a few at the edges so the clip matters."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, 1.0
    return x


def _normalise(x: Tensor) -> Tensor:
    return (x - torch.tensor(NORM.mean).view(1, 3, 1, 1)) / torch.tensor(NORM.std).view(1, 3, 1, 1)


def _hand_gradient(method: FixedSamples, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d/dx of -log(1/K sum_k softmax(W_k f + b_k)[y]), f = mean over pixels of (x - m) / s."""
    m, s = np.array(NORM.mean), np.array(NORM.std)
    w, b = method.w.double().numpy(), method.b.double().numpy()
    n, _, h, wd = x.shape
    grads = np.zeros_like(x)
    for i in range(n):
        f = ((x[i] - m[:, None, None]) / s[:, None, None]).mean(axis=(1, 2))
        z = np.einsum("kcd,d->kc", w, f) + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p_bar = p[:, y[i]].mean()
        # d p_k[y] / d f = p_k[y] (W_k[y] - sum_c p_k[c] W_k[c])
        dp = (p[:, y[i], None] * (w[:, y[i]] - np.einsum("kc,kcd->kd", p, w))).mean(0)
        d_f = -dp / p_bar
        grads[i] = (d_f / s)[:, None, None] / (h * wd) * np.ones((3, h, wd))
    return grads


def test_fgsm_matches_the_hand_computation_in_pixel_space():
    method, x, y = _method(), _pixels(), torch.tensor([0, 1, 1, 0])
    deg = parse_degradations("fgsm:0.03")[0]
    got = attack.Attack(deg, TinyDetector(), method, k=3)(_normalise(x), y)
    pixels = got * torch.tensor(NORM.std).view(1, 3, 1, 1) + torch.tensor(NORM.mean).view(
        1, 3, 1, 1
    )
    grad = _hand_gradient(method, x.double().numpy(), y.numpy())
    assert np.all(grad != 0)
    want = np.clip(x.double().numpy() + 0.03 * np.sign(grad), 0.0, 1.0)
    np.testing.assert_allclose(pixels.double().numpy(), want, atol=1e-5)
    assert np.all(want[:, :, 0, 1] <= 1.0) and not np.allclose(want, x.numpy())


def test_fgsm_is_one_signed_step_of_the_loss_it_is_given():
    x, y = _pixels(), torch.tensor([1, 0, 1, 0])
    w = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(3))

    def loss(p: Tensor, labels: Tensor) -> Tensor:
        return ((p * w).sum(dim=(1, 2, 3)) * (2 * labels - 1)).sum()

    want = (x + 0.1 * torch.sign(w.expand_as(x) * (2 * y - 1).view(-1, 1, 1, 1))).clamp(0, 1)
    torch.testing.assert_close(attack.fgsm(loss, x, y, 0.1), want)


def test_pgd_increases_the_loss_at_every_step_and_stays_in_the_ball():
    detector, method = TinyDetector(), _method(seed=2, same_sign=True)
    x, y, eps = _pixels(n=6, seed=4), torch.tensor([0, 1, 0, 1, 1, 0]), 0.05
    loss, used = attack.predictive_loss(detector, method, 3)

    def pixel_loss(p: Tensor, labels: Tensor) -> Tensor:
        return loss(_normalise(p), labels)

    losses: list[float] = []
    iterates: list[Tensor] = []
    adv = attack.pgd(pixel_loss, x, y, eps, steps=8,
                     on_step=lambda i, a, v: (losses.append(v), iterates.append(a)))  # fmt: skip
    losses.append(float(pixel_loss(adv, y)))
    assert used() == "predictive_mean"
    assert len(losses) == 9
    assert all(b >= a - 1e-9 for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] > losses[0] + 1e-3
    for a in iterates:
        assert float((a - x).abs().max()) <= eps + 1e-6
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_a_loss_without_an_image_gradient_is_refused():
    x, y = _pixels(), torch.tensor([0, 1, 0, 1])
    with pytest.raises(RuntimeError, match="no gradient with respect to the image"):
        attack.fgsm(lambda p, labels: p.detach().sum(), x, y, 0.1)


def test_pgd_stays_in_the_ball_of_a_nonlinear_detector():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))  # fmt: skip
    x, y = _pixels(seed=5), torch.tensor([0, 1, 0, 1])

    def loss(p: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(net(p), labels, reduction="sum")

    adv = attack.pgd(loss, x, y, 0.02, steps=5)
    assert float((adv - x).abs().max()) <= 0.02 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        assert float(loss(adv, y)) > float(loss(x, y))


def test_a_method_without_sample_gradients_is_attacked_through_its_head():
    method = _method()
    method.no_grad = True
    detector, x, y = TinyDetector(), _pixels(), torch.tensor([0, 1, 1, 0])
    deg = Degradation("fgsm", 0.03)
    with torch.no_grad():  # as in the evaluation loop
        got = attack.Attack(deg, detector, method, k=3)(_normalise(x), y)
    assert not torch.allclose(got, _normalise(x))
    assert attack.target(detector, method, 2) == "map_head"
    method.no_grad = False
    assert attack.target(detector, method, 2) == "predictive_mean"


def _record(p_fake: list[float], labels: list[int], score: list[float], order=None):
    n = len(p_fake)
    idx = torch.arange(n) if order is None else torch.tensor(order)
    probs = torch.tensor(p_fake)[idx]
    return Predictions(
        probs, torch.zeros(n), torch.zeros(n), torch.zeros(n), labels=torch.tensor(labels)[idx],
        generators=torch.zeros(n, dtype=torch.long), indices=idx,
        scores={"entropy": torch.tensor(score, dtype=torch.float64)[idx]},
    )  # fmt: skip


def test_record_counts_successes_and_catches_on_clean_correct_images():
    labels = [1, 1, 0, 0, 1]
    clean = _record([0.9, 0.8, 0.2, 0.7, 0.3], labels, [0.1] * 5)  # 3 wrong: images 3 and 4
    # attacked, in another order: image 0 flips (caught), 1 flips (not caught), 2 holds
    attacked = _record([0.4, 0.45, 0.1, 0.2, 0.9], labels, [0.8, 0.2, 0.9, 0.9, 0.9],
                       order=[4, 3, 2, 1, 0])  # fmt: skip
    records = {CLEAN: clean, "fgsm:0.1": attacked}
    deg = parse_degradations("fgsm:0.1")[0]
    got = attack.record(deg, records, 0.5, "entropy", attack.target(TinyDetector(), _method(), 2))
    block = got["attack"]
    assert (block["n_attacked"], block["n_succeeded"], block["n_caught"]) == (3, 2, 1)
    assert block["success_rate"] == pytest.approx(2 / 3)
    assert block["caught_rate"] == pytest.approx(1 / 2)
    assert (block["eps"], block["steps"], block["target"]) == (0.1, 1, "predictive_mean")
    assert attack.record(parse_degradations("jpeg:50")[0], records, 0.0, "x", "") == {}


def test_attack_specs_parse_and_name_themselves():
    pgd = parse_degradations("pgd:0.0157,10,fgsm:0.01/0.03")
    assert [d.name for d in pgd] == ["pgd:0.0157,10", "fgsm:0.01", "fgsm:0.03"]
    assert pgd[0].record()["values"] == [0.0157, 10]
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    assert pgd[1](image).tobytes() == image.tobytes()  # the attack runs per batch, not here
    with pytest.raises(UsageError, match="0.0314"):
        parse_degradations("pgd:4/255,10")  # '/' lists alternatives: 4 is no radius
    with pytest.raises(UsageError, match="takes 2 values"):
        parse_degradations("pgd:0.03")
    with pytest.raises(UsageError, match="integer"):
        parse_degradations("pgd:0.03,2.5")


def test_evaluate_fgsm_writes_the_attack_block(runner, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = runner.invoke(main, ["evaluate", str(run), "--ood", "midjourney", "-k", "2",
                                  "--degrade", "fgsm:0.03,pgd:0.3,5"])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    entry = metrics["degradations"]["fgsm:0.03"]
    block = entry["attack"]
    assert 0.0 <= block["success_rate"] <= 1.0
    assert block["caught_rate"] is None or 0.0 <= block["caught_rate"] <= 1.0
    assert block["target"] == "predictive_mean" and block["eps"] == 0.03
    assert block["n_attacked"] > 0 and block["n_succeeded"] <= block["n_attacked"]
    assert block["score"] == metrics["abstention"]["score"]
    assert entry["kind"] == "fgsm" and entry["abstention"]["by_score"]
    strong = metrics["degradations"]["pgd:0.3,5"]  # a large ball: the tiny run's verdicts flip
    assert strong["attack"]["success_rate"] > 0.5 and strong["attack"]["steps"] == 5
    report = (run / "report.md").read_text()
    assert "attack success" in report
