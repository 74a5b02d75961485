"""Frontend: ``fft``, the log-magnitude 2-D Fourier spectrum of each channel.

``log(|fftshift(fft2(x, norm="ortho"))| + eps)`` per channel (``numpy.fft`` conventions): the
zero frequency at the centre (row ``H // 2``, column ``W // 2``), magnitudes independent of the
image size (orthonormal scaling). Periodic upsampling artifacts of generators show as peaks off
the centre. The output has the input's shape and channels; any size works.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.frontend import Frontend
from bnnkit.options import Field, PluginOptions


class LogSpectrum(Frontend):
    plugin_name = "fft"

    class Options(PluginOptions):
        eps: float = Field(1e-4, gt=0, description="log(|coefficient| + eps)")

    def __init__(self, in_channels: int = 3, **options: Any) -> None:
        super().__init__(in_channels, **options)
        self.eps = float(self.opts.eps)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        spectrum = torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))
        return torch.log(spectrum.abs() + self.eps).to(images.dtype)


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register(
        "fft",
        LogSpectrum,
        summary="log-magnitude 2-D Fourier spectrum per channel, zero frequency centred",
    )
