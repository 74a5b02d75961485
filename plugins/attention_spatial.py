"""Attention: ``spatial``, CBAM's spatial attention (Woo et al., 2018), as in the seed design.

The channel-wise mean and max maps are stacked, convolved (k x k) and squashed into a sigmoid
mask that reweights every location of the feature map. ``last_map`` keeps the latest mask so
``predict --explain`` can show where the detector looks.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bnnkit import hookimpl


class SpatialAttention(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.last_map: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        mask = torch.sigmoid(self.conv(pooled))
        self.last_map = mask.detach()
        return x * mask


def create_spatial(channels: int, *, kernel_size: int = 7) -> nn.Module:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError("model.attention.kernel_size must be a positive odd integer")
    return SpatialAttention(channels, kernel_size)


@hookimpl
def register_attention(register):
    register("spatial", create_spatial, summary="CBAM spatial attention (mean/max -> conv -> mask)")
