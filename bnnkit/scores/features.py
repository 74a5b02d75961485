"""Shared pieces of the feature-space scores (Mahalanobis, relative Mahalanobis, GMM).

bnnkit runs are often tiny: 50-500 training images with pooled features of D = 8..2048, so the
class covariances the Gaussian detectors of pytorch-ood estimate are singular or close to it
(pytorch-ood adds a ``1e-6`` ridge to the un-normalised scatter matrix; in float32 and with
D > N the inverse is then dominated by rounding in the directions the data do not span).
These scores therefore do not change the detectors; they change their input:

- **projection** (option ``dims``): the features are centred on the training mean, projected on
  the top principal components of the *training* features and whitened (each component divided
  by its standard deviation). ``dims = "auto"`` keeps the fewest components that explain
  99.9 % of the training variance, at most ``N // 2`` (``N`` = training images; for the GMM, the
  smallest class's count, since it estimates one covariance per class) and never a numerically
  zero-variance one; an integer keeps that many (at most the numerical rank); ``"all"`` feeds
  the raw features to pytorch-ood unchanged (its own behaviour). The projection is an affine
  map computed with ``torch.linalg.svd`` in float64, with a fixed sign per component, and is
  stored with the fit, so a new process applies exactly the same map.
- Mahalanobis distances are invariant under invertible affine maps, so on full-rank data the
  projection changes nothing but conditioning; what it drops is the variation outside the
  training span, which the ViM score measures instead (its residual).

The fitted detector's tensors are stored by attribute name (safetensors, never a pickle) and set
back on a freshly constructed detector when loading; a detector that lacks one of these
attributes (a different pytorch-ood version) is refused with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor

from bnnkit.errors import UsageError
from bnnkit.options import Field, PluginOptions
from bnnkit.scores.base import Score, ScoreInputs, StaleFit

__all__ = ["AutoInt", "DetectorScore", "ProjectedOptions", "Whitening", "fit_whitening"]

Dims = Literal["auto", "all"] | int
#: an option that is ``"auto"`` or a positive integer (kNN's k, ViM's d)
AutoInt = Literal["auto"] | Annotated[int, Field(ge=1)]


@dataclass(frozen=True)
class Whitening:
    """``(x - mean) @ basis``: centre, project on ``p`` principal components and whiten."""

    mean: Tensor  # [D] float64
    basis: Tensor  # [D, p] float64

    def __call__(self, features: Tensor) -> Tensor:
        return (features.detach().to("cpu", torch.float64) - self.mean) @ self.basis

    @property
    def dims(self) -> int:
        return int(self.basis.shape[1])


def fit_whitening(
    features: Tensor, dims: Dims, max_dims: int, variance: float = 0.999
) -> Whitening | None:
    """The projection of the module docstring (``None`` for ``dims = "all"``)."""
    if dims == "all":
        return None
    x = features.detach().to("cpu", torch.float64)
    n, d = x.shape
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s.square() / max(n - 1, 1)  # variance along each principal direction, descending
    if n < 2 or float(var[0]) <= 0:
        raise UsageError(
            "the training features are all equal: a feature-space score cannot be fitted",
            hint="check the backbone (a random-init tiny backbone may give constant features)",
        )
    tol = float(var[0]) * max(n, d) * torch.finfo(torch.float64).eps
    rank = int((var > tol).sum())
    if dims == "auto":
        explained = var.cumsum(0) / var.sum()
        needed = int((explained < variance).sum()) + 1
        p = min(needed, max(1, max_dims))
    else:
        p = int(dims)
    p = max(1, min(p, rank, d))
    v = vh[:p].T  # [D, p], unit columns
    pivot = v.abs().argmax(0)
    sign = torch.sign(v[pivot, torch.arange(p)])
    v = v * torch.where(sign == 0, torch.ones_like(sign), sign)  # deterministic orientation
    return Whitening(mean.contiguous(), (v / var[:p].sqrt()).contiguous())


class ProjectedOptions(PluginOptions):
    dims: Literal["auto", "all"] | Annotated[int, Field(ge=1)] = Field(
        "auto",
        description="principal components of the training features the detector sees "
        "('auto': 99.9 % of the variance, at most N // 2; 'all': raw features)",
    )


class DetectorScore(Score):
    """A ``fit_on = "train"`` score wrapping a pytorch-ood features detector behind the
    projection. Subclasses set ``_attrs`` (the detector's fitted tensors) and ``_detector()``."""

    Options: ClassVar[type[PluginOptions]] = ProjectedOptions
    fit_on = "train"
    _attrs: ClassVar[tuple[str, ...]] = ()
    _dtype: ClassVar[torch.dtype] = torch.float32
    #: the convention of the values (recorded in the fit's meta as ``values``); a saved fit
    #: without it (or with another) is stale: :meth:`_values` changed what the scores mean
    _convention: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.projection: Whitening | None = None
        self.detector: Any = None
        self.facts: dict[str, Any] = {}

    # -- what a subclass provides ------------------------------------------------------------
    def _detector(self) -> Any:
        raise NotImplementedError

    def _max_dims(self, labels: Tensor) -> int:
        return int(labels.numel()) // 2

    def _fit_detector(self, z: Tensor, labels: Tensor) -> Any:
        return self._detector().fit_features(z, labels)

    def _values(self, detector_scores: Tensor) -> Tensor:
        """The score from the detector's output (a subclass rescales or shifts it to the
        paper's definition)."""
        return detector_scores

    # -- fitting and scoring -----------------------------------------------------------------
    def _project(self, features: Tensor) -> Tensor:
        if self.projection is None:
            return features.detach().to("cpu", self._dtype)
        return self.projection(features).to(self._dtype)

    def fit(self, inputs: ScoreInputs, labels: Tensor) -> None:
        labels = labels.detach().to("cpu", torch.long).reshape(-1)
        if set(labels.tolist()) != {0, 1}:
            raise UsageError(
                f"score '{type(self).__name__}' is fitted on real and fake training images; "
                f"the training labels hold only {sorted(set(labels.tolist()))}"
            )
        self.projection = fit_whitening(inputs.features, self.opts.dims, self._max_dims(labels))
        self.detector = self._fit_detector(self._project(inputs.features), labels)
        self.facts = {
            "n": int(labels.numel()),
            "features": int(inputs.features.shape[1]),
            "dims": "all" if self.projection is None else self.projection.dims,
            **({"values": self._convention} if self._convention else {}),
        }
        self.fitted = True

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        self.check_fitted()
        z = self._project(inputs.features)
        return self.as_output(self._values(self.detector.predict_features(z).double()))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        self.check_fitted()
        state = {f"detector.{a}": getattr(self.detector, a) for a in self._attrs}
        if self.projection is not None:
            state |= {
                "projection.mean": self.projection.mean,
                "projection.basis": self.projection.basis,
            }
        return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}

    def meta(self) -> dict[str, Any]:
        return dict(self.facts)

    def load_state_dict(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        if self._convention and meta.get("values") != self._convention:
            raise StaleFit(
                f"it was saved by an older bnnkit, whose '{type(self).__name__}' values were "
                f"on another scale (now: {self._convention})",
                hint="bnnkit evaluate refits it (and recalibrates the threshold on it)",
            )
        detector = self._detector()
        missing = [
            a for a in self._attrs if not hasattr(detector, a) or f"detector.{a}" not in state
        ]
        if missing:
            raise UsageError(
                f"score '{type(self).__name__}': the saved fit does not match this pytorch-ood "
                f"version (missing {missing})",
                hint="bnnkit evaluate refits it when its fit is deleted from the run's scores/",
            )
        for a in self._attrs:
            setattr(detector, a, state[f"detector.{a}"])
        self.detector = detector
        self.projection = (
            Whitening(state["projection.mean"], state["projection.basis"])
            if "projection.basis" in state
            else None
        )
        self.facts = dict(meta)
        self.fitted = True
