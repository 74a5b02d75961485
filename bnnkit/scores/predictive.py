"""Shared piece of the scores read off the posterior predictive alone (``entropy``,
``mutual_info``, ``max_prob``): each is one component of
:func:`bnnkit.metrics.uncertainty.predictive_uncertainty`, computed in float64 from the logits
when they are given (so a near-saturated predictive keeps a small positive value instead of 0).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from bnnkit.metrics.uncertainty import predictive_uncertainty
from bnnkit.scores.base import Score, ScoreInputs

__all__ = ["PredictiveScore"]


class PredictiveScore(Score):
    """A score that is one ``component`` of the predictive uncertainty (``"total"``,
    ``"epistemic"``, ``"aleatoric"`` or ``"max_prob"``); no fit."""

    component: ClassVar[str] = ""

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        logits, probs = inputs.logits.detach().cpu(), inputs.probs.detach().cpu()
        return self.as_output(predictive_uncertainty(logits, probs)[self.component])
