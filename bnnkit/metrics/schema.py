"""Reading metrics.json by score name, in schema version 3 or 2 (stdlib only: ``bnnkit compare``
and the protocol tables read old runs' files without torch).

Version 3 keys the per-score blocks by score plugin name (``ood[g].scores[NAME]``,
``abstention.by_score[NAME]``); version 2 keyed them by the decomposition's names directly in
the entry (``ood[g].total``, ``ood[g].epistemic``, ``ood[g].max_prob``), where ``total`` is the
score ``entropy`` and ``epistemic`` the score ``mutual_info``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_ABSTAIN_SCORE",
    "SCORE_ALIASES",
    "UNFITTED_ABSTAIN_SCORE",
    "abstention_score",
    "canonical_score",
    "ood_score",
]

#: the default abstention score (``--abstain-on``), pre-registered on ``benchmarks/unseen.py``
#: (chosen on data seed 0 alone, reported on other seeds in benchmarks/README.md): the relative
#: Mahalanobis distance of the pooled features, fitted on the run's training images
DEFAULT_ABSTAIN_SCORE = "rel_mahalanobis"
#: the score used where no fitted score can be: ``--max-uncertainty`` without a calibrated
#: threshold, and ``--tiles`` (a tiled image has no one feature vector): the total entropy
UNFITTED_ABSTAIN_SCORE = "entropy"

#: the names metrics.json version 2 (and old flags) gave two scores
SCORE_ALIASES = {"total": "entropy", "epistemic": "mutual_info"}
#: metrics.json version 2's key of a score (its per-score blocks used the decomposition's names)
_V2_KEYS = {v: k for k, v in SCORE_ALIASES.items()}


def canonical_score(name: str) -> str:
    """A score's plugin name: ``total`` -> ``entropy``, ``epistemic`` -> ``mutual_info``."""
    return SCORE_ALIASES.get(name, name)


def ood_score(entry: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """``{auroc, aupr, fpr95}`` of score ``name`` in an ``ood[generator]`` or ``ood_combined``
    entry of metrics.json version 3 (``entry.scores[name]``) or 2 (``entry[total|epistemic|
    max_prob]``); ``{}`` when the entry or the score is absent."""
    if not entry:
        return {}
    name = canonical_score(name)
    if "scores" in entry:
        return dict(entry["scores"].get(name) or {})
    return dict(entry.get(_V2_KEYS.get(name, name)) or {})


def abstention_score(abstention: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The ``abstention.by_score`` entry of score ``name`` (default: the abstention's own
    score), in metrics.json version 2 or 3; ``{}`` when absent."""
    by_score = abstention.get("by_score") or {}
    name = abstention.get("score") if name is None else name
    if not name:
        return {}
    for key in (name, canonical_score(name), _V2_KEYS.get(canonical_score(name))):
        if key in by_score:
            return dict(by_score[key])
    return {}
