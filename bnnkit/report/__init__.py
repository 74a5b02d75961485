"""Evaluation reports: paper-ready plots (:mod:`bnnkit.report.plots`) under ``RUN/plots/`` and a
self-contained ``RUN/report.md`` (:mod:`bnnkit.report.markdown`).

:func:`write_report` is what ``bnnkit evaluate`` calls; it needs the metrics dict
(``metrics.json``), the clean per-image results (a :class:`~bnnkit.metrics.records.Predictions`
record; its generator indices refer to ``seen_generators + ood_generators`` of the metrics) and
reads ``history.csv`` for the training curves.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bnnkit.metrics.records import Predictions
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import PLOT_FILES, RunLayout

__all__ = [
    "PLOT_FILES",  # re-exported from bnnkit.run.layout, its owner
    "make_figures",
    "read_history",
    "write_report",
]


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """Rows of ``RUN/history.csv`` (empty if the file is missing or unreadable)."""
    path = RunLayout(run_dir).history
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []


def make_figures(
    metrics: Mapping[str, Any], record: Predictions, history: list[dict[str, str]]
) -> dict[str, Any]:
    """Plot kind -> matplotlib Figure, for every kind in :data:`PLOT_FILES` that applies."""
    from bnnkit.report import plots
    from bnnkit.report.severity import severity_figure, sweeps

    names = [*metrics["seen_generators"], *metrics["ood_generators"]]
    n_seen = len(metrics["seen_generators"])
    d = record.numpy()
    p_fake, labels, gens, epistemic = d["p_fake"], d["labels"], d["generators"], d["epistemic"]
    seen = gens < n_seen
    groups = [("seen generators", p_fake[seen], labels[seen])]
    if (~seen).any():
        groups.append(("unseen generators", p_fake[~seen], labels[~seen]))
    unseen_fakes = {
        name: epistemic[(gens == j) & (labels == 1)]
        for j, name in enumerate(names[n_seen:], start=n_seen)
    }
    correct = (p_fake >= 0.5).astype(int) == labels
    scores = {"total uncertainty": d["total"], "epistemic uncertainty": epistemic}
    panels = {"seen generators": {k: (u[seen], correct[seen]) for k, u in scores.items()}}
    if (~seen).any():
        panels["seen and unseen generators"] = {k: (u, correct) for k, u in scores.items()}
    per_generator = {
        name: (p_fake[gens == i], labels[gens == i], i < n_seen) for i, name in enumerate(names)
    }
    figures = {
        "reliability": plots.reliability_figure(groups),
        "epistemic_histogram": plots.epistemic_histogram_figure(epistemic[seen], unseen_fakes),
        "risk_coverage": plots.risk_coverage_figure(panels, metrics.get("coverage_target")),
        "roc": plots.roc_figure(per_generator),
        "training_curves": plots.training_curves_figure(history),
    }
    if metrics.get("degradations"):
        figures["degradations"] = plots.degradation_figure(metrics)
    if sweeps(metrics):
        figures["severity"] = severity_figure(metrics)
    return figures


def write_report(
    run_dir: Path, metrics: Mapping[str, Any], record: Predictions, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``RUN/plots/*.png`` (unless ``plots=False``) and ``RUN/report.md``; returns
    kind -> path of everything written (the report under ``"report"``). Plots of an earlier
    evaluation that this one does not produce are removed, so the folder never mixes runs."""
    from bnnkit.report.markdown import render_report
    from bnnkit.report.plots import save_figure

    layout = RunLayout(run_dir)
    history = read_history(layout.root)
    written: dict[str, Path] = {}
    if plots:
        for kind, fig in make_figures(metrics, record, history).items():
            written[kind] = save_figure(fig, layout.plot(kind))
    for kind in PLOT_FILES:
        if kind not in written:
            layout.plot(kind).unlink(missing_ok=True)
    relative = {k: p.relative_to(layout.root).as_posix() for k, p in written.items()}
    report = layout.report
    atomic_write_text(report, render_report(metrics, relative, history))
    written["report"] = report
    return written
