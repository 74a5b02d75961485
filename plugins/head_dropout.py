"""Head: ``dropout``, dropout on the pooled features then a linear layer (MC-Dropout, Gal 2016).

``sample_logits`` keeps dropout on and draws ``k`` independent masks in one vectorised call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions


class DropoutHead(Head):
    plugin_name = "dropout"
    deterministic = False

    class Options(PluginOptions):
        p: float = Field(0.5, ge=0, lt=1, description="dropout rate before the linear layer")

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        self.p = float(self.opts.p)
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


@hookimpl
def register_heads(register: RegisterPart) -> None:
    register("dropout", DropoutHead, summary="dropout + linear; dropout stays on to sample")
