"""SG-MCMC over the head: the store of kept samples and the method base of ``sgld``, ``psgld``
and ``sghmc``. The samplers (and their step-size defaults) live in :mod:`bnnkit.methods.samplers`
and are importable from here too.

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
from bnnkit.methods.sampler_base import _Sampler
from bnnkit.methods.samplers import PSGLD, SGHMC, SGLD
from bnnkit.options import Field, PluginOptions

__all__ = [
    "PSGLD",
    "SGHMC",
    "SGLD",
    "SGMCMCMethod",
    "SampleStore",
    "batched_logits",
    "pick",
]


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
    - ``lr``: the sampler's step size, used as given; 0 (default) = calibrated during burn-in so
      that the minibatch-gradient noise is at most ``noise_fraction`` of the injected noise in
      every coordinate, capped by :meth:`default_step_size` (see :mod:`bnnkit.methods.samplers`);
    - ``noise_fraction``: that fraction (only used when ``lr = 0``);
    - ``burn_in_epochs``: length of burn-in in epochs of the sampling phase (fractions allowed),
      turned into steps from N and the *global* batch (all ranks' batches) on the first step;
    - ``thin``: keep every ``thin``-th step after burn-in (doubled whenever the store is full);
    - ``max_samples``: how many samples prediction uses, evenly spread over the post-burn-in
      chain (flattened head parameters, saved in the run's state file as ``samples``).

    After training the head is set to the mean of the kept samples (for a linear head its logits
    are the samples' mean logits), so a single deterministic pass stays meaningful.

    Set by the trainer before :meth:`configure_optimizer`: ``chain_seed`` (the recipe's seed; it
    seeds the sampler's own generator, identical on every rank, so torchrun ranks run one chain
    on their all-reduced gradients) and ``world_size`` (ranks whose batches make a step).
    """

    heads: ClassVar[tuple[str, ...]] = ("linear",)
    joint_finetune: ClassVar[bool] = False
    # clipping the gradient would bias the Langevin dynamics' stationary distribution
    clip_gradients: ClassVar[bool] = False
    sampler_name: ClassVar[str] = ""

    class Options(PluginOptions):
        prior_sigma: float = Field(
            1.0, gt=0, description="sd of the Gaussian prior on the head (replaces weight decay)"
        )
        lr: float = Field(0.0, ge=0, description="step size; 0 = calibrated during burn-in")
        noise_fraction: float = Field(
            0.25, gt=0, lt=1, description="max minibatch-noise share of the injected noise (lr = 0)"
        )
        burn_in_epochs: float = Field(
            0.5, ge=0, description="burn-in length in epochs of the sampling phase"
        )
        thin: int = Field(1, ge=1, description="keep every thin-th step after burn-in")
        max_samples: int = Field(100, ge=1, description="kept samples prediction uses")

    def __init__(self, head, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        o = self.opts
        self.prior_sigma = float(o.prior_sigma)
        self.lr_option = float(o.lr)
        self.noise_fraction = float(o.noise_fraction)
        self.burn_in_epochs = float(o.burn_in_epochs)
        thin, max_samples = int(o.thin), int(o.max_samples)
        self.store = SampleStore(burn_in=0, thin=thin, max_samples=max_samples)
        self.chain_seed = 0
        self.world_size = 1
        self.burn_in_steps: int | None = None
        self.steps = 0
        self._step_size: float | None = None  # from a saved run's meta, when no sampler exists
        self.sampler: _Sampler | None = None
        self.noise_report: dict[str, Any] = {}
        self.finished = False  # after_training ran (also restored from a finished run's meta)
        self._warned = False

    # -- subclasses -------------------------------------------------------------------------------
    def default_step_size(self, train_lr: float) -> float:
        """The cap of the calibrated step (``[inference] lr = 0``): train.lr / N, the old
        default, whose drift is an SGD step of train.lr / 2 on the mean loss (stable wherever
        SGD at that rate is; the minibatch noise cannot tell the curvature, so the calibration
        only ever lowers the step)."""
        return train_lr / self.num_train

    def make_sampler(self, params: list[Tensor], **common: Any) -> _Sampler:
        """The sampler over ``params``; ``common`` are the :class:`~bnnkit.methods.samplers.
        _Sampler` arguments (lr, num_data, prior_sigma, noise_fraction, seed)."""
        raise NotImplementedError

    # -- training ---------------------------------------------------------------------------------
    @property
    def step_size(self) -> float | None:
        """The sampler's step now (the calibrated one once burn-in has ended)."""
        if self.sampler is not None:
            return float(self.sampler.param_groups[0]["lr"])
        return self._step_size

    def configure_optimizer(
        self, param_groups: list[dict[str, Any]], *, optimizer: str, lr: float, weight_decay: float
    ) -> Optimizer:
        params = [p for group in param_groups for p in group["params"]]
        calibrated = self.lr_option == 0
        self.sampler = self.make_sampler(
            params,
            lr=self.lr_option or self.default_step_size(lr),
            num_data=self.num_train,
            prior_sigma=self.prior_sigma,
            noise_fraction=self.noise_fraction if calibrated else None,
            seed=self.chain_seed,
        )
        self._set_adapting()  # a resumed run already knows its burn-in
        return self.sampler

    def plan_burn_in(self, global_batch: int) -> None:
        """Burn-in steps from ``burn_in_epochs``, N and the global batch (all ranks' images)."""
        steps_per_epoch = math.ceil(self.num_train / max(int(global_batch), 1))
        self.burn_in_steps = round(self.burn_in_epochs * steps_per_epoch)
        self.store.burn_in = self.burn_in_steps
        self._set_adapting()

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        if self.burn_in_steps is None:
            self.plan_burn_in(int(features.shape[0]) * self.world_size)
        self._set_adapting()  # also right after a resume, whatever order things were restored in
        # The mean NLL: the sampler applies the N-scaling and the prior itself.
        return super().training_loss(features, targets, indices)

    def _set_adapting(self) -> None:
        if self.sampler is not None and self.burn_in_steps is not None:
            self.sampler.adapting = self.steps < self.burn_in_steps

    def after_step(self, step: int) -> None:
        # ``step`` counts every phase's steps; the sampling phase keeps its own count.
        self.steps += 1
        if self.steps == self.burn_in_steps and self.sampler is not None:
            self.sampler.finish_burn_in()
            self._report_noise()
        self._set_adapting()
        self.store.offer(self.steps, self.head.parameters())

    def _report_noise(self) -> None:
        """At the end of burn-in: record (and warn once about) minibatch noise above the
        injected noise, e.g. with a large explicit ``[inference] lr``."""
        if self.sampler is None:
            return
        self.noise_report = self.sampler.diagnostics()
        r = self.noise_report
        bad = max(r["noise_dominated"], r.get("noise_clamped", 0))
        if bad:
            clamped = ""
            if "noise_clamped" in r:
                clamped = f"; the injected noise is clamped to 0 in {r['noise_clamped']}"
            warnings.warn(
                f"{self.sampler_name}: at step size {self.step_size:.3g} the minibatch gradient "
                f"noise exceeds the noise the sampler needs in {r['noise_dominated']} of "
                f"{r['coordinates']} coordinates (largest fraction "
                f"{r['gradient_noise_fraction']:.3g}){clamped}: the chain's spread is wrong "
                "there. Use [inference] lr = 0 (calibrated) or a smaller lr.",
                RuntimeWarning,
                stacklevel=2,
            )

    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        self.finished = True
        if self.sampler is not None and self.steps:
            self.noise_report = self.sampler.diagnostics()
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
    def sample_logits(self, features: Tensor, k: int) -> Tensor:
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
            return self.head(features).unsqueeze(0).expand(k, -1, -1)
        chosen = samples[pick(samples.shape[0], k, samples.device)].to(features.device)
        return batched_logits(self.head, chosen, features)

    def to(self, device: torch.device) -> SGMCMCMethod:
        self.store.to(device)
        return self

    # -- persistence ------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        """``samples``: the store's buffered rows (up to 2 x max_samples, see
        :class:`SampleStore`; prediction uses max_samples of them), ``sample_steps`` their steps.
        (The sampler's statistics, step and generator are in its optimiser state.)"""
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
            "step_calibrated": self.lr_option == 0,
            "noise_fraction_target": self.noise_fraction if self.lr_option == 0 else None,
            "prior_sigma": self.prior_sigma,
            "burn_in_steps": self.burn_in_steps,
            "steps": self.steps,
            "thin": self.store.thin,
            "kept": len(self.store),
            "finished": self.finished,
            "world_size": self.world_size,
            "noise": self.noise_report,
        }

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        self._step_size = meta.get("step_size", self._step_size)
        self.burn_in_steps = meta.get("burn_in_steps", self.burn_in_steps)
        self.steps = int(meta.get("steps", self.steps))
        self.store.thin = int(meta.get("thin", self.store.thin))
        self.finished = bool(meta.get("finished", self.finished))
        self.noise_report = dict(meta.get("noise") or {})
        if self.burn_in_steps is not None:
            self.store.burn_in = int(self.burn_in_steps)
