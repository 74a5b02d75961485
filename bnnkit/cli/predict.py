"""``bnnkit predict``: p(fake), uncertainty parts and a verdict (real / fake / uncertain) per file.

Parses the options, calls :func:`bnnkit.engine.predict.predict_run` and renders its rows as a
table, JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, err_console, fmt, format_option


@click.command("predict")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option(["table", "json", "csv"], dest="fmt_")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the predictions to this file instead of stdout.",
)
@click.option(
    "--samples",
    "-k",
    type=click.IntRange(min=1),
    default=None,
    help="Posterior samples K (default: the K the threshold was calibrated with, else the "
    "recipe's eval.samples).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="p(fake) at or above which the verdict is 'fake'.",
)
@click.option(
    "--abstain/--no-abstain",
    default=True,
    show_default=True,
    help="Answer 'uncertain' when the uncertainty exceeds the threshold that `bnnkit evaluate` "
    "calibrated (RUN/threshold.json).",
)
@click.option(
    "--max-uncertainty",
    type=float,
    default=None,
    help="Abstain above this uncertainty (nats) instead of the calibrated threshold; the score "
    "is the calibrated one (total unless evaluate chose epistemic).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also write, per image, a PNG overlaying the attention map and a patch-wise "
    "epistemic-uncertainty map on the image.",
)
@click.option(
    "--explain-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for the --explain PNGs (default: beside --output, else RUN/explain/).",
)
@device_option
def command(
    run: Path,
    inputs: tuple[Path, ...],
    fmt_: str,
    output: Path | None,
    samples: int | None,
    batch_size: int,
    threshold: float,
    abstain: bool,
    max_uncertainty: float | None,
    explain: bool,
    explain_dir: Path | None,
    device: str,
) -> None:
    """Predict with a trained RUN on image files and folders (searched recursively).

    For each file: the verdict, p(fake) from the posterior predictive, and the total /
    aleatoric / epistemic uncertainty in nats. The verdict is 'uncertain' when the run has a
    calibrated abstention threshold (written by `bnnkit evaluate`) and the image's uncertainty
    is above it; otherwise 'fake' if p(fake) >= --threshold, else 'real'. A file that cannot
    be read gets an error entry; the others are still predicted.

    \b
    Examples:
      bnnkit predict runs/quickstart-20261121-101500 photo.png folder/
      bnnkit predict runs/quickstart-20261121-101500 folder/ --format json -o preds.json
      bnnkit predict runs/quickstart-20261121-101500 photo.png --explain
    """
    from bnnkit.api import Run

    the_run = Run.load(run)
    run_dir = the_run.path
    result = the_run.predict_result(
        inputs,
        device=device,
        samples=samples,
        batch_size=batch_size,
        p_threshold=threshold,
        abstain=abstain,
        max_uncertainty=max_uncertainty,
        explain=explain,
        explain_dir=explain_dir or (output.parent if output is not None else None),
    )
    for warning in result.warnings:
        err_console().print(f"[yellow]warning:[/] {warning}")
    _emit(result.rows, fmt_, output, run_dir, result.samples, result.rule, explain)


def _emit(rows, fmt_: str, output: Path | None, run_dir: Path, k: int, rule, explain: bool):
    text: str | None = None
    if fmt_ == "json":
        text = json.dumps(
            {"run": str(run_dir), "samples": k, "abstention": rule, "predictions": rows},
            indent=2,
        )
        text += "\n"
    elif fmt_ == "csv":
        buf = io.StringIO()
        from bnnkit.engine.predict import FIELDS

        fields = FIELDS + (["explain"] if explain else [])
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if text is not None:
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text, nl=False)
        return
    from rich.table import Table

    caption = None
    if rule is not None:
        caption = f"uncertain: {rule['score']} uncertainty > {rule['threshold']:.4g} nats"
        if rule.get("coverage_target"):
            caption += f" (calibrated for {100 * rule['coverage_target']:.0f}% coverage)"
    table = Table(
        title=f"predictions of {run_dir.name} (K={k})",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    table.add_column("file", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    for c in ("p(fake)", "total", "aleatoric", "epistemic"):
        table.add_column(c, justify="right", no_wrap=True)
    styles = {"fake": "red", "real": "green", "uncertain": "yellow"}
    for r in rows:
        if r["p_fake"] is None:
            table.add_row(r["path"], "[red]error[/]", r["error"], "", "", "")
            continue
        verdict = f"[{styles[r['verdict']]}]{r['verdict']}[/]"
        if r["error"]:
            verdict += f" [red]({r['error']})[/]"
        table.add_row(
            r["path"],
            verdict,
            fmt(r["p_fake"]),
            fmt(r["total"]),
            fmt(r["aleatoric"]),
            fmt(r["epistemic"], 4),
        )
    out = console()
    if output is not None:
        from rich.console import Console

        with open(output, "w", encoding="utf-8") as fh:
            Console(file=fh, width=120, highlight=False).print(table)
        out.print(f"wrote {output}")
    else:
        out.print(table)
    if explain:
        written = [r["explain"] for r in rows if r.get("explain")]
        if written:
            out.print(f"explain: {len(written)} PNG(s) in {Path(written[0]).parent}")
