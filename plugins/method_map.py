"""Method: ``map``, the deterministic baseline every table compares against.

Cross-entropy + weight decay. This is the MAP under a Gaussian prior N(0, sigma^2) only when the
decay is L2 in the gradient (``train.optimizer = "sgd"`` or ``"adam"``) with ``weight_decay`` =
1 / (N sigma^2) on the mean loss; AdamW's decoupled decay (the default) is not a prior, so there
it is regularised maximum likelihood, not a MAP equivalence. Prediction is one deterministic
pass, repeated ``k`` times so it fits the ``probs[k, B, C]`` shape (epistemic = 0).
"""

from __future__ import annotations

from torch import Tensor

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod


class MAP(InferenceMethod):
    heads = ("linear", "dropout")
    post_hoc = True  # train.epochs = 0 wraps a released head ([model.head] init)
    summary = "deterministic MAP baseline (cross-entropy + weight decay)"

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        was_training = self.head.training
        self.head.eval()
        logits = self.head(features)
        self.head.train(was_training)
        return logits.unsqueeze(0).expand(k, *logits.shape)


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("map", MAP)
