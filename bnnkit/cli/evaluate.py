"""``bnnkit evaluate``: GenImage's protocol, calibration, unseen generators, abstention, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bnnkit.cli._common import compact_table, console, device_option, fmt, print_json


def _table(title: str | None, columns: list[str], left: int = 1, caption: str | None = None):
    table = compact_table(title, caption)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i < left else "right", no_wrap=True)
    return table


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _generator_rows(metrics: dict) -> list[tuple[str, dict, str | None]]:
    rows = [
        (name if m["seen"] else f"[bold magenta]{name}*[/]", m, None)
        for name, m in metrics["per_generator"].items()
    ]
    rows.append(("all seen", metrics["seen"], "bold"))
    if metrics.get("unseen"):
        rows.append(("all unseen", metrics["unseen"], "bold magenta"))
    return rows


def print_metrics(metrics: dict, out=None) -> None:
    """The evaluation as compact tables that fit an 80-column terminal without truncation."""
    out = out or console()
    detect = _table(
        f"{metrics['run']}: {metrics['method']}, K={metrics['samples']} posterior samples, "
        f"{metrics['split']} split",
        ["generator", "n", "acc", "bal.acc", "AUROC", "AP", "TPR@1%", "TPR@5%"],
        caption="* unseen in training. TPR@1%/5%: fakes detected at 1%/5% false positives.",
    )
    calib = _table(
        "calibration and uncertainty (nats)",
        ["generator", "NLL", "Brier", "ECE", "aECE", "total", "aleat.", "epist."],
        caption="total = H(mean p), aleatoric = mean H(p), epistemic = mutual information.",
    )
    rows = _generator_rows(metrics)
    for i, (name, m, style) in enumerate(rows):
        if i == len(metrics["per_generator"]):
            detect.add_section()
            calib.add_section()
        detect.add_row(
            name,
            str(m["n"]),
            fmt(m["accuracy"]),
            fmt(m["balanced_accuracy"]),
            fmt(m["auroc"]),
            fmt(m["ap"]),
            fmt(m["tpr_at_fpr_1"]),
            fmt(m["tpr_at_fpr_5"]),
            style=style,
        )
        calib.add_row(
            name,
            fmt(m["nll"]),
            fmt(m["brier"]),
            fmt(m["ece"]),
            fmt(m["adaptive_ece"]),
            fmt(m["total_uncertainty"]),
            fmt(m["aleatoric_uncertainty"]),
            fmt(m["epistemic_uncertainty"], 4),
            style=style,
        )
    out.print(detect)
    out.print(calib)
    out.print(f"GenImage average accuracy: {fmt(metrics['average_accuracy']['all'])}")

    for name, o in metrics["ood"].items():
        out.print(
            f"[bold magenta]unseen generator: {name}[/]: accuracy {fmt(o['accuracy'])}, "
            f"fakes detected {fmt(o['fake_detection_rate'])}\n"
            f"  epistemic AUROC [bold]{fmt(o['epistemic']['auroc'])}[/] (mean epistemic: "
            f"its fakes {fmt(o['mean_epistemic_unseen_fakes'], 4)}, "
            f"seen {fmt(o['mean_epistemic_seen'], 4)})"
        )
    if metrics["ood"]:
        ood = _table(
            "unseen fakes vs seen images (OOD detection)",
            ["unseen", "score", "AUROC", "AUPR", "FPR95"],
            left=2,
            caption="max-prob = 1 - max p; entropy = total; MI = epistemic (mutual information).",
        )
        entries = list(metrics["ood"].items())
        if len(entries) > 1 and metrics.get("ood_combined"):
            entries.append(("all unseen", metrics["ood_combined"]))
        for name, o in entries:
            for key, label in (("max_prob", "max-prob"), ("total", "entropy"), ("epistemic", "MI")):
                s = o[key]
                ood.add_row(name, label, fmt(s["auroc"]), fmt(s["aupr"]), fmt(s["fpr95"]))
        out.print(ood)

    sel = _table(
        "selective prediction on seen images",
        ["ranked by", "AURC", "optimal", "acc@100%", "acc@90%", "acc@80%"],
    )
    for key, s in metrics["selective"].items():
        # null/nan = a constant score (MAP's epistemic), which ranks nothing
        na = {k: "n/a" if fmt(s[k]) == "-" else fmt(s[k]) for k in s}
        sel.add_row(
            key,
            na["aurc"],
            na["aurc_optimal"],
            fmt(s["accuracy"]),
            na["accuracy_at_90"],
            na["accuracy_at_80"],
        )
    out.print(sel)

    a = metrics["abstention"]
    chosen = a["by_score"][a["score"]]
    abst = _table(
        f"abstention: {a['score']} uncertainty > {fmt(chosen['threshold'], 4)} -> uncertain "
        f"(target coverage {_pct(a['coverage_target'])})",
        ["images", "n", "coverage", "acc all", "acc kept", "errors caught"],
        caption=f"calibrated on {a['calibration']['n']} seen val images (cross-fit "
        f"coverage {_pct(chosen.get('coverage_crossfit'))}), saved in {a['calibration']['file']}",
    )
    groups = [("seen", chosen["seen"]), *chosen["unseen"].items()]
    if len(chosen["unseen"]) > 1 and chosen.get("unseen_combined"):
        groups.append(("all unseen", chosen["unseen_combined"]))
    for name, v in groups:
        abst.add_row(
            name,
            str(v["n"]),
            _pct(v["coverage"]),
            fmt(v["accuracy_all"]),
            fmt(v["accuracy_kept"]),
            f"{v['errors_caught']}/{v['errors']}",
        )
    out.print(abst)

    degs = metrics.get("degradations") or {}
    if degs:
        deg = _table(
            "degradations",
            ["condition", "avg acc", "seen acc", "unseen acc", "seen AUROC", "seen ECE", "epist."],
            caption="epist.: mean epistemic uncertainty of seen images.",
        )
        for name, c in {"clean": metrics, **degs}.items():
            deg.add_row(
                name,
                fmt(c["average_accuracy"]["all"]),
                fmt(c["seen"]["accuracy"]),
                fmt((c.get("unseen") or {}).get("accuracy")),
                fmt(c["seen"]["auroc"]),
                fmt(c["seen"]["ece"]),
                fmt(c["seen"]["epistemic_uncertainty"], 4),
            )
        out.print(deg)
    if metrics["broken_files"]:
        out.print(f"[yellow]{len(metrics['broken_files'])} unreadable file(s) skipped:[/]")
        for b in metrics["broken_files"]:
            out.print(f"  {b['path']}: {b['reason']}")


@click.command("evaluate")
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option(
    "--ood",
    "ood",
    multiple=True,
    metavar="GENERATOR",
    help="Evaluate GENERATOR as an unseen one (repeatable). Default: the recipe's "
    "data.holdout. A generator seen in training is refused.",
)
@click.option(
    "--degrade",
    "degrade",
    multiple=True,
    metavar="SPECS",
    help="Also evaluate under degradations, comma-separated and/or repeated: jpeg:QUALITY, "
    "blur:SIGMA, resize:SHORT_SIDE; 'genimage' = the paper's six "
    "(jpeg:65,jpeg:30,blur:3,blur:5,resize:112,resize:64).",
)
@click.option(
    "--samples",
    "-k",
    type=click.IntRange(min=1),
    default=None,
    help="Posterior samples K (default: the recipe's eval.samples).",
)
@click.option(
    "--coverage",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=None,
    help="Target coverage of the abstention threshold on seen-generator validation images "
    "(default: the recipe's eval.coverage, 0.95).",
)
@click.option(
    "--abstain-on",
    type=click.Choice(["total", "epistemic"]),
    default="total",
    show_default=True,
    help="Uncertainty the abstention threshold is calibrated on (both are reported).",
)
@click.option("--no-plots", is_flag=True, help="Skip RUN/plots/*.png (report.md keeps tables).")
@click.option(
    "--data-root", default=None, help="Evaluate on data at this root instead of the recipe's."
)
@click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where to look for the latest run when RUN is not given.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print metrics.json to stdout instead of tables."
)
@device_option
def command(
    run: Path | None,
    ood: tuple[str, ...],
    degrade: tuple[str, ...],
    samples: int | None,
    coverage: float | None,
    abstain_on: str,
    no_plots: bool,
    data_root: str | None,
    runs_dir: Path,
    as_json: bool,
    device: str,
) -> None:
    """Evaluate a trained RUN (default: the latest under ./runs) on the validation split.

    Per generator: accuracy, balanced accuracy, AUROC, AP, TPR at 1%/5% FPR, NLL, Brier, ECE
    and adaptive ECE, and the mean total / aleatoric / epistemic uncertainty. For every unseen
    generator: how well max-probability, entropy and mutual information separate its fakes
    from seen-generator images (AUROC, AUPR, FPR95). Selective prediction (AURC, accuracy at
    90%/80% coverage) on seen images. An abstention threshold is calibrated on seen-generator
    validation images for the target coverage and saved for `bnnkit predict`, with how many of
    the unseen generators' errors it catches. With --degrade, everything again per degradation.

    Writes RUN/metrics.json (schema_version 2, see docs/metrics-schema.md), threshold.json,
    predictions.csv, timing.json, plots/*.png and report.md.

    \b
    Examples:
      bnnkit evaluate --ood midjourney
      bnnkit evaluate runs/quickstart-20261121-101500 --ood midjourney --ood glide \\
          --degrade jpeg:65,blur:3 --samples 32
      bnnkit evaluate RUN --degrade genimage --coverage 0.9
    """
    from bnnkit.data.degrade import parse_degradations
    from bnnkit.engine.device import select_device
    from bnnkit.engine.evaluation import evaluate_run
    from bnnkit.engine.runs import resolve_run

    degradations = parse_degradations(degrade)
    run_dir = resolve_run(run, runs_dir)
    dev, note = select_device(device)
    if not as_json:
        console().print(f"evaluating {run_dir} on {note}")
    metrics = evaluate_run(
        run_dir,
        ood=list(ood) or None,
        samples=samples,
        device=dev,
        console=None if as_json else console(),
        data_root=data_root,
        degradations=degradations,
        coverage=coverage,
        abstain_on=abstain_on,
        plots=not no_plots,
    )
    if as_json:
        print_json(metrics)
        return
    print_metrics(metrics)
    wrote = ["metrics.json", "threshold.json", "predictions.csv", "report.md"]
    if not no_plots:
        wrote.append("plots/")
    console().print(f"wrote to {run_dir}: {', '.join(wrote)}")
