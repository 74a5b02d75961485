"""Method: ``map``, the deterministic baseline every table compares against.

Maximum a posteriori with a Gaussian prior = cross-entropy + weight decay. Prediction is one
deterministic pass, repeated ``k`` times so it fits the ``probs[k, B, C]`` shape (epistemic = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnnkit import hookimpl
from bnnkit.methods.base import InferenceMethod


class MAP(InferenceMethod):
    heads = ("linear", "dropout")
    default_head = "linear"
    summary = "deterministic MAP baseline (cross-entropy + weight decay)"

    def sample(self, features: Tensor, k: int) -> Tensor:
        was_training = self.head.training
        self.head.eval()
        probs = torch.softmax(self.head(features), dim=-1)
        self.head.train(was_training)
        return probs.unsqueeze(0).expand(k, *probs.shape)


@hookimpl
def register_methods(register):
    register("map", MAP, summary=MAP.summary)
