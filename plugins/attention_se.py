"""Attention: ``se``, squeeze-and-excitation channel attention (Hu et al., 2018)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnkit import hookimpl


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        weights = self.fc(x.mean(dim=(2, 3))).sigmoid()
        return x * weights[:, :, None, None]


def create_se(channels: int, *, reduction: int = 16) -> nn.Module:
    if reduction < 1:
        raise ValueError("model.attention.reduction must be >= 1")
    return SqueezeExcitation(channels, reduction)


@hookimpl
def register_attention(register):
    register("se", create_se, summary="squeeze-and-excitation channel attention")
