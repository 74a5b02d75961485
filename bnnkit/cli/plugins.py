"""``bnnkit plugins``: what is installed, from which package, and what failed to load."""

from __future__ import annotations

import click

from bnnkit.cli._common import console, print_json


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--kind",
    type=click.Choice(["backbone", "attention", "head", "method"]),
    help="Show only one kind.",
)
def command(as_json: bool, kind: str | None) -> None:
    """List every backbone, attention block, head and inference method, with the package
    (and version) that provides it. Plugins that failed to load are listed as broken with
    their error; the rest of bnnkit keeps working.

    \b
    Examples:
      bnnkit plugins
      bnnkit plugins --kind method --json
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
                "options": {o: v for o, v in e.options().items()},
            }
            if k == "method":
                row["heads"] = list(e.obj.heads)
            rows.append(row)
    broken = [b.__dict__ for b in registry.broken]
    if as_json:
        print_json({"plugins": rows, "broken": broken, "conflicts": registry.conflicts})
        return
    from rich.table import Table

    table = Table(title="bnnkit plugins", title_justify="left")
    for col in ("kind", "name", "package", "summary"):
        table.add_column(col)
    for r in rows:
        pkg = f"{r['package']} {r['version']}".strip()
        summary = r["summary"] + (
            f"  [dim](heads: {', '.join(r['heads'])})[/]" if "heads" in r else ""
        )
        table.add_row(r["kind"], r["name"], pkg, summary)
    console().print(table)
    for b in registry.broken:
        console().print(
            f"[bold red]broken:[/] plugin '{b.plugin}' from {b.package} {b.version}: {b.error}"
        )
    for c in registry.conflicts:
        console().print(f"[yellow]conflict:[/] {c}")
