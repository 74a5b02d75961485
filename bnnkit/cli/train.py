"""``bnnkit train``: one recipe -> one run directory."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, fmt


@click.command("train")
@click.argument("recipe")
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
    recipe: str,
    overrides: tuple[str, ...],
    runs_dir: Path,
    cache_dir: Path,
    device: str,
    quiet: bool,
) -> None:
    """Train the detector described by RECIPE (a TOML file or a bundled recipe's name).

    Writes runs/<recipe>-<timestamp>/ with the resolved recipe.toml, a checkpoint after every
    epoch (safetensors + JSON), history.csv and env.json. The run directory alone is enough to
    evaluate and predict.

    \b
    Examples:
      bnnkit train recipes/quickstart.toml
      bnnkit train recipes/resnet50_bbb.toml --set data.root=/data/genimage --set train.epochs=3
      bnnkit train resnet50_bbb --set model.backbone.name=test_resnet \\
          --set model.backbone.pretrained=false --set data.image_size=64
    """
    from bnnkit.engine.device import select_device
    from bnnkit.engine.runs import create_run_dir
    from bnnkit.engine.trainer import Trainer
    from bnnkit.recipe import load_recipe

    r = load_recipe(recipe, list(overrides))
    dev, note = select_device(device if device != "auto" else r.train.device)
    out = console()
    run_dir = create_run_dir(runs_dir, r.name)
    out.print(
        f"[bold]bnnkit train[/] {r.name}: {r.model.backbone.name} + {r.model.attention.name} "
        f"attention + {r.inference.name} ({r.train.backbone} backbone)"
    )
    out.print(f"device: {note}")
    out.print(f"run:    {run_dir}")
    result = Trainer(
        r, run_dir, dev, note, console=None if quiet else out, cache_dir=cache_dir
    ).run()
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
