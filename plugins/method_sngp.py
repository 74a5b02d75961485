"""Method: ``sngp``, a random-Fourier-feature Gaussian-process output layer (the ``sngp`` head,
``plugins/head_sngp.py``) with a Laplace posterior (Liu et al., NeurIPS 2020, "Simple and
Principled Uncertainty Estimation with Deterministic Deep Learning via Distance Awareness").

``[inference]`` options: training is MAP on ``beta`` (mean cross-entropy + the
Gaussian prior ``ridge / (2 N) |beta|^2``; ``beta`` gets no optimiser weight decay, the prior is
that term). The Laplace posterior is fitted in :meth:`SNGP.after_training` on the training set's
final features, which is the paper's "accumulate over the last epoch" evaluated at the final
``beta`` (equal to it when the features stop changing, i.e. frozen; exact at the saved weights in
fine-tuning): per class ``k``, precision ``P_k = ridge I + sum_i p_ik (1 - p_ik) phi_i phi_i^T``
(``covariance = "full"``, ``D x D``) or its diagonal (``"diagonal"``, mean-field). Samples draw
``beta_k ~ N(beta_hat_k, P_k^-1)`` and return ``k`` logit samples ``[k, B, C]``: the predictive
variance ``phi^T P^-1 phi`` is ~0 on the training features and reverts to the prior's (1 / ridge)
far from them, so mutual information grows with distance (``tests/test_distance_aware.py``).

``spectral_norm = true`` (only with ``train.backbone = "finetune"``): every ``Conv1d/2d/3d`` and
``Linear`` of the backbone is wrapped in ``torch.nn.utils.parametrizations.spectral_norm`` when
the detector is built (its weight divided by its largest singular value, from one power
iteration per training forward); frontend, attention and head are not wrapped. It is torch's
exact normalisation (spectral norm 1), not the paper's soft bound ``c``; with batch norm after
each convolution (ResNets) the scale is absorbed. With a frozen backbone it would only distort
pretrained features, so the head phase refuses it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod
from bnnkit.model.detector import Detector, build_detector
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions
from bnnkit_plugins.head_sngp import PositiveFinite, SNGPHead

#: the layers ``spectral_norm = true`` wraps in the backbone
NORMALISED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _spectral_normalise(module: nn.Module) -> int:
    """Wrap every :data:`NORMALISED` layer under ``module``; how many were wrapped."""
    from torch.nn.utils.parametrizations import spectral_norm

    layers = [m for m in module.modules() if isinstance(m, NORMALISED)]
    for layer in layers:
        spectral_norm(layer)
    return len(layers)


class SNGP(InferenceMethod):
    heads = ("sngp",)
    joint_finetune = True
    needs_train_features = True
    summary = "SNGP: random-Fourier-feature GP output layer, Laplace posterior (distance-aware)"

    class Options(PluginOptions):
        ridge: PositiveFinite = Field(1.0, description="prior precision of beta (GP ridge)")
        covariance: Literal["full", "diagonal"] = Field(
            "full", description="Laplace precision: full D x D, or diagonal (mean-field)"
        )
        spectral_norm: bool = Field(
            False, description="spectral-normalise the backbone's conv/linear layers (finetune)"
        )

    def __init__(self, head: Head, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        if not isinstance(head, SNGPHead):
            raise ValueError(f"sngp needs the 'sngp' head, got {type(head).__name__}")
        self.sngp: SNGPHead = head
        self.precision: Tensor | None = None  # [C, D, D] full, [C, D] diagonal
        self._factor: Tensor | None = None  # what maps N(0, I) noise to beta draws
        self.facts: dict[str, Any] = {}

    @classmethod
    def build_detector(
        cls, model_cfg: Any, head_name: str, registry: Any, options: dict[str, Any]
    ) -> Detector:
        detector = build_detector(model_cfg, head_name, registry)
        if options.get("spectral_norm", False) is True:
            detector.spectral_normalised = _spectral_normalise(detector.backbone)
        return detector

    # -- training -------------------------------------------------------------------------------
    def begin_phase(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        if phase == "head" and self.opts.spectral_norm:
            # sngp fine-tunes jointly, so a head phase means train.backbone = "frozen"
            raise ValueError(
                "inference.spectral_norm = true only applies to a fine-tuned backbone "
                '(train.backbone = "finetune"); with a frozen one it would only distort the '
                "pretrained features: set it to false"
            )

    def training_loss(self, features: Tensor, targets: Tensor, indices: Tensor | None = None):
        from bnnkit.methods.base import LossParts

        logits = self.sngp(features)
        nll = F.cross_entropy(logits, targets)
        prior = 0.5 * self.opts.ridge / self.num_train * self.sngp.output.weight.square().sum()
        loss = nll + prior
        return LossParts(loss=loss, nll=nll.detach(), kl=prior.detach(), logits=logits.detach())

    # -- the Laplace fit ------------------------------------------------------------------------
    @torch.no_grad()
    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        if features is None or features.shape[0] == 0:
            raise ValueError("sngp needs the training features to fit its Laplace posterior")
        head = self.sngp
        was_training = head.training
        head.eval()
        c, d = head.num_classes, head.num_inducing
        full = self.opts.covariance == "full"
        dev = head.rff_weight.device
        shape = (c, d, d) if full else (c, d)
        precision = torch.zeros(shape, dtype=torch.float64, device=dev)
        for s in range(0, features.shape[0], 4096):
            phi = head.random_features(features[s : s + 4096].to(dev)).double()
            p = torch.softmax(phi @ head.output.weight.double().T, dim=-1)
            w = p * (1 - p)  # [B, C]
            if full:
                precision += torch.einsum("bc,bd,be->cde", w, phi, phi)
            else:
                precision += w.T @ phi.square()
        head.train(was_training)
        ridge = self.opts.ridge
        if full:
            precision += ridge * torch.eye(d, dtype=torch.float64, device=dev)
        else:
            precision += ridge
        self.facts = {"n_data": int(features.shape[0]), "fitted_on": "after_training"}
        self._set_precision(precision.float())

    def _set_precision(self, precision: Tensor) -> None:
        """Keep ``precision`` and its noise factor: ``L^-T`` of ``P = L L^T`` (full), or
        ``P^-1/2`` (diagonal)."""
        self.precision = precision
        p64 = precision.double()
        if precision.dim() == 3:
            chol = torch.linalg.cholesky(p64)
            eye = torch.eye(p64.shape[-1], dtype=p64.dtype, device=p64.device).expand_as(p64)
            inv_l = torch.linalg.solve_triangular(chol, eye, upper=False)
            self._factor = inv_l.transpose(-1, -2).to(precision.dtype)  # L^-T [C, D, D]
        else:
            self._factor = p64.rsqrt().to(precision.dtype)  # [C, D]

    def to(self, device: torch.device) -> SNGP:
        if self.precision is not None:
            assert self._factor is not None
            self.precision, self._factor = self.precision.to(device), self._factor.to(device)
        return self

    # -- prediction -----------------------------------------------------------------------------
    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        """``logits[k, B, C]`` from ``k`` draws of ``beta``; MAP (repeated) before the fit."""
        phi = self.sngp.random_features(features)
        beta = self.sngp.output.weight
        mean = phi @ beta.T
        if self._factor is None:
            return mean.unsqueeze(0).expand(k, *mean.shape)
        c, d = beta.shape
        z = torch.randn(k, c, d, dtype=beta.dtype, device=beta.device)
        if self._factor.dim() == 3:
            delta = torch.einsum("cde,kce->kcd", self._factor, z)
        else:
            delta = z * self._factor
        return mean.unsqueeze(0) + torch.einsum("bd,kcd->kbc", phi, delta)

    # -- persistence ----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        return {} if self.precision is None else {"sngp_precision": self.precision.contiguous()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if not state:
            self.precision = self._factor = None
            return
        if set(state) != {"sngp_precision"}:
            raise ValueError(f"sngp state needs ['sngp_precision'], got {sorted(state)}")
        precision = state["sngp_precision"]
        c, d = self.sngp.num_classes, self.sngp.num_inducing
        want = (c, d, d) if self.opts.covariance == "full" else (c, d)
        if tuple(precision.shape) != want:
            raise ValueError(
                f"sngp precision {tuple(precision.shape)} does not fit covariance = "
                f"'{self.opts.covariance}' with {d} random features and {c} classes {want}"
            )
        self._set_precision(precision.to(self.sngp.rff_weight.device))

    def extra_meta(self) -> dict[str, Any]:
        if self.precision is None:
            return {}
        return {**self.facts, "covariance": self.opts.covariance, "ridge": self.opts.ridge}

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.facts = {k: v for k, v in meta.items() if k not in ("covariance", "ridge")}


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("sngp", SNGP)
