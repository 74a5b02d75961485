"""Score: ``vim``, virtual-logit matching (Wang et al. 2022).

pytorch-ood's :class:`~pytorch_ood.detector.ViM`: the norm of the features' residual outside
the principal subspace (dimension ``d``) of the training features, scaled to the logits, minus
the energy of the logits. ViM needs the classifier's last layer ``W, b``. bnnkit's heads may be
Bayesian (no single ``W``), so the score fits ``W, b`` by least squares of the posterior-mean
logits of the training images on their features (minimum-norm solution when D >= N). For every
head whose mean logit is affine in the features (linear, BBB and LRT heads, MC dropout, Laplace,
a linear-head ensemble: the mean of affine maps is affine) this recovers the mean ``W, b``
exactly when N > D, whatever the method, and it is the best affine approximation otherwise; it
needs nothing but what evaluation already has. The energy term uses these fitted logits.

The value is ``alpha * |x_res| - logsumexp(logits)``: the log-odds of the paper's ViM score (the
softmax probability of the virtual logit ``alpha * |x_res|`` beside the C logits), the same
ranking without its saturation at 1. As in the paper, ``x_res`` is the part of ``x - o``
(``o = -pinv(W) b``, where the logits vanish) outside the top-``d`` eigenvectors of the
training ``(x - o)``'s second moment, and ``alpha`` the mean training max-logit over the mean
training residual norm.

``d = "auto"`` is ``max(1, min(D // 2, r // 2))`` with ``r`` the numerical rank of the centred
training features: the paper keeps a principal subspace of roughly half the width on wide
backbones, and on tiny runs (r <= N - 1 < D) the subspace must be smaller than the training
span or every training residual is 0. ViM itself needs no covariance inverse, so no projection
is applied: the residual outside the training span is exactly what it measures.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bnnkit import Field, PluginOptions, hookimpl
from bnnkit.errors import UsageError
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.base import Score, ScoreInputs
from bnnkit.scores.features import AutoInt

_TENSORS = ("w", "b", "u", "principal_subspace")


def affine_fit(features: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """``W[C, D], b[C]`` minimising ``|features @ W.T + b - logits|`` (minimum norm W)."""
    x, y = features.double(), logits.double()
    xm, ym = x.mean(0), y.mean(0)
    w = torch.linalg.lstsq(x - xm, y - ym, driver="gelsd").solution.T  # [C, D]
    return w.float().contiguous(), (ym - w @ xm).float().contiguous()


class VirtualLogit(Score):
    summary = "virtual-logit matching: residual norm outside the principal subspace"
    source = "pytorch-ood ViM (Wang et al. 2022)"
    fit_on = "train"

    class Options(PluginOptions):
        d: AutoInt = Field(
            "auto", description="principal subspace dimension ('auto': min(D // 2, rank // 2))"
        )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.detector: Any = None
        self.facts: dict[str, Any] = {}

    @staticmethod
    def _detector(d: int, w: Tensor, b: Tensor) -> Any:
        from pytorch_ood.detector import ViM  # lazy: imports slowly

        return ViM(None, d=d, w=w, b=b)

    def fit(self, inputs: ScoreInputs, labels: Tensor) -> None:
        feats = inputs.features.detach().to("cpu", torch.float32)
        n, dim = feats.shape
        w, b = affine_fit(feats, inputs.logits.detach().to("cpu", torch.float64).mean(0))
        rank = int(torch.linalg.matrix_rank((feats - feats.mean(0)).double()))
        d = max(1, min(dim // 2, rank // 2)) if self.opts.d == "auto" else int(self.opts.d)
        if d >= min(rank, dim):
            raise UsageError(
                f"score 'vim': d = {d} leaves no residual (the {n} training features span "
                f"{rank} of {dim} dimensions)",
                hint="use a smaller d, or 'auto'",
            )
        detector = self._detector(d, w, b)
        detector.fit_features(feats, labels.detach().cpu())
        if not math.isfinite(detector.alpha):
            raise UsageError(f"score 'vim': the training residuals vanish at d = {d}")
        self.detector = detector
        self.facts = {"n": int(n), "features": int(dim), "d": d, "alpha": detector.alpha}
        self.fitted = True

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        self.check_fitted()
        return self.as_output(self.detector.predict_features(inputs.features.detach().cpu()))

    def state_dict(self) -> dict[str, Tensor]:
        self.check_fitted()
        return {k: getattr(self.detector, k).detach().cpu().contiguous().clone() for k in _TENSORS}

    def meta(self) -> dict[str, Any]:
        return dict(self.facts)

    def load_state_dict(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        detector = self._detector(int(meta["d"]), state["w"], state["b"])
        for key in _TENSORS:
            setattr(detector, key, state[key])
        detector.alpha = float(meta["alpha"])
        self.detector, self.facts, self.fitted = detector, dict(meta), True


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("vim", VirtualLogit)
