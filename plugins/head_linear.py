"""Head: ``linear``, a deterministic linear layer (MAP, SG-MCMC, Laplace and ensembles use it)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.model.heads import Head


class LinearHead(Head):
    deterministic = True

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


def create_linear(in_features: int, num_classes: int) -> Head:
    return LinearHead(in_features, num_classes)


@hookimpl
def register_heads(register):
    register("linear", create_linear, summary="deterministic linear layer")
