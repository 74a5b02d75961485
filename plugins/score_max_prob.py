"""Score: ``max_prob``, one minus the top class's posterior predictive probability.

``1 - max_c mean_k p[k, b, c]`` (Hendrycks & Gimpel 2017, averaged over the K posterior samples):
what ``Predictions.score("max_prob")`` gave before scores were plugins. In ``[0, 0.5]`` for two
classes; no fit. Computed in float64 from the logits as the other classes' predictive
probability (``min_c mean_k p`` for two classes,
:func:`bnnkit.metrics.uncertainty.max_prob_from_logits`): the float32 ``1 - max`` was exactly 0
for every image with a logit gap above ~16.6, so confident images tied.
"""

from __future__ import annotations

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.predictive import PredictiveScore


class MaxProb(PredictiveScore):
    summary = "1 - max-probability of the posterior predictive"
    source = "bnnkit (Hendrycks & Gimpel 2017)"
    component = "max_prob"


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("max_prob", MaxProb)
