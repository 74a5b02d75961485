"""Evaluation reports: paper-ready plots (:mod:`bnnkit.report.plots`) under ``RUN/plots/`` and a
self-contained ``RUN/report.md`` (:mod:`bnnkit.report.markdown`).

:func:`write_report` is what ``bnnkit evaluate`` calls; it needs the metrics dict
(``metrics.json``), the clean per-image results (:class:`PerImage`) and reads ``history.csv``
for the training curves.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PLOTS_DIR",
    "PLOT_FILES",
    "REPORT_FILE",
    "PerImage",
    "make_figures",
    "read_history",
    "write_report",
]

PLOTS_DIR = "plots"
REPORT_FILE = "report.md"
#: plot kind -> file name under ``RUN/plots/``. ``degradations`` only with ``--degrade``.
PLOT_FILES: dict[str, str] = {
    "reliability": "reliability.png",
    "epistemic_histogram": "epistemic_histogram.png",
    "risk_coverage": "risk_coverage.png",
    "roc": "roc_per_generator.png",
    "training_curves": "training_curves.png",
    "degradations": "degradations.png",
}


@dataclass
class PerImage:
    """Per-image results of the clean evaluation as numpy arrays (one entry per image)."""

    p_fake: np.ndarray
    labels: np.ndarray
    generators: np.ndarray  # index into generator_names; the first n_seen are seen
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    generator_names: list[str]
    n_seen: int

    @classmethod
    def from_tensors(cls, data: Any, generator_names: list[str], n_seen: int) -> PerImage:
        """From any object with tensor attributes ``p_fake, labels, generators, total,
        aleatoric, epistemic`` (e.g. :class:`bnnkit.engine.evaluation.ConditionData`)."""
        keys = ("p_fake", "labels", "generators", "total", "aleatoric", "epistemic")
        arrays = {k: getattr(data, k).detach().cpu().numpy() for k in keys}
        return cls(**arrays, generator_names=list(generator_names), n_seen=int(n_seen))

    @property
    def seen(self) -> np.ndarray:
        return self.generators < self.n_seen

    @property
    def correct(self) -> np.ndarray:
        return (self.p_fake >= 0.5).astype(int) == self.labels


def read_history(run_dir: Path) -> list[dict[str, str]]:
    """Rows of ``RUN/history.csv`` (empty if the file is missing or unreadable)."""
    path = Path(run_dir) / "history.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return []


def make_figures(
    metrics: Mapping[str, Any], data: PerImage, history: list[dict[str, str]]
) -> dict[str, Any]:
    """Plot kind -> matplotlib Figure, for every kind in :data:`PLOT_FILES` that applies."""
    from bnnkit.report import plots

    seen = data.seen
    unseen_names = data.generator_names[data.n_seen :]
    groups = [("seen generators", data.p_fake[seen], data.labels[seen])]
    if (~seen).any():
        groups.append(("unseen generators", data.p_fake[~seen], data.labels[~seen]))
    unseen_fakes = {
        name: data.epistemic[(data.generators == j) & (data.labels == 1)]
        for j, name in enumerate(unseen_names, start=data.n_seen)
    }
    correct = data.correct
    scores = {"total uncertainty": data.total, "epistemic uncertainty": data.epistemic}
    panels = {"seen generators": {k: (u[seen], correct[seen]) for k, u in scores.items()}}
    if (~seen).any():
        panels["seen and unseen generators"] = {k: (u, correct) for k, u in scores.items()}
    per_generator = {
        name: (
            data.p_fake[data.generators == i],
            data.labels[data.generators == i],
            i < data.n_seen,
        )
        for i, name in enumerate(data.generator_names)
    }
    figures = {
        "reliability": plots.reliability_figure(groups),
        "epistemic_histogram": plots.epistemic_histogram_figure(data.epistemic[seen], unseen_fakes),
        "risk_coverage": plots.risk_coverage_figure(panels, metrics.get("coverage_target")),
        "roc": plots.roc_figure(per_generator),
        "training_curves": plots.training_curves_figure(history),
    }
    if metrics.get("degradations"):
        figures["degradations"] = plots.degradation_figure(metrics)
    return figures


def write_report(
    run_dir: Path, metrics: Mapping[str, Any], data: PerImage, *, plots: bool = True
) -> dict[str, Path]:
    """Write ``RUN/plots/*.png`` (unless ``plots=False``) and ``RUN/report.md``; returns
    kind -> path of everything written (the report under ``"report"``). Plots of an earlier
    evaluation that this one does not produce are removed, so the folder never mixes runs."""
    from bnnkit.engine.checkpoint import atomic_write_text
    from bnnkit.report.markdown import render_report
    from bnnkit.report.plots import save_figure

    run_dir = Path(run_dir)
    history = read_history(run_dir)
    written: dict[str, Path] = {}
    plot_dir = run_dir / PLOTS_DIR
    if plots:
        for kind, fig in make_figures(metrics, data, history).items():
            written[kind] = save_figure(fig, plot_dir / PLOT_FILES[kind])
    for kind, name in PLOT_FILES.items():
        if kind not in written:
            (plot_dir / name).unlink(missing_ok=True)
    relative = {k: p.relative_to(run_dir).as_posix() for k, p in written.items()}
    report = run_dir / REPORT_FILE
    atomic_write_text(report, render_report(metrics, relative, history))
    written["report"] = report
    return written
