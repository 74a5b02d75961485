"""Plots and report.md from synthetic per-image results (no training needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bnnkit.metrics.protocol import abstention_metrics, calibrate_thresholds, condition_metrics
from bnnkit.metrics.records import Predictions
from bnnkit.report import PLOT_FILES, make_figures, write_report
from bnnkit.report.explain import explain_figure
from bnnkit.report.markdown import render_report
from bnnkit.report.plots import reliability_figure

GENERATORS = ["adm", "biggan", "midjourney"]
HISTORY = [
    {"phase": "finetune-map", "epoch": "1", "loss": "0.9", "nll": "0.9", "kl": "0",
     "train_acc": "0.6", "val_acc": "0.55", "val_nll": "0.7", "seconds": "1.0"},
    {"phase": "finetune-map", "epoch": "2", "loss": "0.6", "nll": "0.6", "kl": "0",
     "train_acc": "0.7", "val_acc": "0.65", "val_nll": "0.6", "seconds": "1.0"},
    {"phase": "head", "epoch": "1", "loss": "0.5", "nll": "0.45", "kl": "0.05",
     "train_acc": "0.8", "val_acc": "nan", "val_nll": "nan", "seconds": "0.1"},
]  # fmt: skip


def _synthetic(n_per_gen: int = 20, seed: int = 0) -> Predictions:
    g = torch.Generator().manual_seed(seed)
    gens = torch.arange(len(GENERATORS)).repeat_interleave(n_per_gen)
    labels = torch.arange(n_per_gen).remainder(2).repeat(len(GENERATORS))
    p = (0.25 + 0.5 * labels + 0.3 * (torch.rand(gens.numel(), generator=g) - 0.5)).double()
    epi = 0.01 * torch.rand(gens.numel(), generator=g, dtype=torch.float64) + 0.05 * (gens == 2)
    total = -(p * p.log() + (1 - p) * (1 - p).log()) + epi
    return Predictions(p, total, total - epi, epi, labels, gens, torch.arange(gens.numel()))


@pytest.fixture(scope="module")
def evaluated():
    data = _synthetic()
    metrics = {
        "run": "synthetic-run", "recipe": "quickstart", "method": "bbb", "head": "bbb",
        "backbone": "test_resnet", "attention": "spatial", "samples": 8, "seed": 0,
        "split": "val", "image_size": 32, "preprocess": "crop", "schema_version": 2,
        "seen_generators": GENERATORS[:2], "ood_generators": GENERATORS[2:],
        "coverage_target": 0.9, "broken_files": [{"path": "x.png", "reason": "empty file"}],
    }  # fmt: skip
    metrics.update(condition_metrics(data, GENERATORS, 2))
    thresholds, crossfit = calibrate_thresholds(data, 2, 0.9)
    metrics["abstention"] = abstention_metrics(
        data, GENERATORS, 2, thresholds, "total", 0.9, crossfit
    )
    metrics["abstention"]["calibration"] = {"split": "val", "generators": GENERATORS[:2],
                                            "n": 40, "file": "threshold.json"}  # fmt: skip
    degraded = condition_metrics(_synthetic(seed=1), GENERATORS, 2)
    degraded["abstention"] = abstention_metrics(
        _synthetic(seed=1), GENERATORS, 2, thresholds, "total", 0.9
    )
    metrics["degradations"] = {
        "jpeg:30": {"kind": "jpeg", "value": 30.0, "description": "JPEG at quality 30",
                    **degraded},
        # a severity level: the severity plot (one point of the jpeg sweep)
        "jpeg@5": {"kind": "jpeg", "value": 30.0, "values": [30.0], "severity": 5,
                   "description": "severity 5 of 5: JPEG at quality 30", **degraded},
    }  # fmt: skip
    return metrics, data


def _assert_labelled(fig) -> None:
    main = [ax for ax in fig.axes if not hasattr(ax, "_colorbar")]
    assert main
    for ax in main:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):
            assert ax.get_ylabel()


def test_every_figure_has_titles_and_labelled_axes(evaluated):
    metrics, data = evaluated
    figures = make_figures(metrics, data, HISTORY)
    assert set(figures) == set(PLOT_FILES)  # the five kinds + degradations + severity
    for fig in figures.values():
        _assert_labelled(fig)
        assert fig.get_suptitle() or fig.axes[0].get_title()
    legends = [ax.get_legend() for ax in figures["roc"].axes]
    texts = [t.get_text() for lg in legends if lg for t in lg.get_texts()]
    assert any(t.startswith("midjourney (unseen)") for t in texts)
    curves = figures["training_curves"]
    assert curves.axes[0].get_xlabel() == "epoch (finetune-map then head)"


def test_reliability_bars_are_per_bin_accuracy():
    p = np.array([0.55, 0.55, 0.95, 0.95, 0.05])
    y = np.array([1, 0, 1, 1, 0])
    fig = reliability_figure([("seen", p, y)])
    bars = fig.axes[0].containers[0]  # accuracy bars of the filled bins, in bin order
    # bin [8/15, 9/15): one of two right; bin [14/15, 1]: three of three right
    assert [round(b.get_height(), 6) for b in bars] == [0.5, 1.0]
    assert "ECE" in fig.axes[0].get_title()


def test_explain_figure_is_labelled():
    image = np.random.default_rng(0).random((32, 32, 3))
    fig = explain_figure(image, np.ones((4, 4)), "attention mask (0-1)", np.zeros((4, 4)), "t")
    _assert_labelled(fig)
    assert sum(hasattr(ax, "_colorbar") for ax in fig.axes) == 2


def test_write_report_writes_pngs_and_a_standalone_markdown(evaluated, tmp_path):
    metrics, data = evaluated
    with open(tmp_path / "history.csv", "w") as fh:
        fh.write(",".join(HISTORY[0]) + "\n")
        for row in HISTORY:
            fh.write(",".join(row.values()) + "\n")
    written = write_report(tmp_path, metrics, data)
    assert set(written) == {*PLOT_FILES, "report"}
    for kind, name in PLOT_FILES.items():
        path = tmp_path / "plots" / name
        assert written[kind] == path
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG" and im.width >= 500 and im.height >= 300
    report = (tmp_path / "report.md").read_text()
    for name in PLOT_FILES.values():
        assert f"](plots/{name})" in report
    for heading in ("## Summary", "## Detection per generator", "## Abstention",
                    "## Forensic metrics per generator",
                    "## Degradations", "## Unreadable files skipped"):  # fmt: skip
        assert heading in report
    assert "| midjourney\\* |" in report and "| jpeg:30 |" in report
    assert "Training: 3 epoch(s)" in report

    # evaluated again without a severity sweep: its stale plot and link go
    fewer = {**metrics, "degradations": {"jpeg:30": metrics["degradations"]["jpeg:30"]}}
    written = write_report(tmp_path, fewer, data)
    assert "severity" not in written and "degradations" in written
    assert not (tmp_path / "plots" / PLOT_FILES["severity"]).exists()
    assert "plots/severity.png" not in (tmp_path / "report.md").read_text()

    # Without plots: the earlier PNGs go, and the report no longer links them.
    written = write_report(tmp_path, metrics, data, plots=False)
    assert set(written) == {"report"}
    assert not any((tmp_path / "plots").glob("*.png"))
    assert "![" not in (tmp_path / "report.md").read_text()


def test_render_report_tables_and_missing_values(evaluated):
    metrics, _ = evaluated
    m = dict(metrics)
    m["per_generator"] = {k: dict(v) for k, v in metrics["per_generator"].items()}
    m["per_generator"]["adm"]["auroc"] = None  # e.g. one class only
    text = render_report(m, {}, [])
    lines = text.splitlines()
    start = lines.index("## Detection per generator")
    table = [ln for ln in lines[start + 2 :] if ln.startswith("|")][: 2 + len(GENERATORS) + 2]
    assert table[0].startswith("| generator | n | acc | R.Acc | F.Acc |")
    assert table[2].split(" | ")[6] == "–"  # adm's AUROC column
    assert [r.split(" | ")[0] for r in table[2:]] == [
        "| adm", "| biggan", "| midjourney\\*", "| **all seen**", "| **all unseen**",
    ]  # fmt: skip
    assert "![" not in text and "## Plots" not in text
