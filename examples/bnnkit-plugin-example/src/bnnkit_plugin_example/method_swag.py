"""Method: ``swag``, diagonal SWAG over the head (Maddox et al., "A Simple Baseline for Bayesian
Uncertainty in Deep Learning", NeurIPS 2019).

SGD with momentum at a constant learning rate wanders around a mode; SWAG fits a Gaussian to
the iterates. Here over the head's parameters only (last-layer, like every bnnkit method):

- training: the usual cross-entropy (+ ``train.weight_decay`` as the Gaussian prior), optimised
  by SGD (momentum ``momentum``) at the constant rate ``swa_lr`` (``"auto"`` = ``train.lr``),
  whatever ``train.optimizer`` says: the SWAG argument is about SGD iterates;
- every ``collect_every`` optimiser steps after ``burn_in_epochs`` head epochs, the running first
  and second moments of the flattened head parameters are updated;
- the spread of the fitted Gaussian grows with ``swa_lr`` (constant-rate SGD samples a
  distribution whose covariance scales with the rate; Mandt et al., 2017): a rate that suits
  AdamW (``train.lr``) is usually too small for SGD (on the quickstart's synthetic data,
  0.03 to 0.3 gave a visible spread without hurting accuracy);
- prediction: ``theta_k = mean + sqrt(scale) * sqrt(var) * z_k`` with ``var = E[theta^2] -
  mean^2``; the ``k`` heads run as one ``torch.func.vmap`` over the same pooled features, so the
  backbone still runs once per image. After training the head itself holds the SWA mean.

SWAG needs a fixed feature map, so ``joint_finetune = False``: with ``train.backbone =
"finetune"`` bnnkit first fine-tunes the detector with MAP (the head starts the SWAG phase at a
MAP solution, as in the paper, so ``burn_in_epochs = 0`` suits it); with ``"frozen"`` the head
starts from scratch on cached features: give it ``burn_in_epochs`` to reach the mode first.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from torch import Tensor
from torch.func import functional_call, vmap
from torch.nn.utils import parameters_to_vector

from bnnkit import Field, PluginOptions, hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod

VAR_CLAMP = 1e-30  # as in the reference implementation: var = max(E[x^2] - E[x]^2, 1e-30)


class DiagonalSWAG(InferenceMethod):
    heads = ("linear",)
    joint_finetune = False
    summary = "diagonal SWAG: Gaussian fitted to constant-rate SGD iterates of the head"

    class Options(PluginOptions):
        swa_lr: Literal["auto"] | Annotated[float, Field(gt=0)] = Field(
            "auto", description="constant SGD rate; 'auto' = train.lr"
        )
        momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
        burn_in_epochs: int = Field(0, ge=0, description="head epochs before collecting")
        collect_every: int = Field(1, ge=1, description="optimiser steps between snapshots")
        scale: float = Field(1.0, ge=0, description="variance scale of the samples")

    def __init__(self, head, *, num_train: int, **options: Any) -> None:
        # validates the options against Options (an OptionsError is a UsageError)
        super().__init__(head, num_train=num_train, **options)
        # Hand-written because torch.optim.swa_utils.AveragedModel keeps only the first moment
        # (its first update copies the raw parameters, so it cannot track E[theta^2]).
        n_params = sum(p.numel() for p in head.parameters())
        device = next(head.parameters()).device
        self.mean = torch.zeros(n_params, device=device)
        self.sq_mean = torch.zeros(n_params, device=device)
        self.n_snapshots = 0
        self.epochs_done = 0
        self.steps_seen = 0

    # -- training -------------------------------------------------------------------------------
    def configure_optimizer(
        self, param_groups: list[dict[str, Any]], *, optimizer: str, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        swa_lr = lr if self.config["swa_lr"] == "auto" else float(self.config["swa_lr"])
        groups = [{**g, "lr": swa_lr} for g in param_groups]  # one constant rate, no scaling
        return torch.optim.SGD(
            groups, lr=swa_lr, momentum=float(self.config["momentum"]), weight_decay=weight_decay
        )

    def _vector(self) -> Tensor:
        return parameters_to_vector(self.head.parameters()).detach()

    def collect(self) -> None:
        """Fold the head's current parameters into the running moments."""
        theta = self._vector().to(self.mean.device)
        n = self.n_snapshots
        self.mean.mul_(n / (n + 1)).add_(theta / (n + 1))
        self.sq_mean.mul_(n / (n + 1)).add_(theta.square() / (n + 1))
        self.n_snapshots = n + 1

    def after_step(self, step: int) -> None:
        self.steps_seen += 1
        if self.epochs_done < int(self.config["burn_in_epochs"]):
            return
        if self.steps_seen % int(self.config["collect_every"]) == 0:
            self.collect()

    def after_epoch(self, epoch: int) -> None:
        self.epochs_done += 1

    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        if self.n_snapshots == 0:
            self.collect()  # too short to collect anything: SWAG degenerates to the last iterate
        # in place (not vector_to_parameters, which would make the parameters views of one
        # shared vector, and safetensors refuses to save those)
        with torch.no_grad():
            for name, value in self._unflatten(self.mean.unsqueeze(0)).items():
                self.head.get_parameter(name).copy_(value[0])

    @property
    def variance(self) -> Tensor:
        return (self.sq_mean - self.mean.square()).clamp_min(VAR_CLAMP)

    def to(self, device: torch.device) -> DiagonalSWAG:
        self.mean = self.mean.to(device)
        self.sq_mean = self.sq_mean.to(device)
        return self

    # -- prediction -----------------------------------------------------------------------------
    def sample(self, features: Tensor, k: int) -> Tensor:
        if self.n_snapshots < 2:  # no spread yet (e.g. validation before the first snapshots)
            probs = torch.softmax(self.head(features), dim=-1)
            return probs.unsqueeze(0).expand(k, *probs.shape)
        mean = self.mean.to(features.device)
        std = self.variance.to(features.device).sqrt() * float(self.config["scale"]) ** 0.5
        thetas = mean + std * torch.randn(k, mean.numel(), device=features.device)
        params = self._unflatten(thetas)
        logits = vmap(lambda p: functional_call(self.head, p, (features,)))(params)
        return torch.softmax(logits, dim=-1)

    def _unflatten(self, thetas: Tensor) -> dict[str, Tensor]:
        """``(k, P)`` flat parameter samples -> ``{name: (k, *shape)}`` for ``functional_call``."""
        out, offset = {}, 0
        for name, p in self.head.named_parameters():
            out[name] = thetas[:, offset : offset + p.numel()].view(-1, *p.shape)
            offset += p.numel()
        return out

    # -- persistence ----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "sq_mean": self.sq_mean}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.mean = state["mean"].to(self.mean)
        self.sq_mean = state["sq_mean"].to(self.sq_mean)

    def extra_meta(self) -> dict[str, Any]:
        return {
            "n_snapshots": self.n_snapshots,
            "epochs_done": self.epochs_done,
            "steps_seen": self.steps_seen,
            "mean_std": float(self.variance.sqrt().mean()) if self.n_snapshots > 1 else 0.0,
        }

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.n_snapshots = int(meta.get("n_snapshots", 0))
        self.epochs_done = int(meta.get("epochs_done", 0))
        self.steps_seen = int(meta.get("steps_seen", 0))


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("swag", DiagonalSWAG)
