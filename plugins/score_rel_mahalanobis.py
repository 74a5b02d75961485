"""Score: ``rel_mahalanobis``, the relative Mahalanobis distance (Ren et al. 2021).

pytorch-ood's :class:`~pytorch_ood.detector.RMD`: the squared Mahalanobis distance to the
nearest class Gaussian minus that to one background Gaussian fitted on all training features,
``min_c d_c(z) - d_0(z)``, which removes what is common to both classes (better on near-OOD).
The class Gaussians share one covariance (the within-class scatter over N), the background's is
the total scatter over N, as in the paper. pytorch-ood 0.4 leaves both scatter matrices
undivided (plus a ``1e-6`` ridge), which gives the paper's value divided by N (the number of
training images the fit used): the score multiplies it back, so its values do not depend on how
many images the fit saw (fits saved before this correction are refitted). Same projection as
``mahalanobis`` (option ``dims``, :mod:`bnnkit.scores.features`); the distances are invariant
under it when it keeps every direction (``dims`` = the feature dimension on full-rank
features).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.features import DetectorScore


class RelativeMahalanobis(DetectorScore):
    summary = "class Mahalanobis distance minus the background Gaussian's"
    source = "pytorch-ood RMD (Ren et al. 2021)"
    _convention = "covariances divided by N"
    _attrs = (
        "mu",
        "cov",
        "precision",
        "background_mu",
        "background_cov",
        "background_precision",
    )

    def _detector(self) -> Any:
        from pytorch_ood.detector import RMD  # lazy: imports slowly

        return RMD(None)

    def _values(self, detector_scores: Tensor) -> Tensor:
        # pytorch-ood's precisions are N x the paper's (scatter not divided by N)
        return detector_scores * int(self.facts["n"])


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("rel_mahalanobis", RelativeMahalanobis)
