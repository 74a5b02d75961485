"""``bnnkit train``: one recipe -> one run directory."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, fmt, overrides_option, path_option
from bnnkit.run.dirs import DEFAULT_RUNS_ROOT


@click.command("train")
@click.argument("recipe", required=False)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    help="Continue the interrupted run in this directory from its last checkpoint.",
)
@overrides_option("KEY=VALUE", "Override a recipe key; VALUE is parsed as TOML (repeatable).")
@path_option("--runs-dir", DEFAULT_RUNS_ROOT, "Where run directories are created.")
@path_option("--cache-dir", ".bnnkit-cache", 'Feature cache for train.backbone = "frozen".')
@device_option
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def command(
    recipe: str | None,
    resume: Path | None,
    overrides: tuple[str, ...],
    runs_dir: Path,
    cache_dir: Path,
    device: str,
    quiet: bool,
) -> None:
    """Train the detector described by RECIPE (a TOML file or a bundled recipe's name).

    Writes runs/<recipe>-<timestamp>/ with the resolved recipe.toml, a checkpoint after every
    epoch (safetensors + JSON), history.csv and env.json. The run directory alone is enough to
    evaluate, predict and resume. Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a
    checkpoint and prints the command that resumes; a killed run resumes from its last epoch.

    \b
    Examples:
      bnnkit train recipes/quickstart.toml
      bnnkit train recipes/resnet50_bbb.toml --set data.root=/data/genimage --set train.epochs=3
      bnnkit train resnet50_bbb --set model.backbone.name=test_resnet \\
          --set model.backbone.pretrained=false --set data.image_size=64
      bnnkit train --resume runs/resnet50_bbb-20261121-101500
      torchrun --nproc-per-node 4 -m bnnkit train resnet50_bbb   # one GPU per rank
    """
    from rich.console import Console

    from bnnkit.api import train
    from bnnkit.run import RunLayout

    shown, main_rank = console(), [True]

    def header(run_dir, r, note, info) -> None:
        main_rank[0] = info.is_main  # only rank 0 prints under torchrun
        out = shown if info.is_main else Console(quiet=True)
        out.print(
            f"[bold]bnnkit train[/] {r.name}: {r.model.backbone.name} + "
            f"{r.model.attention.name} attention + {r.inference.name} ({r.train.backbone} backbone)"
        )
        out.print(f"device: {note}")
        out.print(f"run:    {run_dir}" + ("  (resuming)" if resume else ""))
        _data_notes(out, r.data)

    run = train(
        recipe, list(overrides), resume=resume, runs_dir=runs_dir, cache_dir=cache_dir,
        device=device, console=None if quiet else shown, on_start=header,
    )  # fmt: skip
    if not main_rank[0]:
        return
    out, result, run_dir = shown, run.result, run.path
    if result.resumed_from:
        out.print(f"resumed from {result.resumed_from}")
    out.print(f"[green]done[/] in {result.seconds:.1f} s: {_summary(result.history)}")
    if result.broken:
        out.print(
            f"[yellow]{len(result.broken)} unreadable file(s) skipped[/] "
            f"(listed in {RunLayout(run_dir).broken})"
        )
    out.print(f"next:   bnnkit evaluate {run_dir}")


def _data_notes(out, data) -> None:
    """The data's layout and generators (and a manifest's skipped rows); a data problem is left
    for training to report."""
    from bnnkit.data.layouts import data_notes
    from bnnkit.errors import UsageError

    try:
        for note in data_notes(data.root, data.layout):
            out.print(note, markup=False)
    except UsageError:
        pass


def _summary(history: list) -> str:
    """The numbers of the last line: the last epoch's, or a whole-detector ensemble's members
    (train accuracy at each one's last epoch) and the ensemble's validation."""
    from bnnkit.report.history import member_history

    members = member_history(history)
    if members is None:
        last = history[-1] if history else {}
        return (
            f"train acc {fmt(last.get('train_acc'))}, val acc {fmt(last.get('val_acc'))}, "
            f"val NLL {fmt(last.get('val_nll'))}"
        )
    ens = members.ensemble or {}
    accs = ", ".join(fmt(v) for v in members.last("train_acc"))
    return (
        f"{len(members.members)} member detectors, train acc {accs}; ensemble val acc "
        f"{fmt(ens.get('val_acc'))}, val NLL {fmt(ens.get('val_nll'))}"
    )
