"""Score: ``fused``, several scores rank-normalised on seen validation images and combined.

In the spirit of the combined-uncertainty rejection of Yumlembam et al. (2025): each component
score (option ``scores``) is mapped through its empirical CDF on **seen-generator images of
the run's calibration split** (``evaluate`` fits it on one half of them and sets its threshold
on the other; a run without a calibration split uses its seen validation images) (mid-rank:
``(#{ref < x} + #{ref <= x}) / 2n``, so ties get the average of their ranks), continued
linearly beyond the reference's range (:func:`tailed_rank`: above the largest seen value the
normalised value exceeds 1 by the distance in units of the upper half-range), and the
normalised values are combined (option ``combine``). The unseen generators are never used to
fit anything.

A component that is constant ``c`` on the seen images (e.g. ``mutual_info`` under MAP) maps an
image to 0.5 where its value equals ``c``, to 1 where it is above ``c`` and to 0 below. It is
therefore not neutral: under ``combine = "max"`` it floors the fused score at 0.5 (every image
whose other components are all below their seen medians ties at 0.5, which flattens the lower
half of the ranking; abstention thresholds above 0.5 are unaffected) and sets it to 1 for any
image on which it departs upwards from ``c``; under ``"mean"`` it adds ``0.5 w / sum(w)``
(a shift that keeps the others' ranking) where it equals ``c``, and ``w / sum(w)`` above it.

``combine = "max"`` (default) takes the largest normalised value: an image is as unusual as its
most unusual component says, so the abstention threshold fires when *any* measure is in its
seen tail (a union of detectors). ``"mean"`` averages them with weights; a component that is
uninformative for a generator then dilutes the ones that flag it. On the synthetic
leave-one-generator-out benchmark (``benchmarks/unseen.py``, data seed 0) the mean of the
components caught 1-33 % of the unseen errors at 10 % seen abstention, the max 39-53 %; that
benchmark is also where this default was chosen, so check it on your own data.

The default components cover the three families of scores: ``entropy`` (predictive
uncertainty, which flags the *errors* an abstention should catch), ``mutual_info`` (the
posterior's epistemic disagreement; constant for MAP, see above), and feature-space
novelty: ``mahalanobis`` and ``rel_mahalanobis`` (a class-conditional Gaussian, and the same
relative to a class-agnostic one, which discounts directions in which every image varies) and
``knn`` (non-parametric).

``weights = "equal"`` (default) weighs them alike; ``"errors"`` weighs each by how well it ranks
the seen validation images' misclassifications (AUROC - 0.5, floored at 0; equal weights when
no component beats chance or there are no errors), which needs the seen images' ``probs`` in
the fit's inputs. With ``combine = "max"`` a weight only selects: components of weight 0 are
left out of the maximum.

Contract of a ``fit_on = "seen"`` score (see :mod:`bnnkit.scores.base`): it reads only
``inputs.scores``, both in ``fit`` (except ``"errors"``, which also reads ``inputs.probs``) and
when scoring, so features, logits and probs may be empty tensors. The fit stores each
component's sorted reference values and the weights as tensors.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import field_validator
from torch import Tensor

from bnnkit import Field, PluginOptions, hookimpl
from bnnkit.errors import UsageError
from bnnkit.hookspecs import RegisterPart
from bnnkit.scores.base import Score, ScoreInputs


def mid_rank_ecdf(reference: Tensor, values: Tensor) -> Tensor:
    """``(#{ref < v} + #{ref <= v}) / (2 n)`` for sorted ``reference`` (float64)."""
    below = torch.searchsorted(reference, values, side="left")
    upto = torch.searchsorted(reference, values, side="right")
    return (below + upto).double() / (2 * reference.numel())


def tailed_rank(reference: Tensor, values: Tensor) -> Tensor:
    """:func:`mid_rank_ecdf` inside the reference's range, continued linearly beyond it:
    ``1 + (v - max) / (max - median)`` above the largest reference value and
    ``(v - min) / (median - min)`` (negative) below the smallest (a zero half-range counts
    as 1). Without the tails every image beyond the seen range would tie at 1, so a threshold
    set on new seen images (not the reference) would often be 1 and abstain on nothing, and the
    images furthest from the seen ones could not be ranked among themselves."""
    ranks = mid_rank_ecdf(reference, values)
    lo, hi = reference[0], reference[-1]
    median = reference[(reference.numel() - 1) // 2]
    up = float(hi - median) or 1.0
    down = float(median - lo) or 1.0
    ranks = torch.where(values > hi, 1.0 + (values - hi) / up, ranks)
    return torch.where(values < lo, (values - lo) / down, ranks)


class Fused(Score):
    summary = "max (or mean) of component scores rank-normalised on seen calibration images"
    source = "bnnkit (Yumlembam et al. 2025)"
    fit_on = "seen"

    class Options(PluginOptions):
        scores: list[str] = Field(
            ["entropy", "mutual_info", "mahalanobis", "rel_mahalanobis", "knn"],
            description="component scores",
        )
        combine: Literal["max", "mean"] = Field(
            "max", description="'max': the most unusual component; 'mean': weighted average"
        )
        weights: Literal["equal", "errors"] = Field(
            "equal", description="'errors': weigh by AUROC of the seen validation errors"
        )

        @field_validator("scores")
        @classmethod
        def _components(cls, value: list[str]) -> list[str]:
            from bnnkit.scores.store import ALIASES

            names = [ALIASES.get(v, v) for v in value]
            assert names, "name at least one component score"
            assert "fused" not in names, "fused cannot be its own component"
            assert len(set(names)) == len(names), f"components repeat: {value}"
            return names

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.needs = tuple(self.opts.scores)  # type: ignore[misc]  # per instance: an option
        self.reference: dict[str, Tensor] = {}
        self.weights = torch.ones(len(self.needs), dtype=torch.float64)

    def _components(self, inputs: ScoreInputs) -> list[Tensor]:
        missing = [n for n in self.needs if n not in inputs.scores]
        if missing:
            raise UsageError(
                f"score 'fused' needs the scores {missing} in ScoreInputs.scores",
                hint="bnnkit.scores.store.compute_scores computes the components first",
            )
        return [inputs.scores[n].detach().to("cpu", torch.float64).reshape(-1) for n in self.needs]

    def fit(self, inputs: ScoreInputs, labels: Tensor) -> None:
        values = self._components(inputs)
        if not values[0].numel():
            raise UsageError("score 'fused' needs at least one seen validation image to fit on")
        self.reference = {
            n: v.sort().values.contiguous() for n, v in zip(self.needs, values, strict=True)
        }
        self.weights = torch.ones(len(self.needs), dtype=torch.float64)
        if self.opts.weights == "errors":
            self.weights = self._error_weights(values, inputs, labels)
        self.fitted = True

    def _error_weights(self, values: list[Tensor], inputs: ScoreInputs, labels: Tensor) -> Tensor:
        from bnnkit.metrics.ood import ood_auroc

        if inputs.probs.numel() == 0:
            raise UsageError("score 'fused' with weights = 'errors' needs the seen images' probs")
        predicted = inputs.probs.detach().cpu().double().mean(0).argmax(-1)
        errors = predicted != labels.detach().cpu().long().reshape(-1)
        gains = torch.tensor([ood_auroc(v, errors) - 0.5 for v in values], dtype=torch.float64)
        gains = torch.nan_to_num(gains, nan=0.0).clamp_min(0.0)
        return gains if float(gains.sum()) > 0 else torch.ones_like(gains)

    def __call__(self, inputs: ScoreInputs) -> Tensor:
        self.check_fitted()
        values = self._components(inputs)
        ranks = torch.stack(
            [tailed_rank(self.reference[n], v) for n, v in zip(self.needs, values, strict=True)]
        )
        if self.opts.combine == "max":
            return self.as_output(ranks[self.weights > 0].max(0).values)
        return self.as_output((self.weights[:, None] * ranks).sum(0) / self.weights.sum())

    def state_dict(self) -> dict[str, Tensor]:
        self.check_fitted()
        state = {f"reference.{n}": v.clone() for n, v in self.reference.items()}
        return {**state, "weights": self.weights.clone()}

    def meta(self) -> dict[str, Any]:
        n = len(next(iter(self.reference.values()))) if self.reference else 0
        weights = dict(zip(self.needs, self.weights.tolist(), strict=True))
        return {"n": n, "combine": self.opts.combine, "weights": weights}

    def load_state_dict(self, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
        missing = [n for n in self.needs if f"reference.{n}" not in state]
        if missing:
            raise UsageError(f"score 'fused': the saved fit has no reference for {missing}")
        self.reference = {n: state[f"reference.{n}"].double().contiguous() for n in self.needs}
        self.weights = state["weights"].double()
        self.fitted = True


@hookimpl
def register_scores(register: RegisterPart) -> None:
    register("fused", Fused)
