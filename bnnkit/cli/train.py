"""``bnnkit train``: one recipe -> one run directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, fmt


@click.command("train")
@click.argument("recipe", required=False)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    help="Continue the interrupted run in this directory from its last checkpoint.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key; VALUE is parsed as TOML (repeatable).",
)
@click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Where run directories are created.",
)
@click.option(
    "--cache-dir",
    default=".bnnkit-cache",
    show_default=True,
    type=click.Path(path_type=Path),
    help='Feature cache for train.backbone = "frozen".',
)
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

    from bnnkit.engine.device import select_device
    from bnnkit.engine.distributed import broadcast, init_distributed, shutdown
    from bnnkit.engine.runs import create_run_dir
    from bnnkit.engine.trainer import Trainer
    from bnnkit.errors import UsageError
    from bnnkit.recipe import load_recipe

    if resume is not None:
        if recipe is not None or overrides:
            raise UsageError("--resume takes the run's own recipe: give no RECIPE and no --set")
        if not (resume / "recipe.toml").is_file():
            raise UsageError(f"{resume} is not a bnnkit run directory (no recipe.toml)")
        r = load_recipe(resume / "recipe.toml")
        run_dir = resume
    elif recipe is None:
        raise UsageError(
            "give a RECIPE (file or bundled name) or --resume RUN", hint="bnnkit recipes list"
        )
    else:
        r = load_recipe(recipe, list(overrides))
        run_dir = None
    dev, note = select_device(device if device != "auto" else r.train.device)
    info = init_distributed(dev)
    out = console() if info.is_main else Console(quiet=True)
    if run_dir is None:
        run_dir = broadcast(create_run_dir(runs_dir, r.name) if info.is_main else None, info)
    if info.enabled:
        note += f"; rank {info.rank} of {info.world}"
    out.print(
        f"[bold]bnnkit train[/] {r.name}: {r.model.backbone.name} + {r.model.attention.name} "
        f"attention + {r.inference.name} ({r.train.backbone} backbone)"
    )
    out.print(f"device: {note}")
    out.print(f"run:    {run_dir}" + ("  (resuming)" if resume else ""))
    try:
        result = Trainer(
            r, run_dir, dev, note, console=None if quiet or not info.is_main else out,
            cache_dir=cache_dir, resume=resume is not None, dist=info,
        ).run()  # fmt: skip
    except UsageError:
        # a configuration problem found while building: leave no empty run directory behind
        if resume is None and info.is_main and not (run_dir / "checkpoint.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        shutdown(info)
    if result.resumed_from:
        out.print(f"resumed from {result.resumed_from}")
    last = result.history[-1] if result.history else {}
    out.print(
        f"[green]done[/] in {result.seconds:.1f} s: train acc {fmt(last.get('train_acc'))}, "
        f"val acc {fmt(last.get('val_acc'))}, val NLL {fmt(last.get('val_nll'))}"
    )
    if result.broken:
        out.print(
            f"[yellow]{len(result.broken)} unreadable file(s) skipped[/] "
            f"(listed in {run_dir / 'broken_files.json'})"
        )
    out.print(f"next:   bnnkit evaluate {run_dir}")
