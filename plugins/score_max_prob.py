"""Score: ``max_prob``, one minus the top class's posterior predictive probability.

``1 - max_c mean_k p[k, b, c]`` (Hendrycks & Gimpel 2017, averaged over the K posterior samples):
what ``Predictions.score("max_prob")`` gave before scores were plugins. In ``[0, 0.5]`` for two
classes; no fit.
"""

from __future__ import annotations

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.metrics.uncertainty import max_prob_score
from bnnkit.scores.base import Score, ScoreInputs


class MaxProb(Score):
    summary = "1 - max-probability of the posterior predictive"
    source = "bnnkit (Hendrycks & Gimpel 2017)"

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        return self.as_output(max_prob_score(inputs.probs.detach().float().cpu()))


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("max_prob", MaxProb)
