"""The statistics and tables of ``benchmarks/unseen.py`` (numpy only): the caught rate of one
pre-registered method x score pooled over (data seed, fold) strata, its bootstrap interval, and
the markdown of the headline and the exploratory grid.

What is resampled (:func:`bootstrap_caught`): within each stratum, independently, the held-out
generator's images with replacement (score and error indicator together, so the number of errors
varies as it would on a new draw of images) and, where the threshold's fit images are known
(``Stratum.fit_scores``), those images too, the threshold being refitted on each resample as
bnnkit fits it (``threshold_for_coverage``); otherwise the threshold is held at its fitted value.
Strata keep their image counts (a stratified bootstrap); folds share their seen images, which
the stratification treats as independent (a slight understatement of the width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Stratum",
    "bootstrap_caught",
    "caught_rate",
    "explore_md",
    "guarantee_md",
    "headline_md",
    "threshold_np",
]

#: seen-image coverage the threshold is calibrated for (``eval.coverage``)
COVERAGE = 0.9
#: bootstrap resamples and the generator's seed (numpy)
RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass
class Stratum:
    """One (data seed, fold): the held-out generator's images and the threshold's fit set."""

    unseen_scores: np.ndarray  # the score per held-out image
    unseen_errors: np.ndarray  # bool: the held-out image is misclassified
    threshold: float  # abstain when score > threshold
    fit_scores: np.ndarray | None = None  # the images the threshold was fitted on (or None)


def threshold_np(u: np.ndarray, coverage: float = COVERAGE) -> np.ndarray:
    """bnnkit's ``threshold_for_coverage`` along the last axis: the k-th smallest value,
    ``k = ceil(coverage * n)`` (an observed value; ``-inf`` when k = 0)."""
    n = u.shape[-1]
    k = min(n, math.ceil(coverage * n - 1e-9))
    if k == 0:
        return np.full(u.shape[:-1], -np.inf)
    return np.partition(u, k - 1, axis=-1)[..., k - 1]


def caught_rate(strata: list[Stratum]) -> float:
    """Pooled share of the held-out errors abstained on (``nan`` without errors)."""
    errors = sum(int(s.unseen_errors.sum()) for s in strata)
    caught = sum(int((s.unseen_errors & (s.unseen_scores > s.threshold)).sum()) for s in strata)
    return caught / errors if errors else float("nan")


def bootstrap_caught(
    strata: list[Stratum],
    resamples: int = RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    coverage: float = COVERAGE,
) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of :func:`caught_rate`, over images, stratified by
    stratum (each resample keeps every stratum's image counts). Within a stratum it resamples
    the held-out images with replacement (error indicator and score together, so the number of
    errors varies too) and, where ``fit_scores`` is given, the images the threshold was fitted
    on, refitting the threshold on each resample; otherwise the threshold is held fixed.
    Resamples without any error are dropped; ``(nan, nan)`` when none has one."""
    rng = np.random.default_rng(seed)
    caught = np.zeros(resamples)
    errors = np.zeros(resamples)
    for s in strata:
        if s.fit_scores is not None and s.fit_scores.size:
            draw = rng.integers(0, s.fit_scores.size, (resamples, s.fit_scores.size))
            t = threshold_np(s.fit_scores[draw], coverage)
        else:
            t = np.full(resamples, s.threshold)
        n = s.unseen_scores.size
        if n == 0:
            continue
        draw = rng.integers(0, n, (resamples, n))
        err = s.unseen_errors[draw]
        caught += (err & (s.unseen_scores[draw] > t[:, None])).sum(axis=1)
        errors += err.sum(axis=1)
    ok = errors > 0
    if not ok.any():
        return float("nan"), float("nan")
    low, high = np.percentile(caught[ok] / errors[ok], [2.5, 97.5])
    return float(low), float(high)


def pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f} %"


def headline_md(
    pairs: list[dict[str, Any]], gens: list[str], choosing_seed: int, headline: bool = True
) -> str:
    """The pre-registered table; ``headline``: its first row is the headline (not with
    ``--only``, which re-measures some methods' pairs)."""
    seeds = ", ".join(map(str, pairs[0]["data_seeds"]))
    first = "first row: the headline" if headline else "the headline pair not re-run here"
    lines = [
        f"**Pre-registered** (chosen on data seed {choosing_seed} only; reported on data seeds "
        f"{seeds}): unseen-generator errors caught at {pct(1 - COVERAGE)} target seen abstention, "
        f"leave-one-out over {len(gens)} synthetic generators, pooled over folds and seeds; 95 % "
        f"bootstrap interval over images ({first})."
        + "".join(
            f" {p['method']} x {p['score']}: threshold held fixed in {b['folds'] - r} of "
            f"{b['folds']} folds (fit images not in predictions.csv)."
            for p in pairs
            for b in [p["bootstrap"]]
            for r in [b["threshold_refitted_folds"]]
            if r < b["folds"]
        ),
        "",
        "| method | score | caught | 95 % CI | errors caught | unseen coverage | "
        "seen abstention | OOD AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        a = "n/a" if p["auroc"] is None else f"{p['auroc']:.2f}"
        lines.append(
            f"| {p['method']} | {p['score']} | {pct(p['caught'])} | {pct(p['ci95'][0])} - "
            f"{pct(p['ci95'][1])} | {p['errors_caught']} / {p['errors']} | "
            f"{pct(p['unseen_coverage'])} | {pct(p['seen_abstention'])} | {a} |"
        )
    return "\n".join(lines) + "\n"


def explore_md(results: dict[str, dict[str, Any]], scores: list[str], gens: list[str],
               seed: int) -> str:  # fmt: skip
    lines = [
        f"**Exploratory** (data seed {seed}; every method x score on the same folds, so its "
        "largest cell is a maximum, not an estimate). Cell: unseen-generator errors caught at "
        f"{pct(1 - COVERAGE)} seen abstention (OOD AUROC; share of unseen images kept), "
        f"leave-one-out over {len(gens)} synthetic generators ({', '.join(gens)}).",
        "",
        "| method | " + " | ".join(scores) + " |",
        "|" + "---|" * (len(scores) + 1),
    ]
    for method, per in results.items():
        cells = []
        for s in scores:
            r = per[s]
            a = "n/a" if r["auroc"] is None else f"{r['auroc']:.2f}"
            cells.append(f"{pct(r['caught'])} ({a}; kept {pct(r['unseen_coverage'])})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def guarantee_md(pairs: list[dict[str, Any]], guaranteed: list[dict[str, Any]],
                 level: float) -> str:  # fmt: skip
    """Per pre-registered pair: the threshold at ``eval.coverage`` (an empirical quantile of the
    calibration split) beside the split-conformal one of ``--guarantee level``."""
    lines = [
        f"**With and without the guarantee** (same folds and seeds): threshold at "
        f"{pct(COVERAGE)} coverage (empirical quantile) against `--guarantee {level:g}` (split "
        f"conformal on the calibration split: a new seen image kept with probability >= "
        f"{level:g}).",
        "",
        "| method | score | seen abstention | with guarantee | caught | with guarantee | "
        "unseen coverage | with guarantee |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p, g in zip(pairs, guaranteed, strict=True):
        lines.append(
            f"| {p['method']} | {p['score']} | {pct(p['seen_abstention'])} | "
            f"{pct(g['seen_abstention'])} | {pct(p['caught'])} | {pct(g['caught'])} "
            f"[{pct(g['ci95'][0])} - {pct(g['ci95'][1])}] | {pct(p['unseen_coverage'])} | "
            f"{pct(g['unseen_coverage'])} |"
        )
    return "\n".join(lines) + "\n"
