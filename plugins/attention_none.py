"""Attention: ``none``, the identity (the feature map goes straight to pooling)."""

from __future__ import annotations

from torch import nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.options import NoOptions


def create_none(channels: int) -> nn.Module:
    return nn.Identity()


@hookimpl
def register_attention(register: RegisterPart) -> None:
    register("none", create_none, options=NoOptions, summary="identity: no attention")
