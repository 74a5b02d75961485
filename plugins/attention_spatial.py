"""Attention: ``spatial``, CBAM's spatial attention (Woo et al., 2018), as in the seed design.

The channel-wise mean and max maps are stacked, convolved (k x k) and squashed into a sigmoid
mask that reweights every location of the feature map. ``last_map`` keeps the latest mask so
``predict --explain`` can show where the detector looks.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import AfterValidator
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.options import Field, PluginOptions


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be a positive odd integer")
    return value


#: a convolution's kernel size: odd, so the map keeps its size
OddKernel = Annotated[int, Field(ge=1), AfterValidator(_odd)]


class SpatialAttention(nn.Module):
    class Options(PluginOptions):
        kernel_size: OddKernel = Field(7, description="odd size of the mask's convolution")

    def __init__(self, channels: int, **options: Any) -> None:
        super().__init__()
        o = self.Options.parse(options, "model.attention", owner="attention 'spatial'")
        kernel_size = o.kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.last_map: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        mask = torch.sigmoid(self.conv(pooled))
        self.last_map = mask.detach()
        return x * mask


@hookimpl
def register_attention(register: RegisterPart) -> None:
    register(
        "spatial", SpatialAttention, summary="CBAM spatial attention (mean/max -> conv -> mask)"
    )
