"""Attention: ``se``, squeeze-and-excitation channel attention (Hu et al., 2018)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.options import Field, PluginOptions


class SqueezeExcitation(nn.Module):
    class Options(PluginOptions):
        reduction: int = Field(16, ge=1, description="hidden width = channels / reduction")

    def __init__(self, channels: int, **options: Any) -> None:
        super().__init__()
        o = self.Options.parse(options, "model.attention", owner="attention 'se'")
        hidden = max(channels // o.reduction, 4)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = self.fc(x.mean(dim=(2, 3))).sigmoid()
        return x * weights[:, :, None, None]


@hookimpl
def register_attention(register: RegisterPart) -> None:
    register("se", SqueezeExcitation, summary="squeeze-and-excitation channel attention")
