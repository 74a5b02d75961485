"""When and how the head phase standardises its pooled features (``model.standardise``).

The frozen-feature cache stores *raw* pooled features, so one extraction serves every run on a
backbone (the protocol's cross matrix); a run's statistics (mean and std of its own training
features) live in its detector (:class:`bnnkit.model.detector.FeatureStandardiser`, saved in
the checkpoint) and are applied wherever pooled features reach the head: the detector's
``features``/``pool_features`` (training, ``stream_predictive``, predict, tiles, explain) and
the cache's reader (:func:`bnnkit.engine.features.cache.cached_features`: evaluation's clean
condition, calibration).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bnnkit.engine.features.loop import Features
from bnnkit.engine.features.store import FeatureRows


def standardises(recipe: Any) -> bool:
    """Whether the head phase standardises its features: ``model.standardise``, where
    ``auto`` is on for a frozen backbone (a random or generic backbone's pooled features have
    arbitrary scales; a tiny random one's are ~0.01, too small for a Bayesian head to fit) and
    off after ``finetune-map``, whose head was trained on the raw features, and off for a
    released head (``[model.head] init``), trained on its own raw features."""
    setting = recipe.model.standardise
    if setting == "auto":
        head = recipe.model.head
        released = head is not None and head.options().get("init") is not None
        return recipe.train.backbone == "frozen" and not released
    return bool(setting)


def standardised(detector: Any, feats: Features) -> Features:
    """``feats`` (raw) through the detector's current standardisation; cached rows lazily."""
    rows = feats.features
    if isinstance(rows, FeatureRows):
        out: Any = rows.raw().with_transform(detector.standardiser.snapshot())
    else:
        out = detector.standardiser.snapshot()(rows)
    return dataclasses.replace(feats, features=out)
