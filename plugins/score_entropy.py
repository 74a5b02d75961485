"""Score: ``entropy``, the entropy of the posterior predictive (total uncertainty, nats).

``H(mean_k p[k, b])``, :func:`bnnkit.metrics.uncertainty.decompose`'s ``total``: what
``Predictions.score("total")`` gave before scores were plugins (``total`` is an alias). No fit.
Computed in float64 from the logits (:func:`bnnkit.metrics.uncertainty.decompose_from_logits`),
so a near-saturated predictive keeps a small positive entropy instead of 0.
"""

from __future__ import annotations

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.predictive import PredictiveScore


class PredictiveEntropy(PredictiveScore):
    summary = "entropy of the posterior predictive (total uncertainty)"
    source = "bnnkit (decompose: total)"
    component = "total"


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("entropy", PredictiveEntropy)
