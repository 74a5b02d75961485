"""Method: ``sghmc``, stochastic-gradient Hamiltonian Monte Carlo over a linear head.

Chen et al. (2014) with the scale-adapted burn-in of Springenberg et al. (2016), the variant
pybnn's ``adaptive_sghmc.py`` implements (updates in :mod:`bnnkit.methods.samplers`): during
burn-in the sampler estimates a per-parameter scale of the potential's gradient and uses its
inverse square root as the inverse mass; after burn-in that preconditioner is frozen and samples
are kept.

Options besides the shared SG-MCMC ones (``prior_sigma``, ``burn_in_epochs``, ``thin``,
``max_samples``):

- ``lr``: epsilon of the scale-adapted update. 0 (default) = calibrated during burn-in so that
  the minibatch-gradient noise is at most ``noise_fraction`` (default 1/2) of the momentum noise
  in every coordinate, which keeps the injected noise from being clamped to 0, and at most 0.01
  (the reference's epsilon); frozen after burn-in. The reference's fixed 0.01 clamps the noise
  once sqrt(V_hat) > 2 C / epsilon^2, which at N ~ 10^6 holds for most coordinates (the chain
  then runs on minibatch noise, several times too wide). A positive ``lr`` is used as given.
- ``friction``: momentum decay per step C (default 0.05);
- ``resample_momentum``: redraw the momentum from its stationary law every this many steps
  (default 50, as in the reference; 0 = never);
- ``adaptation``: how the burn-in estimates the gradient scale: ``"ema"`` (default; a moving
  average, stable with full-batch gradients) or ``"window"`` (Springenberg's adaptive window,
  exactly the reference's; it can diverge when N <= batch size).

Burn-in must be > 0: it is when the preconditioner and the step are learnt. Not joint with the
backbone: with ``train.backbone = "finetune"`` the detector is first fine-tuned with MAP, then
the chain runs on frozen pooled features for ``train.head_epochs``.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.sgmcmc import SGHMC, SGMCMCMethod
from bnnkit.options import Field

DEFAULT_EPSILON = 0.01  # the reference's; the cap of the calibrated step


class StochasticGradientHMC(SGMCMCMethod):
    summary = "SGHMC with scale-adapted burn-in (Chen 2014; Springenberg 2016)"
    sampler_name = "sghmc"

    class Options(SGMCMCMethod.Options):
        noise_fraction: float = Field(
            0.5, gt=0, lt=1, description="max minibatch-noise share of the momentum noise (lr = 0)"
        )
        burn_in_epochs: float = Field(
            0.5, gt=0, description="burn-in epochs (> 0: the preconditioner and step adapt then)"
        )
        friction: float = Field(0.05, gt=0, lt=1, description="momentum decay per step C")
        resample_momentum: int = Field(
            50, ge=0, description="redraw the momentum every this many steps; 0 = never"
        )
        adaptation: Literal["ema", "window"] = Field(
            "ema", description="burn-in gradient-scale estimate: moving average or adaptive window"
        )

    def __init__(self, head, *, num_train: int, **options) -> None:
        super().__init__(head, num_train=num_train, **options)
        self.friction = float(self.opts.friction)
        self.resample_every = int(self.opts.resample_momentum)
        self.adaptation = str(self.opts.adaptation)

    def default_step_size(self, train_lr: float) -> float:
        return DEFAULT_EPSILON  # unit-free (the preconditioner normalises the gradient)

    def make_sampler(self, params: list[Tensor], **common: Any) -> SGHMC:
        return SGHMC(params, friction=self.friction, adaptation=self.adaptation, **common)

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if self.resample_every and self.steps % self.resample_every == 0:
            assert isinstance(self.sampler, SGHMC)
            self.sampler.resample_momentum()

    def extra_meta(self) -> dict:
        return {**super().extra_meta(), "friction": self.friction, "adaptation": self.adaptation}


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("sghmc", StochasticGradientHMC)
