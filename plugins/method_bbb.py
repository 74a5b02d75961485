"""Method: ``bbb`` (alias ``vi``), Bayes by Backprop (Blundell et al., 2015) over the head.

Loss per step: mean NLL over the batch + ``kl_weight`` x KL(q || prior), averaged over
``elbo_samples`` draws (each with fresh noise, so the gradient is the average of independent
reparameterisation gradients). With ``kl_weight = "auto"`` the weight is 1/N (N = training
images), so the loss is the negative ELBO divided by N. The backbone may fine-tune jointly with
this loss. The head's variational parameters get no weight decay (see ``configure_optimizer``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod, LossParts
from bnnkit.options import Field, PluginOptions


class BayesByBackprop(InferenceMethod):
    heads = ("bbb",)
    summary = "Bayes by Backprop: variational Gaussian head, ELBO with KL weight 1/N"

    class Options(PluginOptions):
        kl_weight: Literal["auto"] | Annotated[float, Field(ge=0)] = Field(
            "auto", description="weight of KL(q || prior) in the loss; 'auto' = 1/N"
        )
        elbo_samples: int = Field(1, ge=1, description="posterior draws averaged per step")

    def __init__(self, head, *, num_train: int, **options) -> None:
        super().__init__(head, num_train=num_train, **options)
        weight = self.opts.kl_weight
        self.kl_weight = 1.0 / self.num_train if weight == "auto" else float(weight)
        self.elbo_samples = int(self.opts.elbo_samples)

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        nll = torch.zeros((), device=features.device)
        kl = torch.zeros((), device=features.device)
        logits_sum = None
        for _ in range(self.elbo_samples):
            logits = self.head(features)
            nll = nll + F.cross_entropy(logits, targets)
            kl = kl + self.head.kl()
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        nll, kl = nll / self.elbo_samples, kl / self.elbo_samples
        loss = nll + self.kl_weight * kl
        return LossParts(loss, nll.detach(), kl.detach(), logits_sum / self.elbo_samples)

    def extra_meta(self) -> dict:
        return {"kl_weight": self.kl_weight, "elbo_samples": self.elbo_samples}


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("bbb", BayesByBackprop)
    register("vi", BayesByBackprop, summary="alias of bbb")
