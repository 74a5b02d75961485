"""The prediction record: per-image results of the posterior predictive, one type everywhere.

Evaluation, ``bnnkit predict``, ``--explain``, the trainer's validation and the report all use
:class:`Predictions`: p(fake) from the mean of K posterior samples and the entropy decomposition
(nats, :func:`bnnkit.metrics.uncertainty.decompose`), optionally with each image's label,
generator index and dataset index (evaluation knows them; predicting files does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

from bnnkit.metrics.schema import SCORE_ALIASES
from bnnkit.metrics.uncertainty import decompose, decompose_from_logits

__all__ = ["DECOMPOSITION", "SCORES", "SCORE_ALIASES", "UNCERTAINTY_KEYS", "Predictions"]

UNCERTAINTY_KEYS = ("total", "aleatoric", "epistemic")
#: uncertainty scores of an image (higher = less certain): 1 - max-probability, entropy of the
#: mean predictive (total), mutual information (epistemic), expected entropy (aleatoric).
SCORES = ("max_prob", *UNCERTAINTY_KEYS)
#: scores any record can give without a recorded value (from p(fake) and the decomposition)
DECOMPOSITION = ("max_prob", "entropy", "mutual_info")
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
    #: ``[N, 1 + G]`` mean class probabilities of a generator-attribution head (``data.labels
    #: = "generator"``: class 0 real, 1 + g the g-th training generator); empty for two classes
    class_probs: Tensor = field(default_factory=lambda: torch.zeros(0))
    scores: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_probs(
        cls,
        probs: Tensor,
        *,
        scores: dict[str, Tensor] | None = None,
        logits: Tensor | None = None,
        **known: Tensor,
    ) -> Predictions:
        """From K posterior samples ``probs[K, B, 2]`` (reduced at once, so K x B is freed) and
        the batch's score values. With the ``logits`` the probs are the softmax of, the
        decomposition is computed from them (float64, :func:`decompose_from_logits`: a
        saturated predictive keeps a positive entropy, as the ``entropy`` and ``mutual_info``
        scores do); the parts are float64 either way.

        More than two classes (a generator-attribution head, class 0 real): p(fake) is
        1 - p(real) and the decomposition is that of the collapsed real-vs-fake predictive, so
        every binary number means what it does for a two-class head; the mean class
        probabilities are kept in ``class_probs``."""
        probs = probs.float().cpu()
        if probs.shape[-1] > 2:
            real, fake = probs[..., :1], probs[..., 1:]
            binary = torch.cat([real, fake.sum(-1, keepdim=True)], dim=-1)
            if logits is not None and logits.shape == probs.shape:
                z = logits.detach().float().cpu()
                logits = torch.cat([z[..., :1], z[..., 1:].logsumexp(-1, keepdim=True)], -1)
            record = cls.from_probs(binary, scores=scores, logits=logits, **known)
            record.p_fake = 1.0 - probs.mean(0)[:, 0]
            record.class_probs = probs.mean(0)
            return record
        if logits is not None and logits.shape == probs.shape:
            unc = decompose_from_logits(logits.detach().cpu())
        else:
            unc = decompose(probs.double())
        values = {k: v.detach().to("cpu", torch.float64) for k, v in (scores or {}).items()}
        return cls(
            probs.mean(0)[:, 1], unc["total"], unc["aleatoric"], unc["epistemic"], **known,
            scores=values,
        )  # fmt: skip

    @classmethod
    def empty(cls) -> Predictions:
        z = torch.zeros(0, dtype=torch.float64)
        return cls(torch.zeros(0), z, z, z)

    @property
    def attributed(self) -> bool:
        """Whether the record holds a generator-attribution head's class probabilities."""
        return self.class_probs.ndim == 2 and self.class_probs.shape[-1] > 2

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        if not parts:
            return cls.empty()
        names = list(parts[0].scores)
        if any(list(p.scores) != names for p in parts):
            raise ValueError("cannot concatenate records that hold different scores")
        out = {f: torch.cat([getattr(p, f) for p in parts]) for f in cls.tensor_fields()}
        return cls(**out, scores={n: torch.cat([p.scores[n] for p in parts]) for n in names})

    @classmethod
    def tensor_fields(cls) -> list[str]:
        """The names of the per-image tensor fields (every field but ``scores``)."""
        return [f.name for f in fields(cls) if f.name != "scores"]

    def select(self, index: slice | Tensor) -> Predictions:
        """The record of a subset of images (``index`` over the images)."""
        out = {f: getattr(self, f)[index] if getattr(self, f).numel() else getattr(self, f)
               for f in self.tensor_fields()}  # fmt: skip
        return Predictions(**out, scores={k: v[index] for k, v in self.scores.items()})

    def __len__(self) -> int:
        return int(self.p_fake.numel())

    @property
    def correct(self) -> Tensor:
        """Whether the p(fake) >= 0.5 verdict matches the label, per image."""
        return (self.p_fake >= 0.5).long() == self.labels

    def score(self, name: str) -> Tensor:
        """A score per image (higher = less certain / more likely unseen), as float64: the
        recorded value of score ``name`` (``total`` / ``epistemic`` are the names of
        ``entropy`` / ``mutual_info`` in metrics.json version 2), else, for ``max_prob``,
        ``entropy``, ``mutual_info`` and the decomposition's parts, from p(fake) and the
        decomposition."""
        canonical = SCORE_ALIASES.get(name, name)
        if canonical in self.scores:
            return self.scores[canonical].double()
        if name == "max_prob":  # 1 - max_c mean p_c = min_c mean p_c for two classes
            p = self.p_fake.double()
            return torch.minimum(p, 1.0 - p)
        part = {v: k for k, v in SCORE_ALIASES.items()}.get(name, name)
        if part in UNCERTAINTY_KEYS:
            return getattr(self, part).double()
        raise ValueError(f"unknown uncertainty score {name!r} (not recorded)")

    def uncertainty(self, row: int) -> dict[str, float]:
        """The three uncertainty parts of one image, as floats."""
        return {k: float(getattr(self, k)[row]) for k in UNCERTAINTY_KEYS}

    def numpy(self) -> dict[str, np.ndarray]:
        """Every tensor field as a numpy array (for plots); the scores are in ``scores``."""
        return {f: getattr(self, f).detach().cpu().numpy() for f in self.tensor_fields()}
