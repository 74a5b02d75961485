"""White-box adversarial conditions of ``bnnkit evaluate``: ``--degrade fgsm:EPS`` and
``--degrade pgd:EPS,STEPS`` (the spec syntax is :mod:`bnnkit.data.degrade`'s).

What is attacked: the detector's **posterior predictive mean** ``p(y | x) = 1/K sum_k
softmax(logits_k)``, the K head samples of :func:`~bnnkit.engine.features.loop.head_outputs`
(the run's temperature included), with gradients through the head, the backbone and the frontend
to the image. The loss is the untargeted one, ``-log p(true label | x)`` (computed as a
log-sum-exp of the samples' log-softmax, so a saturated prediction still has a gradient), which
the attack maximises. A method that draws fresh weights per call (bbb, mcdropout, ...) gets fresh
samples at every step (an expectation over the posterior, as EOT attacks do). A method whose
samples carry no gradient to the features is attacked through its head's own forward (the MAP /
mean logits) instead: ``attack.target`` in ``metrics.json`` says which (``predictive_mean`` or
``map_head``). Every built-in method's samples are differentiable in the features (kflaplace's
and the SG-MCMC methods' weight draws are constants of the attack), so all use the predictive.

Where: in pixel space, on the 0-1 scale, *before* the input normalisation
(``detector.normalisation``): each batch of normalised images is mapped back to pixels, attacked
there, clipped to [0, 1] and normalised again. The image the attack starts from is the
evaluation transform's output (decoded, cropped or resized to ``image_size``), as for every
condition, and the perturbation is not quantised to 8 bits.

- FGSM (Goodfellow et al., 2015): ``x' = clip(x + eps * sign(grad_x loss), 0, 1)``.
- PGD, L-inf (Madry et al., 2018): ``STEPS`` steps ``x <- clip(proj_eps(x + alpha *
  sign(grad_x loss)), 0, 1)`` with ``alpha = 2.5 * eps / STEPS``, from the clean image (no random
  start, so re-evaluating gives the same images, as every degradation does).

Implemented here (about thirty lines) rather than with torchattacks: its latest release (3.5.1)
pins ``requests~=2.25.1``, which would downgrade ``idna`` 3 -> 2 under ``anyio`` and ``httpx``
in the pinned environment; and it attacks a model's logits, while the target here is the
log-predictive of a K-sample posterior.

What is reported (:func:`record`, the ``attack`` block of the condition's entry in
``metrics.json``): ``n_attacked`` images correctly classified clean (the p(fake) >= 0.5
verdict, matched by dataset index), ``success_rate`` the share of them whose verdict flips under
the attack, and ``caught_rate`` the share of those successful attacks the abstention score
catches (above its clean-calibrated threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnnkit.data.degrade import ATTACKS, Degradation
from bnnkit.engine.evaluate.write import CLEAN
from bnnkit.engine.features.loop import head_outputs
from bnnkit.engine.features.tiles import tiling_of
from bnnkit.errors import UsageError
from bnnkit.metrics.records import Predictions

__all__ = ["PGD_STEP", "Attack", "fgsm", "pgd", "predictive_loss", "record", "step", "target"]

#: PGD's step size, times ``eps / steps`` (Madry et al.'s 2.5: the ball is crossed 2.5 times).
PGD_STEP = 2.5

#: ``loss(pixels, labels)``: a scalar the attack increases (summed over the batch).
Loss = Callable[[Tensor, Tensor], Tensor]


def fgsm(loss: Loss, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """One signed-gradient step: ``clip(x + eps * sign(grad_x loss(x, y)), 0, 1)``."""
    return pgd(loss, x, y, eps, steps=1, alpha=eps)


def pgd(
    loss: Loss,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    alpha: float | None = None,
    on_step: Callable[[int, Tensor, float], None] | None = None,
) -> Tensor:
    """L-inf PGD from ``x`` (no random start): ``steps`` signed-gradient steps of ``alpha``
    (default ``PGD_STEP * eps / steps``), each projected on the ``eps`` ball around ``x`` and on
    [0, 1]. ``on_step(i, x_i, loss_before_step_i)`` sees every iterate."""
    alpha = PGD_STEP * eps / steps if alpha is None else alpha
    x = x.detach()
    adv = x.clone()
    for i in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():  # evaluation loops run under no_grad
            value = loss(adv, y)
            if not value.requires_grad:
                raise RuntimeError(
                    "the attacked loss has no gradient with respect to the image (a frontend, "
                    "backbone or head that is not differentiable?)"
                )
            (grad,) = torch.autograd.grad(value, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0.0, 1.0)
        if on_step is not None:
            on_step(i, adv.detach(), float(value.detach()))
    return adv.detach()


def _differentiable(method: Any, features: Tensor, k: int) -> Tensor | None:
    """The K sample logits on ``features`` when they carry its gradient (or none is asked
    for: ``features`` need none), else None."""
    logits = head_outputs(method, features, k)[0]
    return logits if logits.requires_grad or not features.requires_grad else None


def predictive_loss(detector: Any, method: Any, k: int) -> tuple[Loss, Callable[[], str]]:
    """``-sum log p(y | x)`` of the posterior predictive mean over ``k`` head samples, as a
    function of *normalised* images (the map_head fallback when the samples have no gradient),
    and a function naming the target last used."""
    used = {"target": "predictive_mean"}

    def loss(images: Tensor, labels: Tensor) -> Tensor:
        feats = detector.pool_features(detector.feature_map(images)).float()
        logits = _differentiable(method, feats, k)
        if logits is None:  # e.g. a third-party method sampling under no_grad
            used["target"] = "map_head"
            return F.cross_entropy(method.head(feats).float(), labels, reduction="sum")
        log_mean = torch.logsumexp(torch.log_softmax(logits, -1), 0) - math.log(logits.shape[0])
        return -log_mean.gather(1, labels.view(-1, 1)).sum()

    return loss, lambda: used["target"]


@dataclass
class Attack:
    """The ``perturb`` of :func:`~bnnkit.engine.features.loop.stream_predictive` for one attack
    condition: normalised images -> pixels -> attacked -> normalised again."""

    degradation: Degradation
    detector: Any
    method: Any
    k: int

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        norm = self.detector.normalisation
        mean = images.new_tensor(norm.mean).view(1, -1, 1, 1)
        std = images.new_tensor(norm.std).view(1, -1, 1, 1)
        loss, _ = predictive_loss(self.detector, self.method, self.k)

        def pixel_loss(pixels: Tensor, y: Tensor) -> Tensor:
            return loss((pixels - mean) / std, y)

        pixels = (images.float() * std + mean).clamp(0.0, 1.0)
        eps = float(self.degradation.values[0])
        if self.degradation.kind == "fgsm":
            adv = fgsm(pixel_loss, pixels, labels, eps)
        else:
            adv = pgd(pixel_loss, pixels, labels, eps, int(self.degradation.values[1]))
        return ((adv - mean) / std).to(images.dtype)


def step(transform: Any, detector: Any, method: Any, k: int) -> Attack | None:
    """The per-batch attack of a condition whose transform starts with an attack degradation
    (``transform.first``), else None. Refused with ``--tiles`` (a grid of crops per image)."""
    deg = getattr(transform, "first", None)
    if not isinstance(deg, Degradation) or deg.kind not in ATTACKS:
        return None
    if tiling_of(transform) is not None:
        raise UsageError(
            f"--degrade {deg.name}: attacks run on whole images, not with --tiles",
            hint="evaluate the attack without --tiles",
        )
    return Attack(deg, detector, method, k)


def target(detector: Any, method: Any, k: int) -> str:
    """What the attacks on this run differentiate: ``predictive_mean`` or ``map_head``."""
    param = next(iter(method.head.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    probe = torch.zeros(2, detector.feature_dim, device=device, requires_grad=True)
    with torch.enable_grad():
        return "predictive_mean" if _differentiable(method, probe, k) is not None else "map_head"


def record(
    deg: Degradation, records: dict[str, Predictions], threshold: float, score: str, aimed: str
) -> dict[str, Any]:
    """``{"attack": {...}}`` for an attack condition (``{}`` for any other degradation): on the
    images correctly classified clean (``n_attacked``), the share whose verdict the attack flips
    (``success_rate``), and of those the share whose ``score`` exceeds its clean-calibrated
    ``threshold`` (``caught_rate``: abstention catches the attack). ``aimed``: what the attack
    differentiated (:func:`target`)."""
    if deg.kind not in ATTACKS:
        return {}
    clean, attacked = records[CLEAN], records[deg.name]
    row = {int(i): j for j, i in enumerate(clean.indices.tolist())}
    both = [(row[int(i)], j) for j, i in enumerate(attacked.indices.tolist()) if int(i) in row]
    c_idx = torch.tensor([a for a, _ in both], dtype=torch.long)
    a_idx = torch.tensor([b for _, b in both], dtype=torch.long)
    was_right = clean.correct[c_idx].bool()
    flipped = was_right & ~attacked.correct[a_idx].bool()
    threshold = float(threshold)
    caught = flipped & (attacked.score(score)[a_idx] > threshold)
    n, n_flip = int(was_right.sum()), int(flipped.sum())
    eps = float(deg.values[0])
    steps = 1 if deg.kind == "fgsm" else int(deg.values[1])
    return {
        "attack": {
            "kind": deg.kind,
            "norm": "linf",
            "eps": eps,
            "steps": steps,
            "step_size": eps if deg.kind == "fgsm" else PGD_STEP * eps / steps,
            "target": aimed,
            "n_attacked": n,
            "n_succeeded": n_flip,
            "n_caught": int(caught.sum()),
            "success_rate": n_flip / n if n else None,
            "caught_rate": int(caught.sum()) / n_flip if n_flip else None,
            "score": score,
            "threshold": threshold,
        }
    }
