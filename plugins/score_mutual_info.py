"""Score: ``mutual_info``, the mutual information between label and weights (epistemic, nats).

BALD's ``H(mean_k p) - mean_k H(p_k)``, :func:`bnnkit.metrics.uncertainty.decompose`'s
``epistemic``: what ``Predictions.score("epistemic")`` gave before scores were plugins
(``epistemic`` is an alias). Exactly 0 for deterministic methods (MAP). No fit. Computed in
float64 from the logits (:func:`bnnkit.metrics.uncertainty.decompose_from_logits`).
"""

from __future__ import annotations

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.predictive import PredictiveScore


class MutualInformation(PredictiveScore):
    summary = "mutual information of label and weights (epistemic uncertainty)"
    source = "bnnkit (decompose: epistemic; Houlsby et al. 2011)"
    component = "epistemic"


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("mutual_info", MutualInformation)
