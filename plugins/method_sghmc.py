"""Method: ``sghmc``, stochastic-gradient Hamiltonian Monte Carlo over a linear head.

Chen et al. (2014) with the scale-adapted burn-in of Springenberg et al. (2016), the variant the
reference implements (updates in :mod:`bnnkit.methods.sgmcmc`): during burn-in the sampler
estimates a per-parameter scale of the potential's gradient and uses its inverse square root as
the inverse mass; after burn-in that preconditioner is frozen and samples are kept.

Options besides the shared SG-MCMC ones (``prior_sigma``, ``burn_in_epochs``, ``thin``,
``max_samples``):

- ``lr``: epsilon of the scale-adapted update (default 0.01 as in the reference). Because the
  preconditioner normalises the gradient, it is unit-free and not derived from ``train.lr``;
  0 means 0.01.
- ``friction``: momentum decay per step C (default 0.05);
- ``resample_momentum``: redraw the momentum from its stationary law every this many steps
  (default 50, as in the reference; 0 = never);
- ``adaptation``: how the burn-in estimates the gradient scale: ``"ema"`` (default; a moving
  average, stable with full-batch gradients) or ``"window"`` (Springenberg's adaptive window,
  exactly the reference's; it can diverge when N <= batch size, see
  :mod:`bnnkit.methods.sgmcmc`).

Burn-in must be > 0: it is when the preconditioner is learnt. Not joint with the backbone: with
``train.backbone = "finetune"`` the detector is first fine-tuned with MAP, then the chain runs on
frozen pooled features for ``train.head_epochs``.
"""

from __future__ import annotations

from torch import Tensor
from torch.optim import Optimizer

from bnnkit import hookimpl
from bnnkit.methods.sgmcmc import SGHMC, SGMCMCMethod

DEFAULT_EPSILON = 0.01


class StochasticGradientHMC(SGMCMCMethod):
    summary = "SGHMC with scale-adapted burn-in (Chen 2014; Springenberg 2016)"
    sampler_name = "sghmc"
    options = {
        **SGMCMCMethod.options,
        "lr": DEFAULT_EPSILON,
        "friction": 0.05,
        "resample_momentum": 50,
        "adaptation": "ema",
    }

    def __init__(self, head, *, num_train: int, **options) -> None:
        super().__init__(head, num_train=num_train, **options)
        self.friction = float(self.config["friction"])
        self.resample_every = self.config["resample_momentum"]
        if not 0.0 < self.friction < 1.0:
            raise ValueError(f"inference.friction must be in (0, 1), got {self.friction}")
        if not isinstance(self.resample_every, int) or self.resample_every < 0:
            raise ValueError("inference.resample_momentum must be an integer >= 0")
        self.adaptation = str(self.config["adaptation"])
        if self.adaptation not in SGHMC.ADAPTATIONS:
            raise ValueError(
                f"inference.adaptation must be one of {SGHMC.ADAPTATIONS}, got {self.adaptation!r}"
            )
        if self.burn_in_epochs <= 0:
            raise ValueError("inference.burn_in_epochs must be > 0 for sghmc (it adapts then)")

    def default_step_size(self, train_lr: float) -> float:
        return DEFAULT_EPSILON

    def make_sampler(self, params: list[Tensor], step_size: float) -> Optimizer:
        return SGHMC(
            params,
            lr=step_size,
            num_data=self.num_train,
            prior_sigma=self.prior_sigma,
            friction=self.friction,
            adaptation=self.adaptation,
        )

    def after_step(self, step: int) -> None:
        super().after_step(step)
        if self.resample_every and self.steps % self.resample_every == 0:
            assert isinstance(self.sampler, SGHMC)
            self.sampler.resample_momentum()

    def extra_meta(self) -> dict:
        return {**super().extra_meta(), "friction": self.friction, "adaptation": self.adaptation}


@hookimpl
def register_methods(register):
    register("sghmc", StochasticGradientHMC, summary=StochasticGradientHMC.summary)
