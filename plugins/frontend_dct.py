"""Frontend: ``dct``, the log-magnitude block DCT (the frequency input of Frank et al., ICML 2020,
computed on JPEG-style blocks).

Each channel is cut into ``block`` x ``block`` tiles (8 x 8 by default, JPEG's), each tile
replaced by its orthonormal 2-D DCT-II (``scipy.fft.dctn(tile, type=2, norm="ortho")``), and
every coefficient by ``log(|coefficient| + eps)``. The output has the input's shape, tile
``(i, j)``'s coefficient ``(u, v)`` at pixel ``(block * i + u, block * j + v)``, so a CNN reads
frequency per position. Sizes that are not a multiple of ``block``: the image is
replicate-padded on the bottom and right to the next multiple and the output cropped back to the
input's size (the last, partial tiles keep their low-frequency coefficients only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.frontend import Frontend
from bnnkit.options import Field, PluginOptions


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` is ``scipy.fft.dct(x, norm="ortho")``)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


class BlockDCT(Frontend):
    plugin_name = "dct"

    class Options(PluginOptions):
        block: int = Field(8, ge=2, le=64, description="tile side (8: JPEG's blocks)")
        eps: float = Field(1e-4, gt=0, description="log(|coefficient| + eps)")

    def __init__(self, in_channels: int = 3, **options: Any) -> None:
        super().__init__(in_channels, **options)
        self.block, self.eps = int(self.opts.block), float(self.opts.eps)
        self.register_buffer("basis", dct_matrix(self.block), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        n = self.block
        h, w = images.shape[-2:]
        ph, pw = -h % n, -w % n
        x = F.pad(images, (0, pw, 0, ph), mode="replicate") if ph or pw else images
        b, c, hh, ww = x.shape
        tiles = x.reshape(b, c, hh // n, n, ww // n, n).transpose(3, 4)  # (.., i, j, n, n)
        d = self.basis.to(x.dtype)
        coeffs = d @ tiles @ d.t()
        out = coeffs.transpose(3, 4).reshape(b, c, hh, ww)[..., :h, :w]
        return torch.log(out.abs() + self.eps)


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register(
        "dct",
        BlockDCT,
        summary="log-magnitude orthonormal DCT-II of 8x8 blocks, per channel (Frank et al. 2020)",
    )
