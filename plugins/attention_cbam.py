"""Attention: ``cbam``, the full Convolutional Block Attention Module (Woo et al., 2018).

Channel attention (shared MLP over average- and max-pooled descriptors) followed by CBAM's
spatial attention (the ``spatial`` plugin), whose mask ``predict --explain`` can show.
"""

from __future__ import annotations

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit_plugins.attention_spatial import SpatialAttention


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
    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(channels, kernel_size)

    @property
    def last_map(self) -> Tensor | None:
        return self.spatial.last_map

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))


def create_cbam(channels: int, *, reduction: int = 16, kernel_size: int = 7) -> nn.Module:
    if reduction < 1 or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError("cbam needs reduction >= 1 and an odd kernel_size")
    return CBAM(channels, reduction, kernel_size)


@hookimpl
def register_attention(register):
    register("cbam", create_cbam, summary="CBAM: channel then spatial attention")
