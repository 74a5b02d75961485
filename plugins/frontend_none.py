"""Frontend: ``none``, the identity (the backbone sees the normalised image)."""

from __future__ import annotations

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.frontend import Frontend


class NoFrontend(Frontend):
    """The identity; ``out_channels`` = the input's."""

    def forward(self, images: Tensor) -> Tensor:
        return images


@hookimpl
def register_frontends(register: RegisterPart) -> None:
    register("none", NoFrontend, summary="identity: the image as it is")
