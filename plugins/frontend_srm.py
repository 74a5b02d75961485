"""Frontend: ``srm``, the three fixed 5x5 SRM residual kernels of image forensics.

The kernels are those of the noise stream of Zhou et al., "Learning Rich Features for Image
Manipulation Detection" (RGB-N, CVPR 2018), chosen there from the spatial rich model of
Fridrich & Kodovsky, "Rich Models for Steganalysis of Digital Images" (IEEE TIFS 2012), each
divided by its normalisation q (the magnitude of its central tap, as RGB-N divides them)::

    KV ("SQUARE 3x3", q = 4)    KB ("SQUARE 5x5", q = 12)        second order ("1st", q = 2)
    [ 0  0  0  0  0]            [-1   2  -2   2  -1]               [0  0  0  0  0]
    [ 0 -1  2 -1  0]            [ 2  -6   8  -6   2]               [0  0  0  0  0]
    [ 0  2 -4  2  0]   / 4      [-2   8 -12   8  -2]   / 12        [0  1 -2  1  0]   / 2
    [ 0 -1  2 -1  0]            [ 2  -6   8  -6   2]               [0  0  0  0  0]
    [ 0  0  0  0  0]            [-1   2  -2   2  -1]               [0  0  0  0  0]

Channels (``channels``): ``"sum"`` (default) gives 3 channels, kernel k applied to every colour
channel and summed over them, as RGB-N's noise stream does, so a 3-channel (pretrained) backbone
reads it unchanged; ``"separate"`` gives 9, channel ``3 * k + c`` = kernel k on colour c, and the
backbone is built with ``in_chans = 9`` (timm adapts a pretrained first convolution). Reflect
padding keeps the size (RGB-N pads with zeros; reflect avoids a border the detector could learn).
The kernels are a non-persistent buffer, rebuilt from the recipe; with ``learnable = true`` they
are a parameter initialised to them (trained with the backbone, saved with the detector).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.frontend import Frontend
from bnnkit.options import Field, PluginOptions

_KV = [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]
_KB = [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
       [-1, 2, -2, 2, -1]]  # fmt: skip
_SECOND = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]


def srm_kernels() -> Tensor:
    """The three normalised kernels, ``(3, 5, 5)``: KV / 4, KB / 12, second order / 2."""
    raw = torch.tensor([_KV, _KB, _SECOND], dtype=torch.float32)
    return raw / torch.tensor([4.0, 12.0, 2.0])[:, None, None]


class SRMFilter(Frontend):
    plugin_name = "srm"

    class Options(PluginOptions):
        channels: Literal["sum", "separate"] = Field(
            "sum",
            description="sum: 3 channels, each kernel summed over the colours (RGB-N); "
            "separate: 3 x colours channels (backbone built with in_chans = 9)",
        )
        learnable: bool = Field(
            False, description="train the kernels with the backbone (initialised to SRM's)"
        )

    def __init__(self, in_channels: int = 3, **options: Any) -> None:
        super().__init__(in_channels, **options)
        o = self.opts
        self.separate = o.channels == "separate"
        kernels = srm_kernels()
        if self.separate:  # out 3k + c: kernel k on colour c alone
            weight = kernels.repeat(in_channels, 1, 1)[:, None]  # grouped: c * 3 + k
            order = torch.arange(3 * in_channels).view(in_channels, 3).t().reshape(-1)
            self.register_buffer("order", order, persistent=False)
        else:  # out k: kernel k on every channel, summed
            weight = kernels[:, None].expand(3, in_channels, 5, 5).clone()
        self.out_channels = 3 * in_channels if self.separate else 3
        if o.learnable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = F.pad(images, (2, 2, 2, 2), mode="reflect")
        weight = self.weight.to(images.dtype)
        if not self.separate:
            return F.conv2d(x, weight)
        out = F.conv2d(x, weight, groups=self.in_channels)  # channel 3c + k
        return out[:, self.order]


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register(
        "srm",
        SRMFilter,
        summary="the three 5x5 SRM residual kernels (Zhou et al. 2018; Fridrich & Kodovsky)",
    )
