"""Score: ``knn``, the distance to the k-th nearest training feature (Sun et al. 2022).

pytorch-ood's :class:`~pytorch_ood.detector.KNN` (scikit-learn's exact ``NearestNeighbors``):
features L2-normalised (option ``normalize``, the paper's choice), score = Euclidean distance to
the k-th nearest of the normalised training features (both classes together).

Which features: the ones the head sees (``ScoreInputs.features``). When the run standardises
them (``model.standardise``; ``auto``: on for a frozen backbone) these are the pooled features
centred on the training mean and divided by the training standard deviation per coordinate
(a diagonal standardisation, not a full whitening), so kNN L2-normalises *standardised*
features, not the raw penultimate activations of the paper (non-negative after a ReLU there).
Centring changes the angles between features, so the neighbours can differ from the paper's;
without standardisation (fine-tuned runs by default) they are the raw pooled features.

``k = "auto"`` is ``max(1, min(50, N // 10))`` for N training images: the paper's k = 50 was
for 50 000 CIFAR images (0.1 %); on bnnkit's tiny runs (50-500 images) a tenth of the set keeps
the k-th neighbour a local density estimate that averages over more than one image, capped at
the paper's 50. An integer larger than N is refused.

The fit is the training features themselves (float32, ``[N, D]``, in the run's
``scores/knn.safetensors``); loading refits the exact neighbour index on them, which is
deterministic.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnnkit import Field, PluginOptions, hookimpl
from bnnkit.errors import UsageError
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.base import Score, ScoreInputs
from bnnkit.scores.features import AutoInt


def auto_k(n: int) -> int:
    return max(1, min(50, n // 10))


class KNearest(Score):
    summary = "distance to the k-th nearest L2-normalised (standardised) training feature"
    source = "pytorch-ood KNN (Sun et al. 2022)"
    fit_on = "train"

    class Options(PluginOptions):
        k: AutoInt = Field("auto", description="neighbour rank ('auto': max(1, min(50, N // 10)))")
        normalize: bool = Field(True, description="L2-normalise the features first")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.train: Tensor | None = None
        self.detector: Any = None
        self.k = 0

    def _build(self, train: Tensor) -> None:
        from pytorch_ood.detector import KNN  # lazy: imports slowly

        n = int(train.shape[0])
        k = auto_k(n) if self.opts.k == "auto" else int(self.opts.k)
        if k > n:
            raise UsageError(f"score 'knn': k = {k} exceeds the {n} training images")
        detector = KNN(None, k=k, normalize=self.opts.normalize)
        detector.fit_features(train, torch.zeros(n, dtype=torch.long))
        self.train, self.detector, self.k = train, detector, k
        self.fitted = True

    def fit(self, inputs: ScoreInputs, labels: Tensor) -> None:
        self._build(inputs.features.detach().to("cpu", torch.float32).contiguous())

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        self.check_fitted()
        return self.as_output(
            self.detector.predict_features(inputs.features.detach().to("cpu", torch.float32))
        )

    def state_dict(self) -> dict[str, Tensor]:
        self.check_fitted()
        assert self.train is not None
        return {"train": self.train.clone()}

    def meta(self) -> dict[str, Any]:
        return {"n": 0 if self.train is None else int(self.train.shape[0]), "k": self.k}

    def load_state_dict(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        self._build(state["train"].to(torch.float32).contiguous())


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("knn", KNearest)
