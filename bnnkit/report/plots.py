"""Paper-ready figures of an evaluation (matplotlib, object-oriented API, Agg; PNG at 150 dpi).

Every function returns a :class:`matplotlib.figure.Figure` whose axes all have a title and
labelled x and y axes (colour bars have a label); :func:`save_figure` writes it. Figures are
built without ``pyplot``, so no global figure state leaks and no GUI backend is ever touched.
Colours come from matplotlib's ``tableau-colorblind10`` palette.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bnnkit.report.history import MemberHistory, member_history

__all__ = [
    "DPI",
    "degradation_figure",
    "epistemic_histogram_figure",
    "reliability_figure",
    "risk_coverage_figure",
    "roc_figure",
    "save_figure",
    "training_curves_figure",
]

DPI = 150
WIDTH = 7.0  # inches: a two-column figure in most paper templates
_RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("tableau-colorblind10"), matplotlib.rc_context(_RC):
        yield


def _colours(n: int) -> list[str]:
    import matplotlib

    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, format="png")
    tmp.replace(path)
    return path


def _top_label(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = p >= 0.5
    return np.where(pred, p, 1.0 - p), (pred.astype(int) == y)


# --------------------------------------------------------------------------------------------


def reliability_figure(
    groups: Sequence[tuple[str, np.ndarray, np.ndarray]], n_bins: int = 15
) -> Figure:
    """Top-label reliability diagram per group ``(label, p_fake, labels)``: accuracy against
    confidence in ``n_bins`` equal-width bins on [0, 1] (the bins of the reported ECE; top-label
    confidences lie in [0.5, 1]), the gap to the diagonal shaded, and image counts below."""
    import torch

    from bnnkit.metrics.classification import ece, ece_bin_index

    with _style():
        fig = Figure(figsize=(WIDTH, 3.6), layout="constrained")
        grid = fig.add_gridspec(2, len(groups), height_ratios=(3, 1))
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        width = 1.0 / n_bins
        for col, (label, p, y) in enumerate(groups):
            ax = fig.add_subplot(grid[0, col])
            hist = fig.add_subplot(grid[1, col], sharex=ax)
            conf, hit = _top_label(np.asarray(p, float), np.asarray(y, int))
            idx = ece_bin_index(torch.as_tensor(conf), n_bins).numpy()  # (i/n, (i+1)/n]
            counts = np.bincount(idx, minlength=n_bins)
            filled = counts > 0
            acc = np.bincount(idx, weights=hit.astype(float), minlength=n_bins)
            mean_conf = np.bincount(idx, weights=conf, minlength=n_bins)
            acc[filled] /= counts[filled]
            mean_conf[filled] /= counts[filled]
            centres = edges[:-1] + width / 2
            ax.bar(
                centres[filled],
                acc[filled],
                width=width,
                edgecolor="black",
                linewidth=0.5,
                label="accuracy",
            )
            ax.bar(
                centres[filled],
                mean_conf[filled] - acc[filled],
                bottom=acc[filled],
                width=width,
                color="none",
                edgecolor="#C85200",
                hatch="///",
                linewidth=0.5,
                label="gap to confidence",
            )
            ax.plot([0, 1], [0, 1], "--", color="#595959", linewidth=1, label="perfect calibration")
            value = ece(np.asarray(p, float), np.asarray(y, int), n_bins=n_bins) if len(p) else 0
            ax.set(
                xlim=(edges[n_bins // 2], 1.0),  # top-label confidences are >= 0.5
                ylim=(0.0, 1.0),
                ylabel="accuracy",
                xlabel="confidence",
                title=f"{label} (n={len(p)}, ECE {value:.3f})",
            )
            ax.legend(loc="lower right")
            hist.bar(centres, counts, width=width, edgecolor="black", linewidth=0.5)
            hist.set(
                xlabel="confidence of the predicted class", ylabel="images", title="images per bin"
            )
        fig.suptitle(f"Reliability diagram (top-label, {n_bins} bins)")
    return fig


def epistemic_histogram_figure(seen: np.ndarray, unseen: Mapping[str, np.ndarray]) -> Figure:
    """Histograms (density) of the epistemic uncertainty (mutual information) of images of the
    seen generators and of each unseen generator's fakes, on common bins."""
    with _style():
        fig = Figure(figsize=(WIDTH * 0.7, 3.0), layout="constrained")
        ax = fig.add_subplot()
        values = [np.asarray(seen, float), *(np.asarray(v, float) for v in unseen.values())]
        allv = np.concatenate([v for v in values if v.size] or [np.zeros(1)])
        lo, hi = float(allv.min()), float(allv.max())
        if hi <= lo:
            lo, hi = lo - 0.5e-6, hi + 0.5e-6
        bins = np.linspace(lo, hi, 21)
        colours = _colours(len(values))
        labels = ["seen generators (all images)", *(f"{n} fakes (unseen)" for n in unseen)]
        for v, label, colour in zip(values, labels, colours, strict=True):
            if v.size:
                ax.hist(
                    v,
                    bins=bins,
                    density=True,
                    histtype="stepfilled",
                    alpha=0.35,
                    color=colour,
                    edgecolor=colour,
                    linewidth=1.2,
                    label=f"{label}, n={v.size}",
                )
        title = "Epistemic uncertainty: seen vs unseen generators"
        if float(allv.max()) < 1e-6:  # float rounding only (e.g. MAP: identical samples)
            title += "\n(about zero everywhere: a deterministic posterior)"
        elif not unseen:
            title += "\n(no unseen generator evaluated)"
        ax.set(
            xlabel="epistemic uncertainty, mutual information (nats)", ylabel="density", title=title
        )
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 3))
        ax.legend()
    return fig


def risk_coverage_figure(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    target_coverage: float | None = None,
) -> Figure:
    """Risk-coverage curves. ``panels``: panel title -> {score label -> (uncertainty, correct)}.
    Images are kept most-certain first; a dotted "oracle" curve keeps all errors for last."""
    import torch

    from bnnkit.metrics.selective import aurc, aurc_optimal, risk_coverage

    with _style():
        fig = Figure(figsize=(WIDTH if len(panels) > 1 else WIDTH * 0.6, 3.0), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, curves) in zip(axes, panels.items(), strict=True):
            correct = None
            for (label, (u, c)), colour in zip(curves.items(), _colours(len(curves)), strict=True):
                u_t, c_t = torch.as_tensor(u, dtype=torch.float64), torch.as_tensor(c).bool()
                cov, risk = risk_coverage(u_t, c_t)
                area = aurc(u_t, c_t)  # nan for a constant score (MAP's epistemic)
                ax.plot(
                    cov.numpy(),
                    risk.numpy(),
                    color=colour,
                    linewidth=1.4,
                    label=f"{label} (AURC {f'{area:.3f}' if math.isfinite(area) else 'n/a'})",
                )
                correct = c_t
            if correct is not None and correct.numel():
                cov, risk = risk_coverage((~correct).double(), correct)
                ax.plot(
                    cov.numpy(),
                    risk.numpy(),
                    ":",
                    color="#595959",
                    linewidth=1.2,
                    label=f"oracle (AURC {aurc_optimal(correct):.3f})",
                )
            if target_coverage is not None:
                ax.axvline(
                    target_coverage,
                    color="#898989",
                    linestyle="--",
                    linewidth=1,
                    label=f"target coverage {target_coverage:g}",
                )
            ax.set(
                xlim=(0.0, 1.0),
                xlabel="coverage (fraction of images kept)",
                ylabel="risk (error rate on kept images)",
                title=title,
            )
            ax.set_ylim(bottom=0.0)
            ax.legend(loc="upper left")
        fig.suptitle("Selective prediction: risk-coverage")
    return fig


def roc_figure(per_generator: Mapping[str, tuple[np.ndarray, np.ndarray, bool]]) -> Figure:
    """ROC of p(fake) per generator (its fakes against its reals); unseen generators dashed."""
    import torch
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    with _style():
        fig = Figure(figsize=(WIDTH * 0.6, 3.6), layout="constrained")
        ax = fig.add_subplot()
        colours = _colours(len(per_generator))
        for (name, (p, y, seen)), colour in zip(per_generator.items(), colours, strict=True):
            y_t = torch.as_tensor(y).long()
            if y_t.numel() == 0 or int(y_t.sum()) in (0, y_t.numel()):
                continue  # one class only: no ROC
            # Probabilities stay inside [0, 1], so torchmetrics never applies its sigmoid.
            p_t = torch.as_tensor(p, dtype=torch.float64).clamp(0.0, 1.0)
            fpr, tpr, _ = binary_roc(p_t, y_t)
            area = float(binary_auroc(p_t, y_t))
            ax.plot(
                fpr.numpy(),
                tpr.numpy(),
                "-" if seen else "--",
                color=colour,
                linewidth=1.3,
                label=f"{name}{'' if seen else ' (unseen)'}: AUC {area:.3f}",
            )
        ax.plot([0, 1], [0, 1], ":", color="#898989", linewidth=1, label="chance")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false-positive rate (reals called fake)",
            ylabel="true-positive rate (fakes detected)",
            title="ROC per generator (p(fake), fakes vs reals)",
        )
        ax.legend(loc="lower right")
    return fig


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _member_curves_figure(members: MemberHistory) -> Figure:
    """A whole-detector ensemble: one line per member (its own epochs, from 1), solid for
    training and dashed for validation, and the ensemble's validation as a dotted level."""
    with _style():
        fig = Figure(figsize=(WIDTH, 3.0), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        longest = max(members.epochs(), default=0)
        for i, (rows, colour) in enumerate(
            zip(members.members, _colours(len(members.members)), strict=True)
        ):
            x = np.arange(1, len(rows) + 1)
            for ax, keys in ((ax_loss, ("nll", "val_nll")), (ax_acc, ("train_acc", "val_acc"))):
                for key, style in zip(keys, ("-", "--"), strict=True):
                    y = np.array([_num(r.get(key)) for r in rows], dtype=float)
                    if np.isfinite(y).any():
                        ax.plot(x, y, style, marker="o", markersize=3, color=colour,
                                label=f"member {i + 1}" if style == "-" else None)  # fmt: skip
        ensemble = members.ensemble or {}
        for ax, key in ((ax_loss, "val_nll"), (ax_acc, "val_acc")):
            level = _num(ensemble.get(key))
            if math.isfinite(level):
                ax.axhline(level, color="black", linestyle=":", linewidth=1.2,
                           label="ensemble (validation)")  # fmt: skip
            ax.set_xlabel("epoch of each member")
            if longest:
                ax.set_xticks(np.arange(1, longest + 1))
                ax.set_xlim(0.5, longest + 0.5)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        ax_loss.set(ylabel="NLL (nats per image)", title="NLL: train solid, validation dashed")
        ax_acc.set(ylabel="accuracy", ylim=(0.0, 1.02),
                   title="Accuracy: train solid, validation dashed")  # fmt: skip
        fig.suptitle(f"Training curves of the {len(members.members)} ensemble members")
    return fig


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss and accuracy per epoch from ``history.csv`` rows (phases side by side on one axis,
    a phase change marked by a vertical line); a whole-detector ensemble's history: one curve
    per member, each over its own epochs."""
    members = member_history(history)
    if members is not None:
        return _member_curves_figure(members)
    with _style():
        fig = Figure(figsize=(WIDTH, 2.8), layout="constrained")
        ax_loss, ax_acc = fig.subplots(1, 2)
        x = np.arange(1, len(history) + 1)
        phases = [str(r.get("phase", "")) for r in history]

        def series(key: str) -> np.ndarray:
            return np.array([_num(r.get(key)) for r in history], dtype=float)

        for key, label in (
            ("loss", "train loss (objective)"),
            ("nll", "train NLL"),
            ("val_nll", "validation NLL"),
        ):
            if np.isfinite(series(key)).any():
                ax_loss.plot(x, series(key), marker="o", markersize=3, label=label)
        for key, label in (("train_acc", "train accuracy"), ("val_acc", "validation accuracy")):
            if np.isfinite(series(key)).any():
                ax_acc.plot(x, series(key), marker="o", markersize=3, label=label)
        for ax in (ax_loss, ax_acc):
            for i in range(1, len(phases)):
                if phases[i] != phases[i - 1]:
                    ax.axvline(i + 0.5, color="#898989", linestyle="--", linewidth=1)
            ax.set_xlabel("epoch (" + " then ".join(dict.fromkeys(phases)) + ")")
            if len(x):
                ax.set_xticks(x)
                ax.set_xlim(0.5, len(x) + 0.5)
        ax_loss.set(ylabel="nats per image", title="Loss")
        ax_acc.set(ylabel="accuracy", ylim=(0.0, 1.02), title="Accuracy")
        for ax in (ax_loss, ax_acc):
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        fig.suptitle("Training curves" if history else "Training curves (no history.csv rows)")
    return fig


def degradation_figure(metrics: Mapping[str, Any]) -> Figure:
    """Accuracy and mean epistemic uncertainty of seen / unseen generators, clean and under each
    degradation of ``metrics["degradations"]``."""
    conditions = {"clean": metrics, **metrics.get("degradations", {})}
    names = list(conditions)
    groups = [("seen", "seen generators")]
    if metrics.get("unseen"):
        groups.append(("unseen", "unseen generators"))
    many = len(names) > 8  # e.g. --degrade laundering: one panel per row, upright labels
    with _style():
        fig = Figure(figsize=(WIDTH, 6.0 if many else 3.0), layout="constrained")
        ax_acc, ax_unc = fig.subplots(2, 1) if many else fig.subplots(1, 2)
        x = np.arange(len(names))
        width = 0.8 / len(groups)
        for i, ((key, label), colour) in enumerate(zip(groups, _colours(2), strict=False)):
            acc = [_num((conditions[c].get(key) or {}).get("accuracy")) for c in names]
            unc = [_num((conditions[c].get(key) or {}).get("epistemic_uncertainty")) for c in names]
            offset = (i - (len(groups) - 1) / 2) * width
            ax_acc.bar(x + offset, acc, width, label=label, color=colour)
            ax_unc.bar(x + offset, unc, width, label=label, color=colour)
        ax_acc.set(ylim=(0, 1.02), ylabel="accuracy", title="Accuracy under degradation")
        ax_unc.set(ylabel="mean epistemic uncertainty (nats)", title="Epistemic uncertainty")
        ax_unc.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        for ax in (ax_acc, ax_unc):
            ax.set_xticks(x, names, rotation=90 if many else 30, ha="center" if many else "right")
            ax.set_xlabel("condition")
            ax.legend()
        fig.suptitle("Degradations" if many else "GenImage degradation protocol")
    return fig
