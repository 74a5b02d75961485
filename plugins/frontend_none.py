"""Frontend: ``none``, the identity (the backbone sees the normalised image)."""

from __future__ import annotations

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.options import NoOptions


class NoFrontend(nn.Module):
    """The identity; ``out_channels`` = the input's."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.out_channels = in_channels

    def forward(self, images: Tensor) -> Tensor:
        return images


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register("none", NoFrontend, options=NoOptions, summary="identity: the image as it is")
