"""Attention: ``none``, the identity (the feature map goes straight to pooling)."""

from __future__ import annotations

from torch import nn

from bnnkit import hookimpl


def create_none(channels: int) -> nn.Module:
    return nn.Identity()


@hookimpl
def register_attention(register):
    register("none", create_none, summary="identity: no attention")
