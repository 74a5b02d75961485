"""Which OOD scores an evaluation or a prediction computes (score plugins, :mod:`bnnkit.scores`).

- :func:`evaluation_scores`: ``bnnkit evaluate``'s ``--score`` names (default
  :data:`~bnnkit.scores.store.DEFAULT_SCORES`) plus the ``--abstain-on`` score, each built with
  every score it reads (``Score.needs``); with ``--tiles`` only the scores of the posterior
  predictive (a tiled image has no one feature vector).
- :func:`streaming`: the ones computed batch by batch while streaming (all but ``fit_on =
  "seen"`` scores, computed afterwards from the values of the scores they read).
- :func:`load_scores`: ``bnnkit predict``'s abstention score with the fits ``threshold.json``
  names, loaded from the run (a missing fit is a clear error), each score built with the
  options ``threshold.json`` records for it (:meth:`ScoreSet.needed_options`).
- :func:`score_entries`: metrics.json's ``scores`` block.

Fitting is :mod:`bnnkit.engine.posthoc.score_fit`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnkit.engine.features.loop import Scorer
from bnnkit.errors import UsageError
from bnnkit.metrics.records import DECOMPOSITION
from bnnkit.options import OptionsError

__all__ = [
    "ScoreSet",
    "build_scores",
    "evaluation_scores",
    "load_scores",
    "score_entries",
    "streaming",
    "threshold_fits",
]


def build_scores(
    names: Sequence[str], options: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """``(requested, scores)``: the requested names resolved (aliases ``total`` -> ``entropy``,
    ``epistemic`` -> ``mutual_info``; an unknown name is a ``PluginError``) and a score object
    for each of them and of every score they read, in dependency order. ``options``: per score
    name, its options (default: its declaration's defaults)."""
    from bnnkit.scores.store import build_score, resolve_names

    options = {resolve_names([k])[0]: v for k, v in (options or {}).items()}
    requested = list(dict.fromkeys(resolve_names(list(names))))
    scores: dict[str, Any] = {}

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in scores:
            return
        if name in chain:
            raise UsageError(f"score '{name}' reads itself through {' -> '.join(chain)}")
        try:
            score = build_score(name, options.get(name))
        except OptionsError as exc:  # named by the key given: score.NAME.KEY
            raise exc.under("score", f"score.{name}") from None
        for need in resolve_names(list(score.needs)):
            add(need, (*chain, name))
        scores[name] = score

    for name in requested:
        add(name, ())
    return requested, scores


def streaming(scores: dict[str, Any]) -> Scorer:
    """The scores computed while streaming images (all but those fitted on seen images,
    which are computed afterwards from the recorded values of the scores they read)."""
    return {n: s for n, s in scores.items() if s.fit_on != "seen"}


@dataclass
class ScoreSet:
    """The scores of one evaluation: ``requested`` (reported, in order; the abstention score
    included), ``abstain_on`` (canonical), ``scores`` (every score object, dependencies
    first), ``tiled`` (only posterior-predictive scores, from the record)."""

    requested: list[str]
    abstain_on: str
    scores: dict[str, Any]
    tiled: bool = False

    @property
    def scorer(self) -> Scorer:
        """What the streaming loop computes (nothing when tiled: the record gives them)."""
        return {} if self.tiled else streaming(self.scores)

    def options(self, name: str) -> dict[str, Any]:
        return dict(self.scores[name].config) if name in self.scores else {}

    def needed(self, name: str | None = None) -> list[str]:
        """``name`` (default: the abstention score) and every score it reads, recursively, in
        dependency order."""
        from bnnkit.scores.store import resolve_names

        needed: set[str] = set()
        todo = [name or self.abstain_on]
        while todo:
            n = todo.pop()
            if n not in needed:
                needed.add(n)
                todo += resolve_names(list(self.scores[n].needs))
        return [n for n in self.scores if n in needed]

    def needed_options(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """``threshold.json``'s ``score_options``: the options of ``name`` (default: the
        abstention score) and of every score it reads, so that ``bnnkit predict`` rebuilds
        each of them as evaluated (:func:`load_scores`)."""
        return {n: self.options(n) for n in self.needed(name)}

    def key(self) -> dict[str, Any]:
        """What the scores' values depend on besides their fits (for the partial results)."""
        return {n: [type(s).__name__, s.config] for n, s in self.scores.items()}


def evaluation_scores(
    names: Sequence[str] | None,
    abstain_on: str,
    options: dict[str, dict[str, Any]] | None = None,
    *,
    tiled: bool = False,
) -> ScoreSet:
    """The scores ``bnnkit evaluate`` reports: ``names`` (default ``DEFAULT_SCORES``) and the
    ``abstain_on`` score. Tiled, a feature-space score is refused when asked for by name and
    left out of the defaults (each tile has its own features; the image has none)."""
    from bnnkit.scores.store import DEFAULT_SCORES, resolve_names

    (abstain,) = resolve_names([abstain_on])
    wanted = list(names) if names else list(DEFAULT_SCORES)
    requested = list(dict.fromkeys([*resolve_names(wanted), abstain]))
    if tiled:
        other = [n for n in requested if n not in DECOMPOSITION]
        explicit = set(resolve_names(list(names or []))) | {abstain}
        refused = [n for n in other if n in explicit]
        if refused:
            raise UsageError(
                f"--tiles judges an image from several crops, each with its own features: "
                f"score{'s' * (len(refused) > 1)} {', '.join(refused)} "
                f"need{'s' * (len(refused) == 1)} one feature vector (or logits) per image",
                hint=f"with --tiles use {', '.join(DECOMPOSITION)}; or evaluate without --tiles",
            )
        requested = [n for n in requested if n in DECOMPOSITION]
    requested, scores = build_scores(requested, options)
    return ScoreSet(requested, abstain, scores, tiled)


def threshold_fits(
    score_set: ScoreSet, train: str | None, seen: str | None
) -> dict[str, Any] | None:
    """``threshold.json``'s ``score_fit``: the fingerprints of the fits the abstention score
    (and the scores it reads) need, by ``fit_on``; None when it needs none."""
    kinds = {score_set.scores[n].fit_on for n in score_set.needed()} - {None}
    if not kinds or score_set.tiled:
        return None
    out = {"fit_on": score_set.scores[score_set.abstain_on].fit_on}
    out.update({kind: {"train": train, "seen": seen}[kind] for kind in sorted(kinds)})
    return out


def _fit_size(run_dir: Path, name: str) -> int | None:
    from bnnkit.scores.store import fit_paths

    try:
        return json.loads(fit_paths(run_dir, name)[1].read_text(encoding="utf-8")).get("n")
    except (OSError, ValueError):
        return None


def score_entries(score_set: ScoreSet, run_dir: Path) -> dict[str, Any]:
    """metrics.json's ``scores`` block: per requested score, what it is (``fit_on``,
    ``options``, ``source``, ``needs``) and, for a fitted one, ``fit_n`` (images fitted on)."""
    out: dict[str, Any] = {}
    for n in score_set.requested:
        s = score_set.scores[n]
        out[n] = {
            "fit_on": s.fit_on,
            "options": s.config,
            "source": getattr(s, "source", "") or "",
            "needs": list(s.needs),
        }
        if s.fit_on is not None:
            out[n]["fit_n"] = _fit_size(run_dir, n)
    return out


def load_scores(
    run_dir: Path,
    name: str,
    options: dict[str, Any] | None,
    fits: dict[str, Any] | None,
    score_options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The score ``name`` (with ``options``) and every score it reads (each with its options
    in ``score_options``, ``threshold.json``'s, else its defaults: files from before it was
    recorded), ready to compute: fitted ones loaded from the run with the fingerprints of
    ``fits`` (``threshold.json``'s ``score_fit``). A fit that is missing or stale is a
    :class:`UsageError` that says how to make it."""
    from bnnkit.scores.store import load_fit, stale_reason

    _, scores = build_scores([name], {**(score_options or {}), name: options or {}})
    fits = fits or {}
    for n, score in list(scores.items()):
        if score.fit_on is None:
            continue
        fingerprint = fits.get(score.fit_on)
        got = load_fit(run_dir, n, score.config, fingerprint) if fingerprint else None
        if got is None:
            why = stale_reason(run_dir, n, score.config, fingerprint) if fingerprint else None
            raise UsageError(
                f"the abstention score '{name}' needs the fit of score '{n}' on the run's "
                f"{'training' if score.fit_on == 'train' else 'seen validation'} images: "
                f"{why or 'threshold.json names no fit of it'}",
                hint=f"run `bnnkit evaluate {run_dir} --abstain-on {name}` (it fits the "
                "score and saves the fit in the run), or predict with --no-abstain",
            )
        scores[n] = got
    return scores
