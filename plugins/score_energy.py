"""Score: ``energy``, the free energy of the posterior-mean logits (Liu et al. 2020).

``E = -T logsumexp(mean_k logits[k, b] / T)`` through
:meth:`pytorch_ood.detector.EnergyBased.score`, returned as is: the free energy itself (not its
negative), low on images like the training data and higher = more likely unseen, as every
score here. Liu et al. threshold the negative free energy ``-E`` as an in-distribution score;
that is the same ranking reversed. Option ``t`` (default 1) is the energy temperature, not the
run's calibration temperature, which evaluate has already applied to the logits. The logits
are averaged over the K posterior samples before the energy is taken. No fit. For a method that
only overrides ``sample`` the logits are log probabilities, whose energy carries little
information.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit import Field, PluginOptions, hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.base import Score, ScoreInputs


class Energy(Score):
    summary = "free energy -T logsumexp(logits / T) of the posterior-mean logits"
    source = "pytorch-ood EnergyBased (Liu et al. 2020)"

    class Options(PluginOptions):
        t: float = Field(1.0, gt=0, description="energy temperature T")

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        from pytorch_ood.detector import EnergyBased  # lazy: pytorch-ood imports slowly

        logits = inputs.logits.detach().to("cpu", torch.float64).mean(0)
        return self.as_output(EnergyBased.score(logits, t=self.opts.t))


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("energy", Energy)
