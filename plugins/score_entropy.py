"""Score: ``entropy``, the entropy of the posterior predictive (total uncertainty, nats).

``H(mean_k p[k, b])``, :func:`bnnkit.metrics.uncertainty.decompose`'s ``total``: what
``Predictions.score("total")`` gave before scores were plugins (``total`` is an alias). No fit.
"""

from __future__ import annotations

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.metrics.uncertainty import decompose
from bnnkit.scores.base import Score, ScoreInputs


class PredictiveEntropy(Score):
    summary = "entropy of the posterior predictive (total uncertainty)"
    source = "bnnkit (decompose: total)"

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        return self.as_output(decompose(inputs.probs.detach().float().cpu())["total"])


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("entropy", PredictiveEntropy)
