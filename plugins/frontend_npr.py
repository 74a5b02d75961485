"""Frontend: ``npr``, the neighbouring-pixel residual of NPR (Tan et al., CVPR 2024).

``npr = x - up(down(x))`` with nearest-neighbour down- and up-sampling by 2, so each pixel
minus the top-left pixel of its 2x2 cell: ``out[i, j] = scale * (x[i, j] - x[2*(i//2),
2*(j//2)])`` (zero at every even-even position). NPR feeds its network ``npr * 2/3``, the
default ``scale``. Per channel; the output keeps the input's size and channels.

Odd sizes: the formula above holds at every size. The last row (column) of an odd-height
(odd-width) image is the top-left of a cell of its own, so the image is replicate-padded to even
size for the down/up-sampling and the result cropped back: that row's residual is horizontal
only, ``x[i, j] - x[i, 2*(j//2)]`` (a last odd column's, vertical only). NPR's own code, which
upsamples the half-size image by exactly 2, fails on odd sizes instead.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.frontend import Frontend
from bnnkit.options import Field, PluginOptions


class NeighbourResidual(Frontend):
    plugin_name = "npr"

    class Options(PluginOptions):
        scale: float = Field(2.0 / 3.0, gt=0, description="factor on the residual (NPR: 2/3)")

    def __init__(self, in_channels: int = 3, **options: float) -> None:
        super().__init__(in_channels, **options)
        self.scale = float(self.opts.scale)

    def forward(self, images: Tensor) -> Tensor:
        h, w = images.shape[-2:]
        x = F.pad(images, (0, w % 2, 0, h % 2), mode="replicate") if h % 2 or w % 2 else images
        down = F.interpolate(x, scale_factor=0.5, mode="nearest")
        up = F.interpolate(down, scale_factor=2.0, mode="nearest")
        return (x - up)[..., :h, :w] * self.scale


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register(
        "npr",
        NeighbourResidual,
        summary="NPR's neighbouring-pixel residual x - up(down(x)), nearest, factor 2 (x 2/3)",
    )
