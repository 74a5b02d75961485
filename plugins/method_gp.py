"""Method: ``gp``, trains the ``gp`` head (``plugins/head_gp.py``: a variational
inducing-point Gaussian process per logit, as DUE: van Amersfoort et al. 2021) with gpytorch.

Initialisation (:meth:`GPHead.initialise`): in a head phase, on up to 1,000 training rows drawn
at random, as DUE does (:meth:`GP.begin_head_phase`); a fine-tuning phase has no features
before its first step, so :meth:`GP.training_loss` initialises on the first training batch it
sees (when the rows are fewer than ``num_inducing`` distinct ones, the remaining points are
rows plus noise of 0.1 of their scale).

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

#: training rows a head phase initialises the head on at most (DUE's sample size)
INIT_ROWS = 1000


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

    def begin_head_phase(self, features: Any, targets: Tensor) -> None:
        """Initialise the head on up to :data:`INIT_ROWS` training rows drawn at random (as
        DUE), unless a resumed or loaded head already is."""
        if not bool(self.gp_head.initialised):
            n = len(features)
            rows = torch.randperm(n)[:INIT_ROWS].sort().values if n > INIT_ROWS else slice(None)
            self.gp_head.initialise(torch.as_tensor(features[rows]))

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        head = self.gp_head
        if not bool(head.initialised):  # a fine-tuning phase: on its first batch
            head.initialise(features)
        output = head.gp(features.to(torch.float32))
        elbo = self.elbo(output, targets)
        kl = head.gp.variational_strategy.kl_divergence().sum().div(self.num_train).detach()
        loss = -elbo
        return LossParts(loss=loss, nll=(loss.detach() - kl), kl=kl, logits=output.mean.detach())


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("gp", GP)
