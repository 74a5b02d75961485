"""The ``score`` plugin kind: one number per image, higher = more likely from an unseen generator.

A score sees what evaluation and prediction already have for a batch (:class:`ScoreInputs`: the
pooled features, the K posterior samples of the logits and their softmax) and maps it to ``[B]``
float64 values. Scores that need a fit (Mahalanobis, kNN, ...) are fitted once per run, on the
training features (``fit_on = "train"``) or, for score fusion, on the seen-generator validation
images (``fit_on = "seen"``); the fit is saved in the run as safetensors (:meth:`Score.state_dict`,
never a pickle) and loaded back by :meth:`Score.load_state_dict` in a new process.

Register a score with the ``register_scores`` hook::

    @hookimpl
    def register_scores(register):
        register("my_score", MyScore)            # a Score subclass; options: its Options

The contract every caller relies on (and :func:`bnnkit.testing.check_score` checks):

- ``__call__(inputs)`` returns a float64 tensor of shape ``[B]``, finite, on the CPU, and does not
  depend on the batch it is computed in (row ``i`` depends on row ``i`` of the inputs only);
- a fitted score raises :class:`ScoreNotFitted` when called before :meth:`fit` or loading;
- ``state_dict()`` holds only tensors (safetensors), ``meta()`` only JSON values; both together
  restore the fit in a fresh instance built with the same options;
- a ``fit_on = "seen"`` score (fusion) reads only ``inputs.scores`` (the values of its
  ``needs``), in ``fit`` and when scoring: callers pass the component values they already have,
  and ``features``, ``logits`` and ``probs`` may be empty tensors (``fused`` with
  ``weights = "errors"`` is the one exception: its fit also reads ``probs``).

Saving and loading fits in a run, building scores by name and computing several at once (needs
first) is :mod:`bnnkit.scores.store`; the built-ins are in ``plugins/score_*.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from bnnkit.errors import UsageError
from bnnkit.options import NoOptions, PluginOptions, options_model

__all__ = ["FitOn", "Score", "ScoreInputs", "ScoreNotFitted", "StaleFit"]

FitOn = Literal["train", "seen"] | None


class ScoreNotFitted(UsageError):
    """A fitted score was used before it was fitted (or its fit was not found in the run)."""


class StaleFit(UsageError):
    """Raised by :meth:`Score.load_state_dict` for a saved fit this version would score
    differently (e.g. one made before a score's values were corrected): the fit is then stale,
    like one made for other weights, and ``bnnkit evaluate`` refits it."""


@dataclass
class ScoreInputs:
    """What a score may read for a batch of ``B`` images (CPU or device tensors).

    - ``features[B, D]``: pooled features, what the head sees (float32);
    - ``logits[K, B, C]``: the K posterior samples of the head's logits (tempered by the run's
      temperature when one is set; for a method that only overrides ``sample``, ``log probs``);
    - ``probs[K, B, C]``: their softmax, the posterior predictive samples;
    - ``scores``: values of other scores for the same rows, for scores that combine others
      (``Score.needs``), keyed by score name.
    """

    features: Tensor
    logits: Tensor
    probs: Tensor
    scores: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def rows(self, index: slice | Tensor) -> ScoreInputs:
        """The inputs of a subset of images (``index`` over the batch axis)."""
        return ScoreInputs(
            self.features[index],
            self.logits[:, index],
            self.probs[:, index],
            {k: v[index] for k, v in self.scores.items()},
        )


class Score:
    """Base class of score plugins.

    Class attributes a subclass sets:

    - ``summary``: one line for ``bnnkit plugins``;
    - ``Options``: its option declaration (:mod:`bnnkit.options`), given on the command line as
      ``--score NAME`` with defaults (scores take their options from the declaration's defaults
      unless a caller passes them);
    - ``fit_on``: ``None`` (a function of the inputs), ``"train"`` (fitted on the training
      images' features and labels, :meth:`fit`) or ``"seen"`` (fitted on the seen-generator
      validation images, e.g. fusion; the unseen generators are never used to fit anything);
    - ``needs``: names of other scores whose values it reads from ``ScoreInputs.scores``
      (a class attribute, or set per instance in ``__init__`` when an option chooses them, as
      ``fused`` does; callers read ``score.needs`` from the instance);
    - ``source``: where the algorithm comes from (e.g. ``"pytorch-ood Mahalanobis"``), shown by
      ``bnnkit plugins --kind score``.
    """

    summary: ClassVar[str] = ""
    Options: ClassVar[type[PluginOptions]] = NoOptions
    fit_on: ClassVar[FitOn] = None
    needs: ClassVar[tuple[str, ...]] = ()
    source: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        self.opts = options_model(type(self)).parse(options, "score", owner=type(self).__name__)
        self.config = self.opts.model_dump()
        self.fitted = self.fit_on is None

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, inputs: ScoreInputs, labels: Tensor) -> None:
        """Fit on ``inputs`` (training images for ``fit_on = "train"``, seen validation images
        for ``"seen"``) with their ``labels`` (1 = fake, 0 = real). Subclasses that need a fit
        override this and set ``self.fitted = True``."""
        self.fitted = True

    def state_dict(self) -> dict[str, Tensor]:
        """The fit as tensors (saved with safetensors in the run)."""
        return {}

    def meta(self) -> dict[str, Any]:
        """The fit's JSON facts (e.g. the number of training images), saved beside the state."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` and :meth:`meta` returned; sets ``fitted``. Raise
        :class:`StaleFit` for a fit an older version saved that would now give other values."""
        self.fitted = True

    def check_fitted(self) -> None:
        if not self.fitted:
            raise ScoreNotFitted(
                f"score '{type(self).__name__}' is not fitted",
                hint="bnnkit evaluate fits it on the run's training images (it needs them)",
            )

    # -- scoring ------------------------------------------------------------------------------
    def __call__(self, inputs: ScoreInputs) -> Tensor:
        """``[B]`` float64 scores, higher = more likely unseen."""
        raise NotImplementedError

    @staticmethod
    def as_output(values: Tensor) -> Tensor:
        """The canonical output: float64 on the CPU, one value per image."""
        return values.detach().to("cpu", torch.float64).reshape(-1)
