"""Rendering ``bnnkit evaluate``'s metrics as terminal tables."""

from __future__ import annotations

from bnnkit.cli._common import console, fmt
from bnnkit.metrics.schema import ood_score


def print_metrics(metrics: dict, out=None) -> None:
    """The evaluation as compact tables that fit an 80-column terminal without truncation
    (the tables of :mod:`bnnkit.report.tables`, shared with report.md)."""
    from bnnkit.report import tables as t
    from bnnkit.report.tables_attribution import attribution_table
    from bnnkit.report.tables_generators import calibration_table, detection_table

    out = out or console()
    out.print(t.render_rich(detection_table(metrics)))
    out.print(t.render_rich(calibration_table(metrics)))
    out.print(f"GenImage average accuracy: {fmt(metrics['average_accuracy']['all'])}")
    for name, o in metrics["ood"].items():
        auroc = ood_score(o, "mutual_info").get("auroc")  # only when mutual_info was requested
        out.print(
            f"[bold magenta]unseen generator: {name}[/]: accuracy {fmt(o['accuracy'])}, "
            f"fakes detected {fmt(o['fake_detection_rate'])}\n  "
            + (f"epistemic AUROC [bold]{fmt(auroc)}[/] " if auroc is not None else "")
            + f"(mean epistemic: its fakes {fmt(o['mean_epistemic_unseen_fakes'], 4)}, "
            f"seen {fmt(o['mean_epistemic_seen'], 4)})"
        )
    if metrics["ood"]:
        out.print(t.render_rich(t.score_summary_table(metrics)))
    out.print(t.render_rich(t.selective_table(metrics)))
    out.print(t.render_rich(t.abstention_table(metrics, [metrics["abstention"]["score"]])))
    if metrics.get("degradations"):
        out.print(t.render_rich(t.degradation_table(metrics)))
    attribution = attribution_table(metrics)  # data.labels = "generator"
    if attribution is not None:
        out.print(t.render_rich(attribution))
    if metrics["broken_files"]:
        out.print(f"[yellow]{len(metrics['broken_files'])} unreadable file(s) skipped:[/]")
        for b in metrics["broken_files"]:
            out.print(f"  {b['path']}: {b['reason']}")
