"""Frontend: ``laplacian``, a fixed per-channel 3x3 Laplacian high-pass (what
``model.input_filter = "laplacian"`` was; numerically the same).

The image's high-frequency residual, where generator fingerprints live (the SRM-style residual
of image forensics), so that even a random or generic frozen backbone sees them rather than the
scene. Reflect padding keeps the size. No parameters and no saved tensors (the kernel is a
non-persistent buffer), so checkpoints of runs made with ``input_filter`` load unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.frontend import Frontend


class LaplacianFilter(Frontend):
    """``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` on each channel, reflect-padded."""

    plugin_name = "laplacian"
    summary = "fixed 3x3 Laplacian high-pass per channel (was model.input_filter)"

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__(in_channels)
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernel", kernel.view(1, 1, 3, 3), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        c = images.shape[1]
        kernel = self.kernel.expand(c, 1, 3, 3).to(images.dtype)
        return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), kernel, groups=c)


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register("laplacian", LaplacianFilter)  # no options; summary: the class's
