"""``bnnkit recipes``: list, show, validate and copy recipes."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console, print_json


@click.group("recipes")
def command() -> None:
    """Bundled recipes, and validation of your own.

    A recipe is TOML with sections [data], [model.backbone], [model.attention], [model.head],
    [inference], [train] and [eval]. Any key can be overridden on the command line with
    --set key.path=VALUE (VALUE parsed as TOML).
    """


def _first_comment(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


@command.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_(as_json: bool) -> None:
    """List bundled recipes with their one-line description."""
    from bnnkit.recipes_bundled import bundled

    items = {name: _first_comment(text) for name, text in sorted(bundled().items())}
    if as_json:
        print_json(items)
        return
    from rich.table import Table

    table = Table(
        title="bundled recipes (use the name or a path with `bnnkit train`)", title_justify="left"
    )
    table.add_column("name")
    table.add_column("what it runs")
    for name, desc in items.items():
        table.add_row(name, desc)
    console().print(table)


@command.command("show")
@click.argument("name")
def show(name: str) -> None:
    """Print a bundled recipe (or a recipe file) as TOML."""
    from bnnkit.recipes_bundled import resolve

    click.echo(resolve(name)[1], nl=False)


@command.command("validate")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--resolved", is_flag=True, help="Print the recipe with every default filled in.")
def validate(recipe: str, overrides: tuple[str, ...], resolved: bool) -> None:
    """Check RECIPE (file or bundled name): every problem is listed at once, with its key path
    and a suggestion. A valid recipe's plugins are then constructed (the backbone on the meta
    device, never fetching weights), so values only construction rejects are caught here too.
    Exit code 2 when there is any problem."""
    from bnnkit.engine.build import check_build
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import dump_recipe, load_recipe

    r = load_recipe(recipe, list(overrides))
    check_build(r, get_registry(), source=recipe)
    if resolved:
        click.echo(dump_recipe(r), nl=False)
    else:
        console().print(
            f"[green]ok[/]: {recipe} is a valid recipe ({r.inference.name} on "
            f"{r.model.backbone.name})"
        )


@command.command("copy")
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def copy(name: str, dest: Path, force: bool) -> None:
    """Copy bundled recipe NAME to DEST to edit it."""
    from bnnkit.errors import UsageError
    from bnnkit.recipes_bundled import resolve

    text = resolve(name)[1]
    if dest.is_dir():
        dest = dest / f"{name.removesuffix('.toml')}.toml"
    if dest.exists() and not force:
        raise UsageError(f"{dest} exists", hint="pass --force to overwrite")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")
    console().print(f"wrote {dest}")
