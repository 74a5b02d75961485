"""Score: ``rel_mahalanobis``, the relative Mahalanobis distance (Ren et al. 2021).

pytorch-ood's :class:`~pytorch_ood.detector.RMD`: the squared Mahalanobis distance to the
nearest class Gaussian minus that to one background Gaussian fitted on all training features,
``min_c d_c(z) - d_0(z)``, which removes what is common to both classes (better on near-OOD).
Same projection as ``mahalanobis`` (option ``dims``, :mod:`bnnkit.scores.features`).
"""

from __future__ import annotations

from typing import Any

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.features import DetectorScore


class RelativeMahalanobis(DetectorScore):
    summary = "class Mahalanobis distance minus the background Gaussian's"
    source = "pytorch-ood RMD (Ren et al. 2021)"
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


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("rel_mahalanobis", RelativeMahalanobis)
