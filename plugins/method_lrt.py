"""Method: ``lrt``, variational inference with the local reparameterisation trick.

The objective is Bayes by Backprop's (:mod:`bnnkit_plugins.method_bbb`): mean NLL over the batch
+ ``kl_weight`` x KL(q || prior), ``kl_weight = "auto"`` = 1/N (N = training images), averaged
over ``elbo_samples`` draws. The difference is in the head (``lrt``): each step samples the
logits from their closed-form Gaussian instead of a weight matrix, and the KL is exact rather
than a one-sample estimate. The backbone may fine-tune jointly with this loss.
"""

from __future__ import annotations

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit_plugins.method_bbb import BayesByBackprop


class LocalReparameterisation(BayesByBackprop):
    heads = ("lrt",)
    summary = "variational Gaussian head with local reparameterisation; closed-form KL, weight 1/N"


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("lrt", LocalReparameterisation)
