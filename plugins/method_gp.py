"""Method: ``gp``, trains the ``gp`` head (``plugins/head_gp.py``: a variational
inducing-point Gaussian process per logit, as DUE: van Amersfoort et al. 2021) with gpytorch.

Initialisation: the engine has no hook that hands a method the training features *before*
training, so :meth:`GP.training_loss` calls :meth:`GPHead.initialise` lazily on the first
training batch it sees (k-means on that batch; when the batch has fewer distinct rows than
``num_inducing`` the remaining points are batch rows plus noise of 0.1 of the batch's scale).

The loss is the negative ELBO, ``gpytorch.mlls.VariationalELBO`` with a softmax (categorical)
likelihood over the C GP outputs, the logits (gpytorch's ``SoftmaxLikelihood`` misreads a batch
of exactly C images, see :func:`bnnkit_plugins.head_gp._make_likelihood`), and ``num_data`` = N
training images; the KL shown is the ELBO's KL / N. Every GP parameter (variational, inducing
points, kernel, mean) gets no optimiser weight decay (the ELBO is the objective). Fine-tuning is
joint (the backbone learns on the ELBO), as DUE; no extra state (everything lives in the head).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod, LossParts
from bnnkit.model.heads import Head
from bnnkit_plugins.head_gp import GPHead, import_gpytorch


class GP(InferenceMethod):
    heads = ("gp",)
    joint_finetune = True
    summary = "DUE-style variational GP head (gpytorch), inducing points by k-means"

    def __init__(self, head: Head, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        if not isinstance(head, GPHead):
            raise ValueError(f"gp needs the 'gp' head, got {type(head).__name__}")
        self.gp_head: GPHead = head
        self.elbo = import_gpytorch().mlls.VariationalELBO(
            head.likelihood, head.gp, num_data=self.num_train
        )

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        head = self.gp_head
        if not bool(head.initialised):  # no hook sees the features before training: lazily
            head.initialise(features)
        output = head.gp(features.to(torch.float32))
        elbo = self.elbo(output, targets)
        kl = head.gp.variational_strategy.kl_divergence().sum().div(self.num_train).detach()
        loss = -elbo
        return LossParts(loss=loss, nll=(loss.detach() - kl), kl=kl, logits=output.mean.detach())


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("gp", GP)
