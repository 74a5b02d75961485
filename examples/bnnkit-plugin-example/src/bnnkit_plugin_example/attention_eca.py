"""Attention: ``eca``, efficient channel attention (Wang et al., "ECA-Net", CVPR 2020).

Global average pooling, a 1-D convolution across channels (kernel size adapted to the channel
count: k = |(log2 C + beta) / gamma| rounded up to odd), a sigmoid gate; maps ``(B,C,H,W)`` to
``(B,C,H,W)``. The block itself is timm's ``EcaModule``; this module only adapts it to bnnkit.
"""

from __future__ import annotations

from timm.layers import EcaModule
from torch import nn

from bnnkit import hookimpl
from bnnkit.errors import UsageError


def create_eca(
    channels: int, *, kernel_size: int = 0, gamma: float = 2.0, beta: float = 1.0
) -> nn.Module:
    """``[model.attention] name = "eca"``; ``kernel_size = 0`` picks it from the channel count."""
    if kernel_size < 0 or (kernel_size and kernel_size % 2 == 0):
        raise UsageError(f"model.attention.kernel_size must be 0 or odd, got {kernel_size}")
    if gamma <= 0:
        raise UsageError(f"model.attention.gamma must be > 0, got {gamma}")
    if kernel_size:
        return EcaModule(channels=None, kernel_size=kernel_size)
    return EcaModule(channels=channels, gamma=gamma, beta=beta)


@hookimpl
def register_attention(register):
    register("eca", create_eca, summary="efficient channel attention (ECA-Net, timm EcaModule)")
