"""Methods: ``sgld`` (Welling & Teh, 2011) and ``psgld`` (Li et al., 2016) over a linear head.

Langevin dynamics on the head's posterior with a Gaussian prior N(0, prior_sigma^2):
``theta <- theta - (lr/2) (N grad(mean NLL) + theta / prior_sigma^2) + Normal(0, lr)``; pSGLD
multiplies drift and noise by an RMSprop preconditioner. The updates live in
:mod:`bnnkit.methods.samplers`; this module only picks the sampler.

The step size ``[inference] lr``: 0 (default) means calibrated during burn-in, so that in every
coordinate the minibatch-gradient noise is at most ``noise_fraction`` (default 1/4) of the
injected noise (sd at most ~1.12x too wide), and at most ``train.lr / N`` (the old default, an
SGD step of ``train.lr / 2`` on the mean loss); frozen after burn-in. A fixed step cannot be
right for every N: the minibatch noise grows like N^2 / B (see :mod:`bnnkit.methods.samplers`).
A positive ``lr`` is used as given. Burn-in (``burn_in_epochs``), thinning (``thin``) and the cap
(``max_samples``) are shared by every SG-MCMC method; the kept samples are saved in the run.

Not joint with the backbone: with ``train.backbone = "finetune"`` the detector is first
fine-tuned with MAP, then the chain runs on frozen pooled features for ``train.head_epochs``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.sgmcmc import PSGLD, SGLD, SGMCMCMethod
from bnnkit.options import Field


class StochasticGradientLangevin(SGMCMCMethod):
    summary = "SGLD: Langevin dynamics on the head, N-scaled gradient + Gaussian prior"
    sampler_name = "sgld"

    def make_sampler(self, params: list[Tensor], **common: Any) -> SGLD:
        return SGLD(params, **common)


class PreconditionedLangevin(SGMCMCMethod):
    summary = "pSGLD: SGLD with an RMSprop preconditioner (Li et al., 2016)"
    sampler_name = "psgld"

    class Options(SGMCMCMethod.Options):
        alpha: float = Field(0.99, ge=0, lt=1, description="RMSprop decay of the preconditioner")
        eps: float = Field(1e-5, gt=0, description="RMSprop damping of the preconditioner")

    def __init__(self, head, *, num_train: int, **options) -> None:
        super().__init__(head, num_train=num_train, **options)
        self.alpha = float(self.opts.alpha)
        self.eps = float(self.opts.eps)

    def make_sampler(self, params: list[Tensor], **common: Any) -> PSGLD:
        return PSGLD(params, alpha=self.alpha, eps=self.eps, **common)


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("sgld", StochasticGradientLangevin)
    register("psgld", PreconditionedLangevin)
