"""SG-MCMC samplers over the head (torch optimisers): SGLD, pSGLD and SGHMC.

Hand-written on purpose: PyTorch ships no SG-MCMC sampler and the libraries that did
(pysgmcmc, pybnn) are unmaintained. Tested against a conjugate Gaussian posterior
(tests/test_method_sgmcmc.py) and a logistic-regression Laplace posterior from N = 10^3 to 10^6
(tests/test_sgmcmc_scaling.py). ``p.grad`` holds the gradient g of the batch's *mean* NLL; the
samplers use the potential U = -log p(D | theta) - log p(theta), prior N(0, prior_sigma^2):
grad U = N g + theta / prior_sigma^2 (N = training images).

- :class:`SGLD` (Welling & Teh, 2011): ``theta <- theta - (lr/2) grad U + Normal(0, lr)``.
- :class:`PSGLD` (Li et al., 2016): G = 1 / (lambda + sqrt(V)), V <- alpha V + (1 - alpha) g^2;
  ``theta <- theta - (lr/2) G grad U + Normal(0, lr G)``; the Gamma(theta) term is dropped, as in
  the paper's experiments; V starts at the first g^2 (no 10x first step).
- :class:`SGHMC` (Chen et al., 2014) with Springenberg et al.'s (2016) scale-adapted burn-in, as
  pybnn's ``adaptive_sghmc.py``: M^-1 = V_hat^(-1/2), V_hat ~ E[(grad U)^2] learnt in burn-in and
  then frozen; ``v <- v - lr^2 M^-1 grad U - C v + Normal(0, 2 lr^2 C M^-1 - lr^4)``,
  ``theta <- theta + v`` (lr = epsilon, C = friction). ``adaptation = "window"`` is the
  reference's estimator (eqs. 8-9): r = 1 / (tau + 1) with tau *before* the step, then
  tau <- tau + 1 - tau g_avg^2 / V_hat, g_avg += r (grad U - g_avg),
  V_hat += r ((grad U)^2 - V_hat); with noise-free (full-batch) gradients it can end with
  V_hat ~ 0 and diverge. ``"ema"`` (default): a moving average (alpha 0.99), stable there too.
  ``resample_momentum`` redraws v.

Step size. Each update is Delta = -a_i grad U + Normal(0, s_i) per coordinate (SGLD a = lr/2,
s = lr; pSGLD a = lr G/2, s = lr G; SGHMC, in v: a = lr^2 M^-1, s = 2 lr^2 C M^-1). The minibatch
gradient adds noise of variance a_i^2 N^2 Var(g_i), Var(g_i) ~ v_i / B for B images a step: a
fraction f_i = a_i^2 N^2 Var(g_i) / s_i of the noise the stationary law needs (SGLD
lr N^2 Var(g_i) / 4; pSGLD lr G_i N^2 Var(g_i) / 4; SGHMC lr^2 M^-1_i N^2 Var(g_i) / (2 C)).
SGLD and pSGLD are then about sqrt(1 + f) too wide; SGHMC subtracts lr^4 for it, right while
f < 1, but clamps its injected noise to 0 once sqrt(V_hat) > 2 C / lr^2 and then runs on minibatch
noise alone. For a fixed step, f grows with N (~ lr_train N v / (4B) for SGLD's old
``train.lr / N``, ~ lr^2 N sqrt(v / B) / (2C) for SGHMC's epsilon = 0.01): on a logistic toy at
N = 10^6, B = 64 the old defaults gave pSGLD 2.5-3.9x and SGHMC 3.9-6.6x the Laplace sd.

Default (``noise_fraction`` set, the methods' ``[inference] lr = 0``): after every burn-in step
the step becomes the largest one, at most ``lr`` given here (the cap: the old default,
``train.lr / N`` or 0.01, whose drift is known to be stable; the noise cannot tell the curvature,
so calibration only lowers the step), at which f = noise_fraction both in the worst coordinate
and along the gradient noise's largest direction (correlated features make it far larger than
any coordinate's); frozen when burn-in ends and saved with the state dict. Var(g) comes from
differences of successive gradients (moving averages, alpha 0.99; the first 10 steps use the
second moment, an over-estimate). This is the scale-free choice, lr ~ B / (N^2 v): the stiffest
direction then relaxes in ~1 / (2 f) epochs at any N (for SGLD, relaxation 2 / (lr N F) steps
times f = lr N^2 F / (4B), with F ~ v, is N / (2B) steps, half an epoch), and it says what cannot
be had: mixing in fewer epochs needs more minibatch noise. Defaults f = 1/4 for SGLD/pSGLD (sd at
most ~1.12x wide in the worst direction, ~2 epochs per e-fold) and 1/2 for SGHMC (which corrects
for it; the frozen step also keeps sqrt(V_hat) < C / lr^2, no clamping). ``diagnostics()``
reports f and how many coordinates are noise-dominated or (SGHMC) clamped.

Randomness: every sampler draws its noise from its own ``torch.Generator`` (``seed``, on the CPU,
then moved to the parameter's device), never the global RNG, so torchrun ranks draw the same
noise and, with all-reduced gradients, run one chain. Its state is part of ``state_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bnnkit.methods.sampler_base import _Sampler

__all__ = ["PSGLD", "SGHMC", "SGLD", "_Sampler"]


class SGLD(_Sampler):
    """Stochastic gradient Langevin dynamics (see the module docstring)."""

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        if not self.adapting:  # only the step's calibration uses it
            return
        state, g, a = self.state[p], p.grad, self.stat_alpha
        if "square_avg" in state:
            state["square_avg"].mul_(a).addcmul_(g, g, value=1 - a)
        else:
            state["square_avg"] = g.square()

    def _second_moment_u(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        return self.state[p]["square_avg"] * group["num_data"] ** 2

    def _move(self, p: Tensor, group: dict[str, Any]) -> None:
        lr = group["lr"]
        p.add_(self.grad_potential(p, group), alpha=-lr / 2)
        p.add_(self._noise(p), alpha=math.sqrt(lr))


class PSGLD(_Sampler):
    """Preconditioned SGLD with an RMSprop preconditioner (see the module docstring)."""

    def __init__(
        self, params: Iterable, *, alpha: float = 0.99, eps: float = 1e-5, **common: Any
    ) -> None:
        """``common``: the base sampler's ``lr``, ``num_data``, ``prior_sigma``, ..."""
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps (lambda) must be > 0, got {eps}")
        super().__init__(params, alpha=alpha, eps=eps, **common)

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        state, g, alpha = self.state[p], p.grad, group["alpha"]
        if "square_avg" in state:
            state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
        else:
            state["square_avg"] = g.square().clone()

    _second_moment_u = SGLD._second_moment_u

    def _precond(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        return 1.0 / (self.state[p]["square_avg"].sqrt() + group["eps"])

    def _move(self, p: Tensor, group: dict[str, Any]) -> None:
        lr, precond = group["lr"], self._precond(p, group)
        p.add_(precond * self.grad_potential(p, group), alpha=-lr / 2)
        p.add_(self._noise(p) * (lr * precond).sqrt())


class SGHMC(_Sampler):
    """SGHMC with scale-adapted burn-in (see the module docstring); ``adapting`` also says
    whether a step updates the inverse-mass estimate."""

    # Keeps divisions finite. pybnn uses 1e-16, which lets a near-zero V_hat blow up the inverse
    # mass in float32; where V_hat >> 1e-6 the two agree.
    _tiny = 1e-6
    ADAPTATIONS = ("ema", "window")

    def __init__(
        self,
        params: Iterable,
        *,
        friction: float = 0.05,
        adaptation: str = "ema",
        ema_alpha: float = 0.99,
        **common: Any,
    ) -> None:
        """``common``: the base sampler's ``lr``, ``num_data``, ``prior_sigma``, ..."""
        if not 0.0 < friction < 1.0:
            raise ValueError(f"friction must be in (0, 1), got {friction}")
        if adaptation not in self.ADAPTATIONS:
            raise ValueError(f"adaptation must be one of {self.ADAPTATIONS}, got {adaptation!r}")
        if not 0.0 <= ema_alpha < 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1), got {ema_alpha}")
        super().__init__(
            params, friction=friction, adaptation=adaptation, ema_alpha=ema_alpha, **common
        )

    @staticmethod
    def _unit(lr: float) -> float:
        return lr**2

    @staticmethod
    def _lr(unit: float) -> float:
        return math.sqrt(unit)

    def _state(self, p: Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["tau"] = torch.ones_like(p)
            state["g_avg"] = torch.ones_like(p)
            state["v_hat"] = torch.ones_like(p)
            state["momentum"] = torch.zeros_like(p)
            state["adapted"] = 0
        return state

    def _inv_mass(self, state: dict[str, Any]) -> Tensor:
        return 1.0 / (state["v_hat"].sqrt() + self._tiny)

    def _adapt(self, state: dict[str, Any], d: Tensor, group: dict[str, Any]) -> None:
        v_hat = state["v_hat"]
        if group["adaptation"] == "ema":
            if state["adapted"] == 0:
                v_hat.copy_(d.square())
            else:
                a = group["ema_alpha"]
                v_hat.mul_(a).addcmul_(d, d, value=1 - a)
        else:
            tau, g_avg = state["tau"], state["g_avg"]
            r = 1.0 / (tau + 1.0)  # pybnn's tau_inv: the window before this step's update
            tau.add_(1.0 - tau * g_avg.square() / (v_hat + self._tiny))  # eq. 9, left
            g_avg.add_(r * (d - g_avg))  # eq. 9, right
            v_hat.add_(r * (d.square() - v_hat))  # eq. 8
        state["adapted"] += 1

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self._state(p)
        if self.adapting:
            self._adapt(state, self.grad_potential(p, group), group)

    def _second_moment_u(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        return self.state[p]["v_hat"]

    def _precond(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        return self._inv_mass(self.state[p])

    def _const(self, group: dict[str, Any]) -> float:
        return 0.5 / group["friction"]

    def _final_ratio(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        # Frozen, the step must also keep 2 lr^2 C M^-1 - lr^4 > 0 with margin: the injected
        # noise assumes the gradient noise is V_hat, above Var(grad U) while the chain moves.
        state = self.state[p]
        return torch.maximum(self._ratio(p, group), state["v_hat"].sqrt() / (2 * group["friction"]))

    def _noise_var(self, state: dict[str, Any], group: dict[str, Any]) -> Tensor:
        lr = group["lr"]
        return 2.0 * lr**2 * group["friction"] * self._inv_mass(state) - lr**4

    def _move(self, p: Tensor, group: dict[str, Any]) -> None:
        state, lr, c = self.state[p], group["lr"], group["friction"]
        inv_mass = self._inv_mass(state)
        noise_std = self._noise_var(state, group).clamp_min(1e-16).sqrt()
        v = state["momentum"]
        d = self.grad_potential(p, group)
        v.add_(-(lr**2) * inv_mass * d - c * v + self._noise(p) * noise_std)
        p.add_(v)

    @torch.no_grad()
    def resample_momentum(self) -> None:
        """Draw the momentum from its stationary law N(0, lr^2 M^-1)."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self._state(p)
                std = (group["lr"] ** 2 * self._inv_mass(state)).sqrt()
                state["momentum"] = self._noise(p) * std

    @torch.no_grad()
    def diagnostics(self) -> dict[str, Any]:
        """Also ``noise_clamped``: coordinates whose injected noise variance is clamped to 0."""
        out = super().diagnostics()
        clamped = 0
        for group in self.param_groups:
            for p in self._live(group):
                clamped += int((self._noise_var(self.state[p], group) <= 1e-16).sum())
        return {**out, "noise_clamped": clamped}
