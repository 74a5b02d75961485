"""The prediction record: per-image results of the posterior predictive, one type everywhere.

Evaluation, ``bnnkit predict``, ``--explain``, the trainer's validation and the report all use
:class:`Predictions`: p(fake) from the mean of K posterior samples and the entropy decomposition
(nats, :func:`bnnkit.metrics.uncertainty.decompose`), optionally with each image's label,
generator index and dataset index (evaluation knows them; predicting files does not).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from bnnkit.metrics.uncertainty import decompose

__all__ = ["SCORES", "UNCERTAINTY_KEYS", "Predictions"]

UNCERTAINTY_KEYS = ("total", "aleatoric", "epistemic")
#: uncertainty scores of an image (higher = less certain): 1 - max-probability, entropy of the
#: mean predictive (total), mutual information (epistemic), expected entropy (aleatoric).
SCORES = ("max_prob", *UNCERTAINTY_KEYS)
_EMPTY_LONG = torch.zeros(0, dtype=torch.long)


@dataclass
class Predictions:
    """Per-image results, one entry per image, in input order (CPU tensors).

    ``generators`` indexes the evaluation's generator list, whose first ``n_seen`` entries are
    the seen generators; ``indices`` index the evaluated samples (files). Both, and ``labels``,
    are empty when unknown (predicting files).
    """

    p_fake: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    labels: Tensor = _EMPTY_LONG
    generators: Tensor = _EMPTY_LONG
    indices: Tensor = _EMPTY_LONG

    @classmethod
    def from_probs(cls, probs: Tensor, **known: Tensor) -> Predictions:
        """From K posterior samples ``probs[K, B, 2]`` (reduced at once, so K x B is freed)."""
        probs = probs.float().cpu()
        unc = decompose(probs)
        return cls(probs.mean(0)[:, 1], unc["total"], unc["aleatoric"], unc["epistemic"], **known)

    @classmethod
    def empty(cls) -> Predictions:
        z = torch.zeros(0)
        return cls(z, z, z, z)

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        if not parts:
            return cls.empty()
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def __len__(self) -> int:
        return int(self.p_fake.numel())

    @property
    def correct(self) -> Tensor:
        """Whether the p(fake) >= 0.5 verdict matches the label, per image."""
        return (self.p_fake >= 0.5).long() == self.labels

    def score(self, name: str) -> Tensor:
        """An uncertainty score per image (higher = less certain), as float64."""
        if name == "max_prob":  # 1 - max_c mean p_c: what metrics.uncertainty.max_prob_score gives
            p = self.p_fake.double()
            return 1.0 - torch.maximum(p, 1.0 - p)
        if name in UNCERTAINTY_KEYS:
            return getattr(self, name).double()
        raise ValueError(f"unknown uncertainty score {name!r}")

    def uncertainty(self, row: int) -> dict[str, float]:
        """The three uncertainty parts of one image, as floats."""
        return {k: float(getattr(self, k)[row]) for k in UNCERTAINTY_KEYS}

    def numpy(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (for plots)."""
        return {f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)}
