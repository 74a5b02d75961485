"""Method: ``mcdropout``, Monte Carlo dropout (Gal & Ghahramani, 2016).

Trained like MAP with dropout before the head's linear layer; at prediction dropout stays on and
``k`` masks are drawn in one vectorised call. The rate is the head's option
(``[model.head] p = 0.5``).
"""

from __future__ import annotations

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod


class MCDropout(InferenceMethod):
    heads = ("dropout",)
    summary = "MC-Dropout: dropout kept on at prediction"


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("mcdropout", MCDropout)
