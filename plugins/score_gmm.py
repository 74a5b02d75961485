"""Score: ``gmm``, the negative log-density of a class-conditional Gaussian model (DDU).

pytorch-ood's :class:`~pytorch_ood.detector.GMM`: one Gaussian per class with its own mean and
covariance (divided by the class count, plus a ridge ``reg`` on the diagonal) and the class
fractions as mixing weights; score ``-log sum_c pi_c N(z | mu_c, S_c)`` in float64. This is the
feature-density part of DDU (Mukhoti et al. 2023, "Deep Deterministic Uncertainty"): Gaussian
discriminant analysis fitted on the training features, its log-density (logsumexp over the
classes) as the epistemic score. Two small differences to DDU's code: pytorch-ood divides the
covariance by N_c (DDU: N_c - 1) and weights classes by their frequency, and DDU searches the
jitter from 0 upwards; here the ridge starts at ``reg`` and is raised tenfold (up to 5 times)
when a covariance is not positive definite, the value used is in the fit's meta.

The features are projected and whitened first (option ``dims``, at most half the smallest
class's count: :mod:`bnnkit.scores.features`). Whitening divides each principal coordinate by its
standard deviation, which shifts every log-density by the same constant; the score adds it
back, so it is the negative log-density of the features' coordinates in the kept principal
subspace (of the features themselves when ``dims`` keeps every direction), not of their
whitened image (fits saved before this correction are refitted).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnnkit import Field, hookimpl
from bnnkit.errors import UsageError
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.features import DetectorScore, ProjectedOptions


class GaussianDensity(DetectorScore):
    summary = "negative log-density of class-conditional Gaussians (GDA / DDU)"
    source = "pytorch-ood GMM (DDU, Mukhoti et al. 2023)"
    _attrs = ("_mu", "_precision", "_log_det", "_log_weights")
    _dtype = torch.float64
    _convention = "log-density of the principal coordinates"

    class Options(ProjectedOptions):
        reg: float = Field(1e-6, gt=0, description="first ridge on each class covariance")

    def _detector(self, reg: float | None = None) -> Any:
        from pytorch_ood.detector import GMM  # lazy: imports slowly

        return GMM(None, reg=self.opts.reg if reg is None else reg)

    def _max_dims(self, labels: Tensor) -> int:
        return int(torch.bincount(labels, minlength=2).min()) // 2

    def _fit_detector(self, z: Tensor, labels: Tensor) -> Any:
        reg = self.opts.reg
        for _ in range(6):
            try:
                detector = self._detector(reg).fit_features(z, labels)
            except ValueError:  # a covariance not positive definite at this ridge
                reg *= 10
                continue
            self.reg_used = reg
            return detector
        raise UsageError(f"score 'gmm': no class covariance is positive definite up to reg={reg}")

    def _values(self, detector_scores: Tensor) -> Tensor:
        # the whitened coordinates are the principal ones divided by their standard deviations
        # sigma_i (the basis's column norms are 1 / sigma_i): -log p = -log p_white + sum log s_i
        if self.projection is None:
            return detector_scores
        return detector_scores - self.projection.basis.norm(dim=0).log().sum()

    def meta(self) -> dict[str, Any]:
        reg = getattr(self, "reg_used", None)
        return {**super().meta(), **({"reg": reg} if reg is not None else {})}


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("gmm", GaussianDensity)
