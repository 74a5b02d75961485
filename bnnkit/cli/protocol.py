"""``bnnkit protocol``: a GenImage protocol (sdv4, cross, loo) as a set of runs and one table."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import (
    abstain_on_option,
    choice_option,
    console,
    device_option,
    overrides_option,
    print_table,
)
from bnnkit.metrics.schema import DEFAULT_ABSTAIN_SCORE


@click.command("protocol")
@click.argument("name", type=click.Choice(["sdv4", "cross", "loo"]))
@click.option(
    "--recipe",
    "recipes",
    multiple=True,
    required=True,
    metavar="RECIPE",
    help="A recipe file or bundled name (repeatable: one block of rows per recipe).",
)
@overrides_option(
    "KEY=VALUE", "Override a recipe key in every cell; VALUE is parsed as TOML (repeatable)."
)
@click.option(
    "--generators",
    metavar="A,B,...",
    help="Only these generators (comma-separated short names; default all eight).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Protocol folder (default protocols/<name>-<timestamp>). Give an existing one to "
    "finish it: done cells are skipped, an interrupted one resumes.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help='Feature cache shared by every cell (train.backbone = "frozen"); default OUT/cache.',
)
@click.option(
    "--score",
    "scores",
    multiple=True,
    metavar="NAME",
    help="OOD score every cell's evaluation reports (repeatable; `bnnkit plugins --kind score`"
    "); the first is the table's OOD AUROC column. Default: evaluate's set, mutual_info tabled.",
)
@abstain_on_option(
    "Score of the abstention threshold whose caught unseen errors are tabled (any score)."
)
@click.option("--plots", is_flag=True, help="Also write each cell's evaluation plots.")
@click.option(
    "--debias",
    "debias",
    multiple=True,
    type=click.Choice(["jpeg96", "size_matched"]),
    help="Also evaluate every cell under these data.debias controls and print the raw and the "
    "controlled table side by side (OUT/debias-*/); to train under them too: --set "
    "'data.debias=[\"jpeg96\"]'.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Run into an --out whose protocol.json has other settings (protocol, recipes, --set, "
    "generators, scores): each cell trains a new run beside the old, the tables are replaced.",
)
@device_option
@choice_option(
    "--launcher",
    ["local", "slurm"],
    "local: in this process (or --jobs processes); slurm: one submitit job per cell.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cells run at once (local processes, or SLURM array parallelism).",
)
@click.option("--partition", help="SLURM partition (--launcher slurm).")
@click.option("--gpus", type=click.IntRange(min=0), default=1, show_default=True,
              help="GPUs per SLURM job.")  # fmt: skip
@click.option("--time", "time_min", type=click.IntRange(min=1), default=240, show_default=True,
              help="Time limit per SLURM job, minutes.")  # fmt: skip
@click.option("--mem", type=click.FloatRange(min=0), help="Memory per SLURM job, GB.")
@click.option("--cpus", type=click.IntRange(min=1), help="CPUs per SLURM job.")
def command(
    name: str,
    recipes: tuple[str, ...],
    overrides: tuple[str, ...],
    generators: str | None,
    out: Path | None,
    cache_dir: Path | None,
    scores: tuple[str, ...],
    abstain_on: str | None,
    plots: bool,
    debias: tuple[str, ...],
    force: bool,
    device: str,
    launcher: str,
    jobs: int,
    partition: str | None,
    gpus: int,
    time_min: int,
    mem: float | None,
    cpus: int | None,
) -> None:
    """Run the GenImage protocol NAME for each --recipe and write one table.

    \b
    sdv4   train on sdv4 (SD1.4), test on all eight: GenImage Table 3, with the published
           ResNet-50 and Swin-T rows beside ours
    cross  train on each generator, test on each: the 8 x 8 matrix
    loo    leave one out: train on seven, test on the eighth, for each

    Every cell is an ordinary run under OUT/cells/<recipe>/<cell>/ (evaluate or predict with
    it as with any run). OUT gets protocol.json (each cell's run, metrics and summary, and the
    table), table.md, table.tex, table.csv (accuracies in [0, 1], one column per generator)
    and heatmap.png. Stopping and rerunning with the same --out finishes the remaining cells.

    \b
    Examples:
      bnnkit protocol sdv4 --recipe quickstart --set data.root=data/synth
      bnnkit protocol cross --recipe quickstart --set 'train.backbone="frozen"' --jobs 2
      bnnkit protocol sdv4 --recipe genimage_sdv4_map --recipe genimage_sdv4_bbb \\
          --set data.root=/data/genimage --launcher slurm --partition gpu --gpus 1
    """
    from rich.table import Table

    from bnnkit.api import run_protocol
    from bnnkit.report.protocol import protocol_table
    from bnnkit.report.tables import render_rich

    shown = console()
    gens = [g for g in generators.split(",") if g.strip()] if generators else None
    slurm = {"partition": partition, "gpus": gpus, "time": time_min, "mem": mem, "cpus": cpus}

    def on_cell(cell, info) -> None:
        seconds = f" in {info['seconds']:.1f} s" if "seconds" in info else ""
        shown.print(f"  {cell.block} {cell.key}: {info['status']}{seconds}")

    from bnnkit.engine.protocol.cells import new_protocol_dir

    folder = out or new_protocol_dir(name)
    shown.print(f"[bold]bnnkit protocol[/] {name}: {', '.join(recipes)}")
    shown.print(f"out:    {folder}  (rerun with --out {folder} to finish an interrupted run)")
    score = scores[0] if scores else "mutual_info"
    result = run_protocol(
        name, list(recipes), list(overrides), out=folder, generators=gens, cache_dir=cache_dir,
        score=score, scores=list(scores) or None, device=device, plots=plots,
        abstain_on=abstain_on or DEFAULT_ABSTAIN_SCORE, launcher=launcher, jobs=jobs,
        slurm=slurm, on_cell=on_cell, force=force, debias=list(debias),
    )  # fmt: skip
    # sdv4: one table, a row per recipe; cross, loo: one per recipe (each beside its controlled)
    blocks = [(result.rows, result.controlled)]
    if name != "sdv4":
        names = list(dict.fromkeys(r["block"] for r in result.rows))
        blocks = [([r for r in rs if r["block"] == b] for rs in (result.rows, result.controlled))
                  for b in names]  # fmt: skip
    rec = result.record
    for rows, controlled in (list(b) for b in blocks):
        title = f"bnnkit protocol {name}" + ("" if name == "sdv4" else f": {rows[0]['block']}")
        controls = "+".join(rec.get("debias", []))
        tables = [(rows, title)] if not controlled else [
            (rows, f"{title}, raw data"), (controlled, f"{title}, {controls} (controlled)")
        ]  # fmt: skip
        shown_tables = [render_rich(protocol_table(
            r, rec["generators"], protocol=name, score=rec["score"],
            abstain_on=rec["abstain_on"], title=t,
        )) for r, t in tables]  # fmt: skip
        grid = Table.grid(padding=(0, 3))  # side by side
        grid.add_row(*shown_tables)
        print_table(shown, grid if controlled else shown_tables[0])
    shown.print(f"[green]done[/] in {result.record['seconds']:.1f} s")
    controlled = [result.out / p for p in rec.get("controlled", {}).get("files", {}).values()]
    for path in [*result.files.values(), *controlled]:
        shown.print(f"  {path}")
