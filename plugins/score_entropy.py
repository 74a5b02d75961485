"""Score: ``entropy``, the entropy of the posterior predictive (total uncertainty, nats).

``H(mean_k p[k, b])``, :func:`bnnkit.metrics.uncertainty.decompose`'s ``total``: what
``Predictions.score("total")`` gave before scores were plugins (``total`` is an alias). No fit.
Computed in float64 from the logits (:func:`bnnkit.metrics.uncertainty.decompose_from_logits`),
so a near-saturated predictive keeps a small positive entropy instead of 0.
"""

from __future__ import annotations

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.metrics.uncertainty import predictive_uncertainty
from bnnkit.scores.base import Score, ScoreInputs


class PredictiveEntropy(Score):
    summary = "entropy of the posterior predictive (total uncertainty)"
    source = "bnnkit (decompose: total)"

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        logits, probs = inputs.logits.detach().cpu(), inputs.probs.detach().cpu()
        return self.as_output(predictive_uncertainty(logits, probs)["total"])


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("entropy", PredictiveEntropy)
