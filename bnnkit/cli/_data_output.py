"""``bnnkit data check``'s tables: the inventory of a data root in any layout."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from bnnkit.cli._common import console
from bnnkit.data.inventory import Inventory


def render_inventory(inv: Inventory, root: Path, *, decoded: bool) -> None:
    """The layout found, the counts per generator, split and class, then what was left out
    (manifest rows by row number, unreadable files, non-image files)."""
    how = "detected" if inv.detected else "--layout"
    console().print(f"layout: {inv.layout} ({how})", markup=False)
    title = "GenImage check" if inv.layout == "genimage" else f"{inv.layout} check"
    table = Table(title=f"{title}: {root}", title_justify="left")
    table.add_column("generator")
    if inv.families:
        table.add_column("family")
    table.add_column("folder")
    for s in inv.splits:
        for c in inv.classes:
            table.add_column(f"{s}/{c}", justify="right")
    for g, folder in inv.generators.items():
        cells = [inv.counts[g][s][c].cell() if g in inv.counts else "0"
                 for s in inv.splits for c in inv.classes]  # fmt: skip
        family = [inv.families.get(g, "")] if inv.families else []
        where = folder.relative_to(root) if folder.is_relative_to(root) else folder.name
        table.add_row(g, *family, str(where), *cells)
    console().print(table)
    if inv.problems:
        console().print(
            f"[bold red]{len(inv.problems)} manifest row(s) left out[/] (skipped by "
            "train/evaluate):"
        )
        for p in inv.problems:
            console().print(f"  {p}", markup=False)
    if inv.missing:
        console().print(f"[yellow]missing generators:[/] {', '.join(inv.missing)}")
    if inv.broken:
        console().print(
            f"[bold red]{len(inv.broken)} unreadable file(s)[/] (skipped by train/evaluate):"
        )
        for b in inv.broken:
            console().print(f"  {b.path}: {b.reason}")
    elif decoded:
        console().print(f"all {inv.total} images decode.")
    if inv.skipped:
        parts = ", ".join(f"{n} {ext}" for ext, n in inv.skipped.items())
        console().print(f"skipped {sum(inv.skipped.values())} non-image file(s): {parts}")
