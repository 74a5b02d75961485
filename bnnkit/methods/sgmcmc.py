"""Stochastic-gradient MCMC over the head: samplers, the store of kept samples, and the method base.

Hand-written on purpose: PyTorch ships no SG-MCMC sampler and the libraries that did
(pysgmcmc, pybnn) are unmaintained; the updates are a few lines each and tested here against a
conjugate Gaussian posterior (tests/test_method_sgmcmc.py).

Conventions shared by the samplers. ``p.grad`` holds the gradient of the batch's *mean* NLL
(what ``loss.backward()`` leaves); the sampler turns it into the gradient of the potential
energy U(theta) = -log p(D | theta) - log p(theta) with a Gaussian prior N(0, prior_sigma^2):

    grad U = N * grad(mean NLL) + theta / prior_sigma^2          (N = training images)

- :class:`SGLD` (Welling & Teh, 2011), exactly the reference's update:
  ``theta <- theta - (lr/2) grad U + Normal(0, lr)``.
- :class:`PSGLD` (Li et al., 2016): an RMSprop preconditioner
  G = 1 / (lambda + sqrt(V)), V <- alpha V + (1 - alpha) g^2 with g the mean-NLL gradient as in
  the paper; ``theta <- theta - (lr/2) G grad U + Normal(0, lr G)``. The Gamma(theta) correction
  term (derivatives of G) is dropped, as the paper does in its experiments. V starts at the first
  squared gradient instead of 0, which avoids a first step ~1/sqrt(1 - alpha) = 10x too large.
- :class:`SGHMC` (Chen et al., 2014) with the scale-adapted burn-in of Springenberg et al. (2016),
  the variant the reference implements: during burn-in it estimates, per parameter,
  V_hat ~ E[(grad U)^2] and uses M^-1 = V_hat^(-1/2) as the inverse mass; at the end of burn-in
  the preconditioner is frozen, so afterwards it is a valid sampler of the posterior (up to
  discretisation). Updates, with ``lr`` = epsilon and ``friction`` = C (momentum decay/step)::

      v     <- v - lr^2 M^-1 grad U - C v + Normal(0, 2 lr^2 M^-1 C - lr^4)
      theta <- theta + v

  Two estimators of V_hat (``adaptation``):

  - ``"window"``: the reference's, Springenberg's adaptive window tau (their eqs. 8-9). It
    shrinks the window to ~1 step when the gradient is consistent, so with noise-free gradients
    (full batch, N <= batch size) V_hat is just the last squared gradient when burn-in ends;
    where that is near 0 the frozen inverse mass is huge and the chain diverges (NaN in our
    conjugate test at lr 0.05, variance 1.4-1.8x too large at lr 0.02).
  - ``"ema"`` (default): a plain exponential moving average of (grad U)^2 with ``alpha = 0.99``
    (a ~100-step window, started at the first squared gradient). Same results as ``"window"``
    with minibatch gradients, and stable with full-batch ones.

  The momentum can be resampled from its stationary law N(0, lr^2 M^-1) every
  ``resample_momentum`` steps (a Gibbs step; the reference does it every 50). The reference's
  Gamma hyper-prior on the weight decay is not used: the prior sigma is fixed by the recipe.

:class:`SampleStore` keeps flattened head-parameter vectors after burn-in; :class:`SGMCMCMethod`
is the inference-method base shared by the ``sgld``, ``psgld`` and ``sghmc`` plugins.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.optim import Optimizer

from bnnkit.methods.base import InferenceMethod, LossParts


# -- samplers -------------------------------------------------------------------------------------
class _Sampler(Optimizer):
    """Base: param groups carry ``lr``, ``num_data`` (N) and ``prior_sigma``."""

    def __init__(
        self, params: Iterable, *, lr: float, num_data: int, prior_sigma: float, **extra: Any
    ) -> None:
        if lr <= 0:
            raise ValueError(f"step size must be > 0, got {lr}")
        if num_data < 1:
            raise ValueError(f"num_data must be >= 1, got {num_data}")
        if prior_sigma <= 0:
            raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
        defaults = {"lr": lr, "num_data": num_data, "prior_sigma": prior_sigma, **extra}
        super().__init__(params, defaults)

    @staticmethod
    def grad_potential(p: Tensor, group: dict[str, Any]) -> Tensor:
        """grad U = N * grad(mean NLL) + theta / sigma^2."""
        return p.grad * group["num_data"] + p / group["prior_sigma"] ** 2


class SGLD(_Sampler):
    """Stochastic gradient Langevin dynamics (see the module docstring)."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.add_(self.grad_potential(p, group), alpha=-lr / 2)
                p.add_(torch.randn_like(p), alpha=math.sqrt(lr))
        return loss


class PSGLD(_Sampler):
    """Preconditioned SGLD with an RMSprop preconditioner (see the module docstring)."""

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        num_data: int,
        prior_sigma: float,
        alpha: float = 0.99,
        eps: float = 1e-5,
    ) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if eps <= 0:
            raise ValueError(f"eps (lambda) must be > 0, got {eps}")
        super().__init__(
            params, lr=lr, num_data=num_data, prior_sigma=prior_sigma, alpha=alpha, eps=eps
        )

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                g = p.grad
                if "square_avg" not in state:
                    state["square_avg"] = g.square().clone()
                else:
                    state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
                precond = 1.0 / (state["square_avg"].sqrt() + eps)
                p.add_(precond * self.grad_potential(p, group), alpha=-lr / 2)
                p.add_(torch.randn_like(p) * (lr * precond).sqrt())
        return loss


class SGHMC(_Sampler):
    """SGHMC with scale-adapted burn-in (see the module docstring).

    ``adapting`` (True at start) says whether the step is a burn-in step that updates the
    preconditioner estimate; the caller switches it off when burn-in ends.
    """

    _tiny = 1e-6  # keeps divisions finite (the reference's epsilon)
    ADAPTATIONS = ("ema", "window")

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        num_data: int,
        prior_sigma: float,
        friction: float = 0.05,
        adaptation: str = "ema",
        ema_alpha: float = 0.99,
    ) -> None:
        if not 0.0 < friction < 1.0:
            raise ValueError(f"friction must be in (0, 1), got {friction}")
        if adaptation not in self.ADAPTATIONS:
            raise ValueError(f"adaptation must be one of {self.ADAPTATIONS}, got {adaptation!r}")
        if not 0.0 <= ema_alpha < 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1), got {ema_alpha}")
        super().__init__(
            params,
            lr=lr,
            num_data=num_data,
            prior_sigma=prior_sigma,
            friction=friction,
            adaptation=adaptation,
            ema_alpha=ema_alpha,
        )
        self.adapting = True

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            state["tau"] = torch.ones_like(p)
            state["g_avg"] = torch.ones_like(p)
            state["v_hat"] = torch.ones_like(p)
            state["momentum"] = torch.zeros_like(p)
            state["adapted"] = 0
        return state

    def _inv_mass(self, state: dict[str, Tensor]) -> Tensor:
        return 1.0 / (state["v_hat"].sqrt() + self._tiny)

    def _adapt(self, state: dict[str, Tensor], d: Tensor, group: dict[str, Any]) -> None:
        v_hat = state["v_hat"]
        if group["adaptation"] == "ema":
            if state["adapted"] == 0:
                v_hat.copy_(d.square())
            else:
                a = group["ema_alpha"]
                v_hat.mul_(a).addcmul_(d, d, value=1 - a)
        else:
            tau, g_avg = state["tau"], state["g_avg"]
            # adaptive window (Springenberg et al., eq. 9), then running moments (eq. 8)
            tau.add_(1.0 - tau * g_avg.square() / (v_hat + self._tiny))
            r = 1.0 / (tau + self._tiny)
            g_avg.add_(r * (d - g_avg))
            v_hat.add_(r * (d.square() - v_hat))
        state["adapted"] += 1

    @torch.no_grad()
    def resample_momentum(self) -> None:
        """Draw the momentum from its stationary law N(0, lr^2 M^-1)."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self._state(p)
                std = (group["lr"] ** 2 * self._inv_mass(state)).sqrt()
                state["momentum"] = torch.randn_like(p) * std

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c = group["lr"], group["friction"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                d = self.grad_potential(p, group)
                if self.adapting:
                    self._adapt(state, d, group)
                inv_mass = self._inv_mass(state)
                noise_var = (2.0 * lr**2 * c * inv_mass - lr**4).clamp_min(1e-16)
                v = state["momentum"]
                v.add_(-(lr**2) * inv_mass * d - c * v + torch.randn_like(p) * noise_var.sqrt())
                p.add_(v)
        return loss


# -- kept samples ---------------------------------------------------------------------------------
class SampleStore:
    """Flattened parameter vectors kept after burn-in, every ``thin`` steps, ``max_samples`` used.

    The chain's length is not known in advance, so the store buffers up to ``2 * max_samples``
    rows; when the buffer is full it drops every other row and doubles ``thin``. Memory stays
    bounded, the rows stay evenly spread over the whole post-burn-in chain (not only its start),
    and :meth:`samples` returns ``max_samples`` of them, evenly spaced, once the chain has
    produced that many. Rows live on the parameters' device.
    """

    def __init__(self, *, burn_in: int, thin: int, max_samples: int) -> None:
        if burn_in < 0 or thin < 1 or max_samples < 1:
            raise ValueError("need burn_in >= 0, thin >= 1, max_samples >= 1")
        self.burn_in = int(burn_in)
        self.thin = int(thin)
        self.max_samples = int(max_samples)
        self._rows: list[Tensor] = []
        self._steps: list[int] = []

    def __len__(self) -> int:
        """How many samples :meth:`samples` returns."""
        return min(len(self._rows), self.max_samples)

    def wants(self, step: int) -> bool:
        """Whether step ``step`` (1-based, counted in the sampling phase) is kept."""
        after = step - self.burn_in
        return after > 0 and after % self.thin == 0

    def offer(self, step: int, params: Iterable[Tensor]) -> bool:
        """Keep the parameters at ``step`` if it is a kept step; True if kept."""
        if not self.wants(step):
            return False
        if len(self._rows) >= 2 * self.max_samples:
            self._rows, self._steps = self._rows[1::2], self._steps[1::2]
            self.thin *= 2
            if not self.wants(step):
                return False
        self._rows.append(nn.utils.parameters_to_vector([p.detach() for p in params]).clone())
        self._steps.append(int(step))
        return True

    def _chosen(self) -> list[int]:
        n = len(self._rows)
        return list(range(n)) if n <= self.max_samples else pick(n, self.max_samples).tolist()

    def samples(self) -> Tensor | None:
        """``(S, P)`` samples, S <= ``max_samples``, evenly spaced; None when none were kept."""
        if not self._rows:
            return None
        return torch.stack([self._rows[i] for i in self._chosen()])

    def steps(self) -> list[int]:
        """The sampling-phase steps of :meth:`samples`' rows."""
        return [self._steps[i] for i in self._chosen()] if self._rows else []

    def buffer(self) -> tuple[Tensor | None, list[int]]:
        """Every buffered row and its step (what a checkpoint saves, so resuming is exact)."""
        return (torch.stack(self._rows) if self._rows else None), list(self._steps)

    def load(self, rows: Tensor, steps: Iterable[int] | None = None) -> None:
        self._rows = list(rows.unbind(0)) if rows.numel() else []
        steps = list(steps) if steps is not None else list(range(1, len(self._rows) + 1))
        if len(steps) != len(self._rows):
            raise ValueError(f"{len(self._rows)} sample rows but {len(steps)} sample steps")
        self._steps = [int(s) for s in steps]

    def to(self, device: torch.device | str) -> SampleStore:
        self._rows = [r.to(device) for r in self._rows]
        return self


def pick(num_kept: int, k: int, device: torch.device | None = None) -> Tensor:
    """Indices of ``k`` of the ``num_kept`` samples: evenly spaced when k <= S, else cycling."""
    if num_kept < 1:
        raise ValueError("no samples to pick from")
    if k >= num_kept:
        return torch.arange(k, device=device) % num_kept
    return torch.linspace(0, num_kept - 1, k, device=device).round().long()


def batched_logits(head: nn.Module, samples: Tensor, features: Tensor) -> Tensor:
    """The head's logits ``(k, B, C)`` at each of the ``k`` flattened parameter vectors
    ``samples (k, P)``, in one vectorised call (``torch.func.vmap`` over ``functional_call``;
    for a linear head this is one batched matmul)."""
    names, shapes = zip(*[(n, p.shape) for n, p in head.named_parameters()], strict=True)
    sizes = [math.prod(s) for s in shapes]
    if sum(sizes) != samples.shape[-1]:
        raise ValueError(f"samples have {samples.shape[-1]} values per row; head has {sum(sizes)}")
    chunks = samples.to(features.dtype).split(sizes, dim=-1)
    params = {
        n: c.reshape(samples.shape[0], *s) for n, c, s in zip(names, chunks, shapes, strict=True)
    }
    return vmap(lambda ps: functional_call(head, ps, (features,)))(params)


# -- the method base ------------------------------------------------------------------------------
class SGMCMCMethod(InferenceMethod):
    """Base for SG-MCMC methods over a deterministic head.

    Not joint with the backbone: with ``train.backbone = "finetune"`` the trainer fine-tunes with
    MAP first, then the sampler runs on frozen pooled features (``train.head_epochs``).

    Options (``[inference]``):

    - ``prior_sigma``: the Gaussian prior's standard deviation (it replaces weight decay;
      ``train.weight_decay`` and ``train.optimizer`` are not used by the sampler);
    - ``lr``: the sampler's step size; see each subclass for what 0 means;
    - ``burn_in_epochs``: length of burn-in in epochs of the sampling phase (fractions allowed),
      turned into steps from N and the batch size on the first step;
    - ``thin``: keep every ``thin``-th step after burn-in (doubled whenever the store is full);
    - ``max_samples``: how many samples prediction uses, evenly spread over the post-burn-in
      chain (flattened head parameters, saved in the run's state file as ``samples``).

    After training the head is set to the mean of the kept samples (for a linear head its logits
    are the samples' mean logits), so a single deterministic pass stays meaningful.
    """

    heads: ClassVar[tuple[str, ...]] = ("linear",)
    default_head: ClassVar[str] = "linear"
    joint_finetune: ClassVar[bool] = False
    # clipping the gradient would bias the Langevin dynamics' stationary distribution
    clip_gradients: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {
        "prior_sigma": 1.0,
        "lr": 0.0,
        "burn_in_epochs": 0.5,
        "thin": 1,
        "max_samples": 100,
    }
    sampler_name: ClassVar[str] = ""

    def __init__(self, head, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        c = self.config
        self.prior_sigma = float(c["prior_sigma"])
        self.lr_option = float(c["lr"])
        self.burn_in_epochs = float(c["burn_in_epochs"])
        thin, max_samples = c["thin"], c["max_samples"]
        if self.prior_sigma <= 0:
            raise ValueError(f"inference.prior_sigma must be > 0, got {self.prior_sigma}")
        if self.lr_option < 0:
            raise ValueError(f"inference.lr must be >= 0 (0 = default), got {self.lr_option}")
        if self.burn_in_epochs < 0:
            raise ValueError(f"inference.burn_in_epochs must be >= 0, got {self.burn_in_epochs}")
        if not isinstance(thin, int) or thin < 1:
            raise ValueError(f"inference.thin must be an integer >= 1, got {thin!r}")
        if not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"inference.max_samples must be an integer >= 1, got {max_samples!r}")
        self.store = SampleStore(burn_in=0, thin=thin, max_samples=max_samples)
        self.burn_in_steps: int | None = None
        self.steps = 0
        self.step_size: float | None = None
        self.sampler: Optimizer | None = None
        self.finished = False  # after_training ran (also restored from a finished run's meta)
        self._warned = False

    # -- subclasses -------------------------------------------------------------------------------
    def default_step_size(self, train_lr: float) -> float:
        """The step size when ``[inference] lr = 0``: train.lr / N, so the drift is an SGD step
        of train.lr / 2 on the mean loss."""
        return train_lr / self.num_train

    def make_sampler(self, params: list[Tensor], step_size: float) -> Optimizer:
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------------
    def configure_optimizer(
        self, param_groups: list[dict[str, Any]], *, optimizer: str, lr: float, weight_decay: float
    ) -> Optimizer:
        params = [p for group in param_groups for p in group["params"]]
        self.step_size = self.lr_option or self.default_step_size(lr)
        self.sampler = self.make_sampler(params, self.step_size)
        self._set_adapting()  # a resumed run already knows its burn-in
        return self.sampler

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        if self.burn_in_steps is None:
            steps_per_epoch = math.ceil(self.num_train / max(int(features.shape[0]), 1))
            self.burn_in_steps = round(self.burn_in_epochs * steps_per_epoch)
            self.store.burn_in = self.burn_in_steps
        self._set_adapting()  # also right after a resume, whatever order things were restored in
        # The mean NLL: the sampler applies the N-scaling and the prior itself.
        return super().training_loss(features, targets, indices)

    def _set_adapting(self) -> None:
        if isinstance(self.sampler, SGHMC) and self.burn_in_steps is not None:
            self.sampler.adapting = self.steps < (self.burn_in_steps or 0)

    def after_step(self, step: int) -> None:
        # ``step`` counts every phase's steps; the sampling phase keeps its own count.
        self.steps += 1
        self._set_adapting()
        self.store.offer(self.steps, self.head.parameters())

    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        self.finished = True
        samples = self.store.samples()
        if samples is None:
            warnings.warn(
                f"{self.sampler_name}: the sampling phase ended after {self.steps} steps, within "
                f"burn-in ({self.burn_in_steps} steps): no samples kept, predictions use the "
                "final parameters only (epistemic = 0). Raise train.head_epochs or lower "
                "inference.burn_in_epochs.",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        # Copy in place (``vector_to_parameters`` would make every parameter a view of one
        # storage, which safetensors refuses to save).
        with torch.no_grad():
            mean, offset = samples.mean(0), 0
            for p in self.head.parameters():
                p.copy_(mean[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    # -- prediction -------------------------------------------------------------------------------
    def sample(self, features: Tensor, k: int) -> Tensor:
        samples = self.store.samples()
        if samples is None:
            # During burn-in (e.g. the trainer's validation) the chain's current state is the
            # right prediction; once training is over, no samples is worth a warning.
            if self.finished and not self._warned:
                warnings.warn(
                    f"{self.sampler_name}: no kept samples; predicting with the current head "
                    "parameters only (epistemic = 0)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned = True
            return torch.softmax(self.head(features), dim=-1).unsqueeze(0).expand(k, -1, -1)
        chosen = samples[pick(samples.shape[0], k, samples.device)].to(features.device)
        return torch.softmax(batched_logits(self.head, chosen, features), dim=-1)

    def to(self, device: torch.device) -> SGMCMCMethod:
        self.store.to(device)
        return self

    # -- persistence ------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        """``samples``: the store's buffered rows (up to 2 x max_samples, see
        :class:`SampleStore`; prediction uses max_samples of them), ``sample_steps`` their steps."""
        rows, steps = self.store.buffer()
        if rows is None:
            rows = torch.zeros(0, sum(p.numel() for p in self.head.parameters()))
        return {"samples": rows, "sample_steps": torch.tensor(steps, dtype=torch.long)}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        unknown = set(state) - {"samples", "sample_steps"}
        if unknown:
            raise ValueError(f"{type(self).__name__}: unexpected extra state {sorted(unknown)}")
        if "samples" in state:
            steps = state.get("sample_steps")
            self.store.load(state["samples"], steps.tolist() if steps is not None else None)

    def extra_meta(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler_name,
            "step_size": self.step_size,
            "prior_sigma": self.prior_sigma,
            "burn_in_steps": self.burn_in_steps,
            "steps": self.steps,
            "thin": self.store.thin,
            "kept": len(self.store),
            "finished": self.finished,
        }

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.step_size = meta.get("step_size", self.step_size)
        self.burn_in_steps = meta.get("burn_in_steps", self.burn_in_steps)
        self.steps = int(meta.get("steps", self.steps))
        self.store.thin = int(meta.get("thin", self.store.thin))
        self.finished = bool(meta.get("finished", self.finished))
        if self.burn_in_steps is not None:
            self.store.burn_in = int(self.burn_in_steps)
