"""``bnnkit evaluate``: metrics per generator, calibration, and the unseen-generator block."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, fmt, print_json


def print_metrics(metrics: dict) -> None:
    from rich import box
    from rich.table import Table

    out = console()
    table = Table(
        title=f"{metrics['run']}: {metrics['method']}, K={metrics['samples']} posterior samples, "
        f"{metrics['split']} split",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption="* unseen in training. Uncertainty in nats: total = H(mean p), "
        "aleatoric = mean H(p), epistemic = mutual information.",
        caption_justify="left",
    )
    cols = ["generator", "n", "acc", "AUROC", "NLL", "Brier", "ECE", "total", "aleat.", "epist."]
    for c in cols:
        table.add_column(c, justify="left" if c == "generator" else "right", no_wrap=True)

    def row(name: str, m: dict, style: str | None = None) -> None:
        table.add_row(
            name, str(m["n"]), fmt(m["accuracy"]), fmt(m["auroc"]), fmt(m["nll"]),
            fmt(m["brier"]), fmt(m["ece"]), fmt(m["total_uncertainty"]),
            fmt(m["aleatoric_uncertainty"]), fmt(m["epistemic_uncertainty"], 4), style=style,
        )  # fmt: skip

    for name, m in metrics["per_generator"].items():
        row(name if m["seen"] else f"[bold magenta]{name}*[/]", m)
    table.add_section()
    row("all seen", metrics["seen"], style="bold")
    out.print(table)
    for name, o in metrics["ood"].items():
        e, t = o["epistemic"], o["total"]
        out.print(
            f"[bold magenta]unseen generator: {name}[/]\n"
            f"  accuracy {fmt(o['accuracy'])}   fakes detected {fmt(o['fake_detection_rate'])}\n"
            f"  epistemic uncertainty: unseen fakes {fmt(o['mean_epistemic_unseen_fakes'], 4)} vs "
            f"seen images {fmt(o['mean_epistemic_seen'], 4)}\n"
            f"  telling {name} fakes from seen-generator images: epistemic AUROC "
            f"[bold]{fmt(e['auroc'])}[/] (AUPR {fmt(e['aupr'])}, FPR95 {fmt(e['fpr95'])}); "
            f"total-uncertainty AUROC {fmt(t['auroc'])}"
        )
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
    help="Evaluate GENERATOR as the unseen one (repeatable). Default: the recipe's "
    "data.holdout. A generator seen in training is refused.",
)
@click.option(
    "--samples",
    "-k",
    type=int,
    default=None,
    help="Posterior samples K (default: the recipe's eval.samples).",
)
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
    samples: int | None,
    data_root: str | None,
    runs_dir: Path,
    as_json: bool,
    device: str,
) -> None:
    """Evaluate a trained RUN (default: the latest under ./runs) on the validation split.

    Per generator: accuracy, AUROC, NLL, Brier, ECE and the mean total / aleatoric / epistemic
    uncertainty (entropy of the mean predictive / mean entropy / mutual information). For every
    unseen generator: its accuracy, and how well epistemic uncertainty separates its fakes from
    images of the generators seen in training (AUROC, AUPR, FPR95). The backbone runs once per
    image; the K posterior samples are drawn over the head only.

    Writes RUN/metrics.json (schema_version 1) and RUN/timing.json.

    \b
    Examples:
      bnnkit evaluate --ood midjourney
      bnnkit evaluate runs/resnet50_bbb-20261121-101500 --ood midjourney --samples 100
    """
    from bnnkit.engine.device import select_device
    from bnnkit.engine.evaluation import evaluate_run
    from bnnkit.engine.runs import resolve_run

    if samples is not None and samples < 1:
        raise click.BadParameter("must be >= 1", param_hint="--samples")
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
    )
    if as_json:
        print_json(metrics)
    else:
        print_metrics(metrics)
        console().print(f"wrote {run_dir / 'metrics.json'}")
