"""The base of the SG-MCMC samplers: noise from the sampler's own generator, the gradient-noise
statistics and the step calibrated from them (the maths is in :mod:`bnnkit.methods.samplers`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

_SEED_SALT = 0x5A3F_11  # separates the samplers' stream from other generators seeded by the recipe


class _Sampler(Optimizer):
    """Base: param groups carry ``lr`` (the step in use), ``max_lr`` (the cap), ``num_data`` (N),
    ``prior_sigma`` and ``noise_fraction`` (None: the step stays ``lr``). ``adapting`` is True
    during burn-in (the caller ends it with :meth:`finish_burn_in`): then the gradient-noise
    statistics are updated and, with ``noise_fraction``, the step is calibrated."""

    stat_alpha: ClassVar[float] = 0.99  # moving averages of the gradient-noise statistics
    warm_steps: ClassVar[int] = 10  # before, the second moment of grad U stands in for its variance

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        num_data: int,
        prior_sigma: float,
        noise_fraction: float | None = None,
        seed: int = 0,
        **extra: Any,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"step size must be > 0, got {lr}")
        if num_data < 1:
            raise ValueError(f"num_data must be >= 1, got {num_data}")
        if prior_sigma <= 0:
            raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
        if noise_fraction is not None and not 0 < noise_fraction < 1:
            raise ValueError(f"noise_fraction must be in (0, 1), got {noise_fraction}")
        defaults = {
            "lr": lr,
            "max_lr": lr,
            "num_data": num_data,
            "prior_sigma": prior_sigma,
            "noise_fraction": noise_fraction,
            "stat_steps": 0,  # burn-in steps the noise statistics have seen
            **extra,
        }
        super().__init__(params, defaults)
        self.adapting = True
        self.generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + _SEED_SALT)

    # -- what each sampler defines ----------------------------------------------------------------
    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        """The sampler's own statistics (pSGLD's V, SGHMC's V_hat) from ``p.grad``."""

    def _second_moment_u(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """Per coordinate: a moving second moment of grad U (over-estimates its variance)."""
        raise NotImplementedError

    def _precond(self, p: Tensor, group: dict[str, Any]) -> Tensor | float:
        """The preconditioner P the drift applies to grad U (SGLD: 1)."""
        return 1.0

    def _const(self, group: dict[str, Any]) -> float:
        """f_i = unit(lr) * const * P_i * Var(grad U_i) (SGLD, pSGLD: 1/4; SGHMC: 1 / (2 C))."""
        return 0.25

    def _move(self, p: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @staticmethod
    def _unit(lr: float) -> float:
        """What f_i is proportional to (lr; SGHMC: lr^2)."""
        return lr

    @staticmethod
    def _lr(unit: float) -> float:
        return unit

    # -- shared -----------------------------------------------------------------------------------
    @staticmethod
    def grad_potential(p: Tensor, group: dict[str, Any]) -> Tensor:
        """grad U = N * grad(mean NLL) + theta / sigma^2."""
        return p.grad * group["num_data"] + p / group["prior_sigma"] ** 2

    def _noise(self, p: Tensor) -> Tensor:
        """Standard normal noise shaped like ``p`` from the sampler's own generator."""
        z = torch.randn(p.shape, generator=self.generator, dtype=p.dtype)
        return z.to(p.device, non_blocking=True)

    def _live(self, group: dict[str, Any]) -> list[Tensor]:
        return [p for p in group["params"] if p in self.state and self.state[p]]

    def _warm(self, group: dict[str, Any]) -> bool:
        """Whether the noise statistics have seen ``warm_steps`` noise samples (the averages
        start at their first sample, so they are unbiased from then on, only noisy)."""
        return group["stat_steps"] > self.warm_steps

    def _ratio(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """Per coordinate: the gradient-noise fraction f_i per unit of :meth:`_unit`. Until the
        variance estimate is warm, the second moment of grad U stands in (a smaller step)."""
        state = self.state[p]
        if self._warm(group) and "noise_sq" in state:
            var = state["noise_sq"]
        else:
            var = self._second_moment_u(p, group)
        return var * self._precond(p, group) * self._const(group)

    def _final_ratio(self, p: Tensor, group: dict[str, Any]) -> Tensor:
        """The ratio the frozen step must respect (SGHMC adds its clamping condition)."""
        return self._ratio(p, group)

    def _track_noise(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Gradient-noise statistics from x = (N g_t - N g_{t-1}) / sqrt(2), a noise sample
        free of any estimate of the mean gradient (whose lag a power iteration would lock on):
        ``noise_sq``, the per-coordinate variance; and the noise's largest direction, which
        correlated features make far larger than any coordinate's. For it, with y = P^(1/2) x, a
        streaming power iteration on the moving average of y y^T gives the direction u
        (``top_w`` ~ C u, ``top_dir`` = u) and ``top_var`` averages (y . u)^2 with u from earlier
        steps: a Rayleigh quotient on fresh data, not inflated like the top eigenvalue of a
        sample covariance of many dimensions over few steps."""
        a = self.stat_alpha
        ys: list[tuple[Tensor, Tensor]] = []
        for p in params:
            state, g = self.state[p], p.grad * group["num_data"]
            if "prev_grad" in state:
                x = (g - state["prev_grad"]) / math.sqrt(2.0)
                if "noise_sq" in state:
                    state["noise_sq"].mul_(a).addcmul_(x, x, value=1 - a)
                else:
                    state["noise_sq"] = x.square()
                ys.append((p, x * torch.as_tensor(self._precond(p, group)).sqrt()))
            state["prev_grad"] = g.clone()
        if len(ys) != len(params):  # the first step: no difference yet
            return
        total = sum(p.numel() for p in params)
        for p in params:
            self.state[p].setdefault("top_dir", torch.full_like(p, 1.0 / math.sqrt(total)))
        proj = sum((y * self.state[p]["top_dir"]).sum() for p, y in ys)
        first = self.state[params[0]]
        if "top_var" in first:
            first["top_var"].lerp_(proj.square(), 1 - a)
        else:
            first["top_var"] = proj.square()
        for p, y in ys:
            state = self.state[p]
            if "top_w" in state:
                state["top_w"].mul_(a).add_(y * proj, alpha=1 - a)
            else:
                state["top_w"] = y * proj
        norm = torch.sqrt(sum(self.state[p]["top_w"].square().sum() for p in params))
        for p in params:
            state = self.state[p]
            state["top_dir"] = torch.where(norm > 0, state["top_w"] / norm, state["top_dir"])

    def _top(self, group: dict[str, Any]) -> float:
        """The largest-direction gradient-noise fraction per unit of :meth:`_unit`."""
        if not self._warm(group):
            return 0.0
        tops = [self.state[p]["top_var"] for p in self._live(group) if "top_var" in self.state[p]]
        return float(tops[0]) * self._const(group) if tops else 0.0

    def _calibrate(self, group: dict[str, Any], final: bool = False) -> None:
        ratio = self._final_ratio if final else self._ratio
        maxima = [ratio(p, group).max() for p in self._live(group) if p.numel()]
        worst = max(float(torch.stack(maxima).max()) if maxima else 0.0, self._top(group))
        unit = self._unit(group["max_lr"])
        if worst > 0:
            unit = min(unit, group["noise_fraction"] / worst)
        group["lr"] = self._lr(unit)

    @torch.no_grad()
    def finish_burn_in(self) -> None:
        """Stop adapting and freeze the (calibrated) step."""
        self.adapting = False
        for group in self.param_groups:
            if group["noise_fraction"] is not None:
                self._calibrate(group, final=True)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                self._update(p, group)
            if self.adapting and params:
                group["stat_steps"] += 1
                self._track_noise(group, params)
                if group["noise_fraction"] is not None:
                    self._calibrate(group)
            for p in params:
                self._move(p, group)
        return loss

    @torch.no_grad()
    def diagnostics(self) -> dict[str, Any]:
        """With the current step and the noise statistics of the end of burn-in: the largest
        gradient-noise fraction over coordinates and along the noise's largest direction
        (``..._top``), how many coordinates have f_i > 1 (minibatch noise above the noise the
        sampler needs), of how many."""
        worst, top, dominated, total = 0.0, 0.0, 0, 0
        for group in self.param_groups:
            unit = self._unit(group["lr"])
            top = max(top, self._top(group) * unit)
            for p in self._live(group):
                f = self._ratio(p, group) * unit
                if f.numel():
                    worst = max(worst, float(f.max()))
                dominated += int((f > 1).sum())
                total += p.numel()
        return {
            "gradient_noise_fraction": worst,
            "gradient_noise_fraction_top": top,
            "noise_dominated": dominated,
            "coordinates": total,
        }

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["generator"] = self.generator.get_state()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        generator = state_dict.pop("generator", None)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # state saved before a key existed
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if generator is not None:
            self.generator.set_state(generator.detach().cpu().to(torch.uint8))
