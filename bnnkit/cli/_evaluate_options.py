"""Options of ``bnnkit evaluate`` kept out of :mod:`bnnkit.cli.evaluate` (its size limit), and
the several-benchmark path (``--data``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bnnkit.cli._common import console, print_json


def fit_limit_option(f: Callable) -> Callable:
    return click.option(
        "--fit-limit",
        type=click.IntRange(min=0),
        default=2000,
        show_default=True,
        help="Training images (balanced over generator and class) a fitted score such as "
        "mahalanobis or knn is fitted on when the run has no fit of it yet; 0 = all.",
    )(f)


def _open_unit_option(name: str, metavar: str, help: str) -> Callable[[Callable], Callable]:
    """An optional float option in (0, 1)."""
    unit = click.FloatRange(0.0, 1.0, min_open=True, max_open=True)
    return click.option(name, type=unit, default=None, metavar=metavar, help=help)


guarantee_option = _open_unit_option(
    "--guarantee",
    "LEVEL",
    "Set the abstention threshold by split conformal on the calibration split so that a new "
    "seen image is kept with probability >= LEVEL (finite-sample, marginal); replaces "
    "--coverage. metrics.json records the bound and the calibration size.",
)
false_alarm_option = _open_unit_option(
    "--max-false-alarm",
    "ALPHA",
    "Set the verdict's p(fake) threshold (Neyman-Pearson, split conformal on the calibration "
    "split's real images) so that at most ALPHA of real images are called fake; saved in "
    "threshold.json, which `bnnkit predict` then applies.",
)


def show_written(metrics: dict, as_json: bool, printer: Callable, run_dir: Path, plots: bool):
    """Print ``metrics`` as JSON, or through ``printer`` followed by the files written."""
    from bnnkit.run import layout

    if as_json:
        print_json(metrics)
        return
    printer(metrics)
    out = layout.RunLayout(run_dir)
    wrote = [p.name for p in (out.metrics, out.threshold, out.predictions, out.report)]
    if plots:
        wrote.append(f"{layout.PLOTS_DIR}/")
    console().print(f"wrote to {run_dir}: {', '.join(wrote)}")


def tiles_arg(tiling: dict | None) -> dict | bool:
    """``--tiles`` options as :func:`bnnkit.engine.evaluate.run.evaluate_run`'s ``tiles``."""
    if not tiling:
        return False
    keys = {"max_tiles": "max_tiles", "overlap": "tile_overlap", "reduce": "tile_reduce"}
    return {k: tiling[v] for k, v in keys.items()}


def data_option(f: Callable) -> Callable:
    """``--data NAME=ROOT[:LAYOUT]`` (repeatable) and ``--data-root``."""
    f = click.option(
        "--data-root",
        default=None,
        help="The run's data at this root instead of the recipe's (with --data: where its "
        "calibration images are).",
    )(f)
    return click.option(
        "--data",
        "data",
        multiple=True,
        metavar="NAME=ROOT[:LAYOUT]",
        help="Evaluate on this benchmark instead of the run's validation data (repeatable): "
        "every generator under ROOT (LAYOUT auto, genimage, binary or manifest; default auto), "
        "those the run trained on counted as seen. Prints each benchmark and the mean and "
        "minimum accuracy and AUROC over them; every image goes through the backbone once; "
        "thresholds and fits still come from the run's calibration split.",
    )(f)


def evaluate_benchmarks(
    run_dir: Path, data: tuple[str, ...], *, as_json: bool, refused: dict[str, Any],
    **options: Any,
) -> None:  # fmt: skip
    """``bnnkit evaluate RUN --data ...``: evaluate, then print the cross-benchmark table (or
    the metrics as JSON). ``refused``: options given that ``--data`` does not combine with."""
    from bnnkit.engine.evaluate.benchmarks import evaluate_benchmarks_dir
    from bnnkit.errors import UsageError

    given = [name for name, value in refused.items() if value]
    if given:
        raise UsageError(
            f"--data does not combine with {', '.join(given)}",
            hint="evaluate the run on one data root (--data-root) for those",
        )
    metrics = evaluate_benchmarks_dir(
        run_dir, list(data), console=None if as_json else console(), **options
    )
    show_written(metrics, as_json, print_benchmarks, run_dir, plots=False)


def print_benchmarks(metrics: dict, out=None) -> None:
    """The per-benchmark table with the mean and minimum rows."""
    from bnnkit.report.benchmarks import benchmark_table
    from bnnkit.report.tables import render_rich

    out = out or console()
    out.print(render_rich(benchmark_table(metrics)))
    broken = metrics.get("broken_files") or []
    if broken:
        out.print(f"[yellow]{len(broken)} unreadable file(s) skipped:[/]")
        for b in broken:
            out.print(f"  {b['path']}: {b['reason']}")
