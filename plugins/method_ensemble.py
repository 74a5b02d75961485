"""Method: ``ensemble``, a bootstrap ensemble of M MAP linear heads (Lakshminarayanan et al. 2017;
the reference's "MAP ensemble" with bootstrap resampling).

The M heads are one vectorised module, weights ``[M, C, D]`` and biases ``[M, C]``, each member
with its own random initialisation, all trained at once on the pooled features: one einsum per
step, not M forwards. With ``bootstrap = true`` member m sees a multinomial resample of the N
training images: a seeded draw of N indices with replacement gives per-image counts
``counts[m, i]`` (each row sums to N) and the member's loss weights image i by its count (the
trainer passes every batch's stable training-set ``indices``). With ``bootstrap = false`` the
members differ by initialisation and batch noise only (a "deep ensemble" of heads).

Loss per step: ``sum_m (1/B) sum_b counts[m, b] * NLL_m(b)`` -- summing over members gives every
member the gradient of its own bootstrap objective; weight decay comes from the optimiser.

``train.backbone = "finetune"``: the detector is first fine-tuned with MAP (its own ``linear``
head), then the M heads train on the frozen features. The detector's head is not used to predict.

``members = "detectors"`` (with ``size = M``, default 5): a deep ensemble of M whole detectors
(backbone + attention + head), each a MAP detector with its own seed and, with
``bootstrap = true``, its own bootstrap resample of the training images, trained one after
another into ``RUN/members/m<i>/`` (:mod:`bnnkit.engine.train.members`, resumable per member). The
run's detector is then a :class:`bnnkit.model.ensemble.EnsembleDetector` (built by
:meth:`BootstrapEnsemble.build_detector`): M backbone passes per image, features ``[B, M*D]``,
and ``sample_logits`` returns the M members' logits ``[M, B, C]``. ``members = <int>`` keeps
meaning M heads on one backbone, as in runs made before whole detectors existed.

``sample(features, k)`` returns the M members' probabilities ``[M, B, C]`` whatever ``k``: the
ensemble's posterior is the uniform mixture over its M members, and these M rows are that mixture
exactly. Every caller averages over the first axis (the predictive mean) and takes per-row
entropies (the aleatoric part), so each member weighs exactly 1/M and the decomposition is the
equal-weight mixture's (its mutual information), for any K: cycling members ``j mod M`` over
K = 16 or 32 rows with M = 5 would have weighted some members 4/16 and others 3/16, and K < M
would have dropped members.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ValidationInfo, field_validator
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod, LossParts
from bnnkit.model.detector import Detector, build_detector
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions, options_model

#: ``inference.members`` value that selects whole detectors instead of heads
DETECTORS = "detectors"


def bootstrap_counts(num_members: int, n: int, generator: torch.Generator) -> Tensor:
    """Per-member multinomial resampling counts ``[M, N]`` (float): N draws with replacement."""
    draws = torch.randint(0, n, (num_members, n), generator=generator)
    counts = torch.zeros(num_members, n)
    counts.scatter_add_(1, draws, torch.ones(num_members, n))
    return counts


class LinearEnsemble(nn.Module):
    """M independent linear layers ``D -> C`` evaluated in one einsum."""

    def __init__(
        self, num_members: int, in_features: int, num_classes: int, generator: torch.Generator
    ) -> None:
        super().__init__()
        # nn.Linear's default initialisation, drawn per member from the method's generator
        bound = 1.0 / math.sqrt(in_features)
        shape_w = (num_members, num_classes, in_features)
        weight = (torch.rand(shape_w, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(num_members, num_classes, generator=generator) * 2 - 1) * bound
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    @property
    def num_members(self) -> int:
        return self.weight.shape[0]

    def forward(self, features: Tensor, members: Tensor | None = None) -> Tensor:
        """Logits ``[M, B, C]`` (or ``[len(members), B, C]`` for the given member indices)."""
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w[members], b[members]
        return torch.einsum("bd,mcd->mbc", features.to(w.dtype), w) + b.unsqueeze(1)


class BootstrapEnsemble(InferenceMethod):
    heads = ("linear",)
    joint_finetune = False
    summary = "bootstrap ensemble of M MAP linear heads (vectorised) or of M whole detectors"

    class Options(PluginOptions):
        members: Annotated[int, Field(ge=1)] | Literal["detectors"] = Field(
            5,
            description='M heads on one backbone, or "detectors": `size` whole detectors '
            "(backbone + attention + head), trained one after another",
        )
        size: int = Field(
            5, ge=1, description='members = "detectors": the number of whole detectors M'
        )
        bootstrap: bool = Field(
            True, description="each member sees a bootstrap resample (false: init noise only)"
        )

        @field_validator("size")
        @classmethod
        def _size_needs_detectors(cls, value: int, info: ValidationInfo) -> int:
            if info.data.get("members", DETECTORS) != DETECTORS:
                raise ValueError(
                    'only used with members = "detectors"; with members = <int> that int is '
                    "the number of heads"
                )
            return value

    @classmethod
    def detector_members(cls, options: dict[str, Any]) -> int:
        """M when ``options`` (the ``[inference]`` keys) ask for whole detectors, else 0: the
        trainer then trains M member detectors (:mod:`bnnkit.engine.train.members`)."""
        opts = options_model(cls).parse(options, "inference", owner=cls.__name__)
        return int(opts.size) if opts.members == DETECTORS else 0

    @classmethod
    def build_detector(
        cls, model_cfg: Any, head_name: str, registry: Any, options: dict[str, Any]
    ) -> Detector:
        """One detector (M heads mode), or an :class:`~bnnkit.model.ensemble.EnsembleDetector`
        of M freshly built detectors (whole-detector mode; their weights come from the members'
        runs or the run's checkpoint)."""
        size = cls.detector_members(options)
        if not size:
            return build_detector(model_cfg, head_name, registry)
        from bnnkit.model.ensemble import EnsembleDetector

        members = [build_detector(model_cfg, head_name, registry) for _ in range(size)]
        return EnsembleDetector(members)

    def __init__(self, head: Head, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        self.bootstrap = bool(self.opts.bootstrap)
        self.whole = self.opts.members == DETECTORS
        if self.whole:  # the members' bootstrap lives in their training data (engine.train.members)
            self.size = int(self.opts.size)
            return
        members = int(self.opts.members)
        # drawn from the global RNG, which the trainer seeds with the recipe's seed
        self.seed = int(torch.randint(0, 2**31 - 1, ()).item())
        generator = torch.Generator().manual_seed(self.seed)
        self.members = LinearEnsemble(members, head.in_features, head.num_classes, generator)
        self.counts = self._counts()

    def _counts(self) -> Tensor:
        m = self.members.num_members
        if not self.bootstrap:
            return torch.ones(m, self.num_train)
        return bootstrap_counts(m, self.num_train, torch.Generator().manual_seed(self.seed + 1))

    # -- training -------------------------------------------------------------------------------
    def sample_weights(self, indices: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Per-member weights ``[M, B]`` of a batch: its images' bootstrap counts. Without
        ``indices`` (not from the trainer), Poisson(1) weights, the streaming bootstrap."""
        m = self.members.num_members
        if not self.bootstrap:
            return torch.ones(m, batch, device=device)
        if indices is None:
            return torch.poisson(torch.ones(m, batch, device=device))
        if int(indices.max()) >= self.counts.shape[1] or int(indices.min()) < 0:
            raise ValueError(
                f"training index {int(indices.max())} outside the {self.counts.shape[1]} "
                "images the bootstrap counts were drawn for"
            )
        return self.counts[:, indices.to(self.counts.device)].to(device)

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        if self.whole:  # members train as MAP detectors of their own; this is the mixture's NLL
            return super().training_loss(features, targets, indices)
        logits = self.members(features)  # [M, B, C]
        m, b, c = logits.shape
        nll = F.cross_entropy(logits.reshape(m * b, c), targets.repeat(m), reduction="none").view(
            m, b
        )
        weights = self.sample_weights(indices, b, features.device)
        per_member = (weights * nll).sum(1) / b
        loss = per_member.sum()
        mean_probs = torch.softmax(logits.detach(), dim=-1).mean(0)
        return LossParts(
            loss=loss,
            nll=per_member.detach().mean(),
            kl=torch.zeros((), device=features.device),
            logits=mean_probs.clamp_min(1e-12).log(),
        )

    def configure_optimizer(
        self, param_groups: list[dict[str, Any]], *, optimizer: str, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        """The trainer's groups (the detector's head: unused here, so it gets no gradient and stays
        as the MAP fine-tune left it) plus one group for the M member heads."""
        extra = [] if self.whole else [{"params": list(self.members.parameters())}]
        groups = [*param_groups, *extra]
        return super().configure_optimizer(
            groups, optimizer=optimizer, lr=lr, weight_decay=weight_decay
        )

    def to(self, device: torch.device) -> BootstrapEnsemble:
        if self.whole:  # everything is in the detector
            return self
        self.members.to(device)  # in place: parameters keep their identity for the optimiser
        self.counts = self.counts.to(device)
        return self

    # -- prediction -----------------------------------------------------------------------------
    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        """``logits[M, B, C]``, one row per member, whatever ``k`` (the exact equal-weight
        mixture; more rows would only repeat members, and unevenly unless M divides ``k``)."""
        if k < 1:
            raise ValueError(f"need k >= 1 posterior samples, got {k}")
        if self.whole:  # the EnsembleHead: member m's head on member m's features
            return self.head.sample_logits(features, k)
        return self.members(features)

    # -- persistence ----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        if self.whole:  # the members' weights are the detector's
            return {}
        return {"members.weight": self.members.weight, "members.bias": self.members.bias}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if self.whole:
            return super().load_extra_state(state)
        expected = {"members.weight", "members.bias"}
        if set(state) != expected:
            raise ValueError(f"ensemble state needs {sorted(expected)}, got {sorted(state)}")
        w, b = state["members.weight"], state["members.bias"]
        if w.shape != self.members.weight.shape or b.shape != self.members.bias.shape:
            raise ValueError(
                f"ensemble members {tuple(w.shape)} do not fit {self.members.num_members} heads "
                f"of shape {tuple(self.members.weight.shape[1:])}"
            )
        with torch.no_grad():
            self.members.weight.copy_(w)
            self.members.bias.copy_(b)

    def extra_meta(self) -> dict[str, Any]:
        if self.whole:
            return {"members": DETECTORS, "size": self.size, "bootstrap": self.bootstrap,
                    "backbone_passes": self.size}  # fmt: skip
        return {
            "members": self.members.num_members,
            "bootstrap": self.bootstrap,
            "bootstrap_seed": self.seed,
        }

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        if not self.whole and "bootstrap_seed" in meta:
            self.seed = int(meta["bootstrap_seed"])
            self.counts = self._counts().to(self.counts.device)


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("ensemble", BootstrapEnsemble)
