"""Head: ``linear``, a deterministic linear layer (MAP, SG-MCMC, Laplace and ensembles use it).

``init = "FILE"`` starts it from a released detector's head (:mod:`bnnkit.model.head_init`:
UnivFD's ``fc_weights.pth``, a CNNSpot/NPR ResNet ``fc``; one-logit heads become the equivalent
two-logit head). With ``train.epochs = 0`` and a post-hoc method (``kflaplace``, ``map``) nothing
is trained: the released detector is wrapped as it is. The file is read when a run starts;
a trained run's checkpoint holds the head, so loading one never reads it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions


class LinearHead(Head):
    plugin_name = "linear"
    deterministic = True

    class Options(PluginOptions):
        init: str | None = Field(
            None,
            description="initial weights from a released detector's head: a .pth/.safetensors "
            "file (one-logit heads become the equivalent two-logit head)",
        )
        init_keys: str = Field(
            "auto",
            description="where the layer is in the init file: univfd (weight/bias), resnet_fc "
            "(fc.weight/fc.bias), auto (the one layer of the right shape) or a key prefix",
        )

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        opts = self.opts
        self.linear = nn.Linear(in_features, num_classes)
        if opts.init is not None:
            from bnnkit.model.head_init import init_linear

            init_linear(self.linear, opts.init, opts.init_keys)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features)


@hookimpl
def register_heads(register: RegisterPart) -> None:
    register("linear", LinearHead, summary="deterministic linear layer")
