"""Attention: ``eca``, efficient channel attention (Wang et al., "ECA-Net", CVPR 2020).

Global average pooling, a 1-D convolution across channels (kernel size adapted to the channel
count: k = |(log2 C + beta) / gamma| rounded up to odd), a sigmoid gate; maps ``(B,C,H,W)`` to
``(B,C,H,W)``. The block itself is timm's ``EcaModule``; this module only adapts it to bnnkit.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator
from timm.layers import EcaModule
from torch import nn

from bnnkit import Field, PluginOptions, hookimpl
from bnnkit.hookspecs import RegisterPart


class EcaOptions(PluginOptions):
    """``[model.attention] name = "eca"`` options, declared once: recipe validation,
    ``bnnkit plugins --kind attention`` and :func:`create_eca` all read them."""

    kernel_size: int = Field(0, ge=0, description="odd 1-D kernel size; 0 = from the channels")
    gamma: float = Field(2.0, gt=0, description="kernel-size rule's gamma (kernel_size = 0)")
    beta: float = Field(1.0, description="kernel-size rule's beta (kernel_size = 0)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value and value % 2 == 0:
            raise ValueError("must be 0 or odd")
        return value


def create_eca(channels: int, **options: Any) -> nn.Module:
    opts = EcaOptions.parse(options, "model.attention", owner="attention 'eca'")
    if opts.kernel_size:
        return EcaModule(channels=None, kernel_size=opts.kernel_size)
    return EcaModule(channels=channels, gamma=opts.gamma, beta=opts.beta)


@hookimpl
def register_attention(register: RegisterPart) -> None:
    register(
        "eca",
        create_eca,
        options=EcaOptions,
        summary="efficient channel attention (ECA-Net, timm EcaModule)",
    )
