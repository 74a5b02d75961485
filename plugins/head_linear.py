"""Head: ``linear``, a deterministic linear layer (MAP, SG-MCMC, Laplace and ensembles use it)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.heads import Head
from bnnkit.options import NoOptions


class LinearHead(Head):
    deterministic = True
    Options = NoOptions

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


@hookimpl
def register_heads(register: RegisterPart) -> None:
    register("linear", LinearHead, summary="deterministic linear layer")
