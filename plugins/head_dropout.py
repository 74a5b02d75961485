"""Head: ``dropout``, dropout on the pooled features then a linear layer (MC-Dropout, Gal 2016).

``sample_logits`` keeps dropout on and draws ``k`` independent masks in one vectorised call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.model.heads import Head


class DropoutHead(Head):
    deterministic = False

    def __init__(self, in_features: int, num_classes: int, p: float = 0.5) -> None:
        super().__init__(in_features, num_classes)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
        self.p = p
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(F.dropout(features, self.p, self.training))

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        if self.p == 0.0:
            return super().sample_logits(features, k)
        keep = 1.0 - self.p
        masks = torch.bernoulli(
            torch.full((k, *features.shape), keep, device=features.device, dtype=features.dtype)
        )
        return self.linear(features.unsqueeze(0) * masks / keep)


def create_dropout(in_features: int, num_classes: int, *, p: float = 0.5) -> Head:
    return DropoutHead(in_features, num_classes, p)


@hookimpl
def register_heads(register):
    register("dropout", create_dropout, summary="dropout + linear; dropout stays on to sample")
