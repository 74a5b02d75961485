"""Score: ``max_logit``, minus the largest posterior-mean logit (Hendrycks et al. 2022).

``-max_c mean_k logits[k, b, c]`` through :meth:`pytorch_ood.detector.MaxLogit.score`. No fit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.base import Score, ScoreInputs


class NegativeMaxLogit(Score):
    summary = "minus the largest posterior-mean logit"
    source = "pytorch-ood MaxLogit (Hendrycks et al. 2022)"

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        from pytorch_ood.detector import MaxLogit  # lazy: pytorch-ood imports slowly

        logits = inputs.logits.detach().to("cpu", torch.float64).mean(0)
        return self.as_output(MaxLogit.score(logits))


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("max_logit", NegativeMaxLogit)
