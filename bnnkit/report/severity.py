"""The severity plot: accuracy and what abstention catches, against a sweep's severity level.

Drawn from ``metrics.json`` when a degradation with a ``severity`` ran (``--degrade jpeg@1-5``,
``--degrade laundering``): one line per kind, severity 0 being the clean images (shared by every
line). Three panels, each of the abstention score ``bnnkit predict`` uses, at the threshold
calibrated on clean images (never recalibrated per degradation):

- accuracy: GenImage's average of per-generator accuracies (``average_accuracy.all``);
- errors caught: the share of the unseen generators' wrong verdicts the threshold abstains on
  (``unseen_combined.errors_caught_rate``; the seen images' without unseen generators);
- seen coverage: the share of seen-generator images it keeps, with the target as a dotted line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bnnkit.metrics.schema import abstention_score
from bnnkit.report.plots import WIDTH, _colours, _num, _style

__all__ = ["severity_figure", "sweeps"]


def sweeps(metrics: Mapping[str, Any]) -> dict[str, list[tuple[int, Mapping[str, Any]]]]:
    """Kind -> [(severity, its degradation entry)], sorted by severity, for every degradation of
    ``metrics["degradations"]`` with a severity; ``{}`` when none ran."""
    out: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for entry in (metrics.get("degradations") or {}).values():
        if entry.get("severity") is not None:
            out.setdefault(str(entry["kind"]), []).append((int(entry["severity"]), entry))
    return {kind: sorted(points, key=lambda p: p[0]) for kind, points in out.items()}


def _caught(condition: Mapping[str, Any], unseen: bool) -> float:
    chosen = abstention_score(condition.get("abstention") or {})
    stats = chosen.get("unseen_combined") if unseen else chosen.get("seen")
    return _num((stats or {}).get("errors_caught_rate"))


def _coverage(condition: Mapping[str, Any]) -> float:
    chosen = abstention_score(condition.get("abstention") or {})
    return _num((chosen.get("seen") or {}).get("coverage"))


def severity_figure(metrics: Mapping[str, Any]) -> Figure:
    """Accuracy, errors caught by abstention and seen coverage against severity (0 = clean),
    one line per swept kind."""
    lines = sweeps(metrics)
    unseen = bool(metrics.get("ood_generators"))
    score = (metrics.get("abstention") or {}).get("score", "?")
    panels = [
        ("accuracy (average over generators)", "Accuracy",
         lambda c: _num((c.get("average_accuracy") or {}).get("all"))),
        ("unseen-generator errors caught" if unseen else "seen-generator errors caught",
         "Errors caught by abstention", lambda c: _caught(c, unseen)),
        ("seen images kept (coverage)", "Seen coverage", _coverage),
    ]  # fmt: skip
    with _style():
        fig = Figure(figsize=(WIDTH, 2.8), layout="constrained")
        axes = fig.subplots(1, len(panels))
        for ax, (ylabel, title, value) in zip(axes, panels, strict=True):
            for (kind, points), colour in zip(lines.items(), _colours(len(lines)), strict=True):
                x = [0, *(s for s, _ in points)]
                y = [value(metrics), *(value(entry) for _, entry in points)]
                ax.plot(x, np.asarray(y, float), marker="o", markersize=3, label=kind,
                        color=colour)  # fmt: skip
            top = max([5, *(s for points in lines.values() for s, _ in points)])
            ax.set_xticks(range(top + 1), ["clean", *map(str, range(1, top + 1))])
            ax.set(xlabel="severity", ylabel=ylabel, title=title, ylim=(-0.02, 1.02))
        target = _num(metrics.get("coverage_target"))
        if np.isfinite(target):
            axes[2].axhline(target, color="#898989", linestyle=":", linewidth=1, label="target")
        axes[0].legend()
        fig.suptitle(f"Severity sweeps (abstention score: {score}, clean-calibrated threshold)")
    return fig
