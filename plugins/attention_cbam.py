"""Attention: ``cbam``, the full Convolutional Block Attention Module (Woo et al., 2018).

Channel attention (shared MLP over average- and max-pooled descriptors) followed by CBAM's
spatial attention (the ``spatial`` plugin), whose mask ``predict --explain`` can show.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.options import Field, PluginOptions
from bnnkit_plugins.attention_spatial import OddKernel, SpatialAttention


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = (self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3)))).sigmoid()
        return x * weights[:, :, None, None]


class CBAM(nn.Module):
    class Options(PluginOptions):
        reduction: int = Field(16, ge=1, description="channel MLP width = channels / reduction")
        kernel_size: OddKernel = Field(7, description="odd size of the spatial mask's convolution")

    def __init__(self, channels: int, **options: Any) -> None:
        super().__init__()
        o = self.Options.parse(options, "model.attention", owner="attention 'cbam'")
        self.channel = ChannelAttention(channels, o.reduction)
        self.spatial = SpatialAttention(channels, kernel_size=o.kernel_size)

    @property
    def last_map(self) -> Tensor | None:
        return self.spatial.last_map

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


@hookimpl
def register_attention(register: RegisterPart) -> None:
    register("cbam", CBAM, summary="CBAM: channel then spatial attention")
