"""Score: ``mahalanobis``, the distance to the nearest class Gaussian (Lee et al. 2018).

pytorch-ood's :class:`~pytorch_ood.detector.Mahalanobis`: class means and one shared covariance
fitted on the training features (classes real/fake), score ``min_c 0.5 (z - mu_c)^T S^-1
(z - mu_c)`` with ``S`` the within-class scatter matrix (not divided by N) plus a ``1e-6``
ridge, as pytorch-ood computes it. The features are first projected on the principal
components of the training features and whitened (option ``dims``, see
:mod:`bnnkit.scores.features`), which keeps the covariance invertible on tiny runs.
"""

from __future__ import annotations

from typing import Any

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.features import DetectorScore


class Mahalanobis(DetectorScore):
    summary = "Mahalanobis distance to the nearest class mean (shared covariance)"
    source = "pytorch-ood Mahalanobis (Lee et al. 2018)"
    _attrs = ("mu", "cov", "precision")

    def _detector(self) -> Any:
        from pytorch_ood.detector import Mahalanobis as Detector  # lazy: imports slowly

        return Detector(None)


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("mahalanobis", Mahalanobis)
