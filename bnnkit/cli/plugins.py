"""``bnnkit plugins``: what is installed, from which package, and what failed to load."""

from __future__ import annotations

import click

from bnnkit.cli._common import console, print_json, print_table


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--kind",
    type=click.Choice(["frontend", "backbone", "attention", "head", "method", "score"]),
    help="Show only one kind.",
)
def command(as_json: bool, kind: str | None) -> None:
    """List every frontend, backbone, attention block, head, inference method and OOD score,
    with the package (and version) that provides it; a score also shows where its algorithm
    comes from and what it is fitted on (train images, seen validation images, or nothing).
    Plugins that failed to load are listed as broken with their error; the rest of bnnkit
    keeps working.

    With --kind, each plugin's options follow: type (with its range or choices), default
    and help, as the plugin declares them.

    \b
    Examples:
      bnnkit plugins
      bnnkit plugins --kind frontend
      bnnkit plugins --kind method
      bnnkit plugins --kind method --json
      bnnkit plugins --kind score
    """
    from bnnkit.plugins import KINDS, get_registry

    registry = get_registry()
    kinds = [kind] if kind else list(KINDS)
    rows = []
    for k in kinds:
        for name in registry.names(k):
            e = registry.entries[k][name]
            row = {
                "kind": k,
                "name": name,
                "package": e.package,
                "version": e.version,
                "plugin": e.plugin,
                "summary": e.summary,
                "options": e.options(),
                "option_info": [o.to_dict() for o in e.option_info()],
            }
            if k == "method":
                row["heads"] = list(e.obj.heads)
            if k == "score":
                row["source"] = getattr(e.obj, "source", "")
                row["fit_on"] = getattr(e.obj, "fit_on", None)
                row["needs"] = list(getattr(e.obj, "needs", ()))
            rows.append(row)
    broken = [b.__dict__ for b in registry.broken]
    if as_json:
        print_json(
            {
                "plugins": rows,
                "broken": broken,
                "conflicts": registry.conflicts,
                "notes": registry.notes,
            }
        )
        return
    from rich.table import Table

    scores_only = kind == "score"  # their own columns: where the algorithm is from, its fit
    table = Table(title="bnnkit plugins", title_justify="left")
    extra = ("source", "fit") if scores_only else ()
    for col in ("kind", "name", "package", "summary", *extra, "options"):
        table.add_column(col)
    for r in rows:
        pkg = f"{r['package']} {r['version']}".strip()
        summary = r["summary"] + (
            f"  [dim](heads: {', '.join(r['heads'])})[/]" if "heads" in r else ""
        )
        cells = []
        if r["kind"] == "score":
            fit = f"on {r['fit_on']}" if r["fit_on"] else "none"
            cells = [r["source"] or "-", fit]
            if not scores_only:
                summary += f"  [dim]({cells[0]}; fit {fit})[/]"
        cells = cells if scores_only else []
        table.add_row(r["kind"], r["name"], pkg, summary, *cells, ", ".join(r["options"]) or "-")
    print_table(console(), table)
    if kind:  # one kind: every plugin's options in full
        _print_options(rows)
    for note in registry.notes:
        console().print(f"[dim]note:[/] {note}")
    for b in registry.broken:
        console().print(
            f"[bold red]broken:[/] plugin '{b.plugin}' from {b.package} {b.version}: {b.error}"
        )
    for c in registry.conflicts:
        console().print(f"[yellow]conflict:[/] {c}")


def _print_options(rows: list[dict]) -> None:
    from rich.table import Table

    for r in rows:
        if not r["option_info"]:
            continue
        table = Table(title=f"{r['kind']} '{r['name']}' options", title_justify="left")
        for col in ("option", "type", "default", "help"):
            table.add_column(col)
        for o in r["option_info"]:
            table.add_row(o["name"], o["type"], repr(o["default"]), o["help"])
        print_table(console(), table)
