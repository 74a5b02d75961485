"""Head: ``sngp``, SNGP's random-Fourier-feature Gaussian-process output layer (Liu et al.,
NeurIPS 2020); its Laplace posterior is fitted by the ``sngp`` method (``plugins/method_sngp.py``).

``[model.head]`` options: pooled features ``x [B, d]`` -> random Fourier features
``phi(x) = sqrt(2 / D) cos(W x + b)``, ``W [D, d] ~ N(0, 1 / lengthscale^2)``, ``b [D] ~ U[0,
2 pi]``, both drawn once when the head is built (under the recipe's seed) and kept as persistent
buffers (saved with the detector, so a loaded run has the same features) -> a linear output
``beta [C, D]`` without bias (the GP's prior mean is 0). ``phi(x)^T phi(x')`` approximates the RBF
kernel ``exp(-|x - x'|^2 / (2 lengthscale^2))``; ``D = num_inducing`` (default 1024).
``lengthscale = "auto"`` is ``sqrt(d)``: made for standardised features (``model.standardise``,
on by default with a frozen backbone), whose pairs lie ``|x - x'|^2 ~ 2 d`` apart, so a typical
pair has kernel value ``e^-1``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions

PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class SNGPHead(Head):
    """Random Fourier features and a bias-free linear output (see the module docstring)."""

    plugin_name = "sngp"
    deterministic = True

    class Options(PluginOptions):
        num_inducing: int = Field(1024, ge=1, le=65536, description="random features D")
        lengthscale: Literal["auto"] | PositiveFinite = Field(
            "auto", description="RBF lengthscale; 'auto' = sqrt(feature dim) (standardised)"
        )

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        o = self.opts
        ell = math.sqrt(in_features) if o.lengthscale == "auto" else float(o.lengthscale)
        self.lengthscale = ell
        self.register_buffer("rff_weight", torch.randn(o.num_inducing, in_features) / ell)
        self.register_buffer("rff_bias", torch.rand(o.num_inducing) * (2 * math.pi))
        self.output = nn.Linear(o.num_inducing, num_classes, bias=False)

    def variational_parameters(self) -> list[nn.Parameter]:
        """beta: the ``sngp`` method's loss holds its Gaussian prior (the ridge term), so the
        optimiser gives it no weight decay, as it does a variational posterior's."""
        return list(self.parameters())

    @property
    def num_inducing(self) -> int:
        return int(self.rff_bias.shape[0])

    def random_features(self, features: Tensor) -> Tensor:
        """``phi(x) [B, D]``."""
        x = features.to(self.rff_weight.dtype)
        scale = math.sqrt(2.0 / self.num_inducing)
        return scale * torch.cos(F.linear(x, self.rff_weight, self.rff_bias))

    def forward(self, features: Tensor) -> Tensor:
        return self.output(self.random_features(features))


@hookimpl
def register_heads(register: RegisterPart) -> None:
    register("sngp", SNGPHead, summary="random Fourier features + linear output (SNGP's GP layer)")
