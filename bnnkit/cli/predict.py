"""``bnnkit predict``: p(fake), uncertainty parts and a verdict (real / fake / uncertain) per file.

Parses the options, calls :func:`bnnkit.engine.predict.run.predict_run` and renders its rows as a
table, JSON or CSV.
"""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import device_option, err_console, format_option
from bnnkit.cli._predict_output import emit
from bnnkit.cli._tiles import tile_options


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
    default=None,
    help="p(fake) at or above which the verdict is 'fake' (default: the run's Neyman-Pearson "
    "threshold from `bnnkit evaluate --max-false-alarm`, else 0.5).",
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
    help="Abstain above this value of the calibrated score (threshold.json's, e.g. knn with "
    "`bnnkit evaluate --abstain-on knn`; entropy in nats by default) instead of its threshold.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also write, per image, a PNG overlaying the attention map and a patch-wise "
    "epistemic-uncertainty map on the image (with --tiles: over the whole image, with the "
    "per-tile p(fake)).",
)
@click.option(
    "--explain-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for the --explain PNGs (default: beside --output, else RUN/explain/).",
)
@tile_options
@device_option
def command(
    run: Path,
    inputs: tuple[Path, ...],
    fmt_: str,
    output: Path | None,
    samples: int | None,
    batch_size: int,
    threshold: float | None,
    abstain: bool,
    max_uncertainty: float | None,
    explain: bool,
    explain_dir: Path | None,
    tiling: dict | None,
    device: str,
) -> None:
    """Predict with a trained RUN on image files and folders (searched recursively).

    For each file: the verdict, p(fake) from the posterior predictive, and the total /
    aleatoric / epistemic uncertainty in nats. The verdict is 'uncertain' when the run has a
    calibrated abstention threshold (written by `bnnkit evaluate`, on any score: --abstain-on)
    and the image's value of that score (in the rows as score and score_value; a fitted score
    is loaded from RUN/scores/) is above it; otherwise 'fake' if p(fake) >= --threshold, else
    'real'. A file that cannot
    be read gets an error entry; the others are still predicted, and non-image files in
    folders are counted in a warning. The exit code is 1 when no file could be predicted.

    With --tiles a large image is judged as a whole: a grid of crops at the recipe's size
    covers it, and the rows add the spread across tiles (tiles, tile_scale, tile_p_fake_max,
    tile_p_fake_sd, tile_disagreement).

    \b
    Examples:
      bnnkit predict runs/quickstart-20261121-101500 photo.png folder/
      bnnkit predict runs/quickstart-20261121-101500 folder/ --format json -o preds.json
      bnnkit predict runs/quickstart-20261121-101500 photo.png --explain
      bnnkit predict runs/quickstart-20261121-101500 big-photo.jpg --tiles --explain
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
        **(tiling or {}),
    )
    for warning in result.warnings:
        err_console().print(f"[yellow]warning:[/] {warning}")
    emit(result, fmt_, output, run_dir, explain)
    if result.rows and all(r["p_fake"] is None for r in result.rows):
        err_console().print("[red]error:[/] no file could be predicted (see the error entries)")
        raise SystemExit(1)
