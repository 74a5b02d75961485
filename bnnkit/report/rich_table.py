"""The terminal renderer of :class:`~bnnkit.report.tables.Table`: a compact rich table whose
numbers are always printed whole (at any terminal width, and in a pipe).

It imports nothing from :mod:`bnnkit.report.tables` (which calls it): the table's shown columns,
its cell formatter and its label type come as arguments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["render_rich"]


def _whole_table_class():
    """A rich Table that is never rendered narrower than its numbers: below that width (a
    narrow terminal, a pipe's 80 columns) it keeps the width at which every number column shows
    its widest value and every text column its longest word, and the terminal wraps the line.
    Rich would otherwise shrink every column evenly and truncate numbers (``100…``)."""
    from rich.measure import Measurement
    from rich.table import Table as RichTable

    class WholeTable(RichTable):
        def _floor(self, console, options) -> int:
            wide = options.update_width(max(options.max_width, 10_000))
            total = self._extra_width
            for column in self.columns:
                m = self._measure_column(console, wide, column)
                total += m.maximum if column.no_wrap else m.minimum
            return total

        def _widened(self, console, options):
            floor = self._floor(console, options)
            return options.update_width(floor) if options.max_width < floor else options

        def __rich_console__(self, console, options):
            yield from super().__rich_console__(console, self._widened(console, options))

        def __rich_measure__(self, console, options) -> Measurement:
            return super().__rich_measure__(console, self._widened(console, options))

    return WholeTable


def render_rich(table: Any, cols: Sequence[Any], cell: Callable[..., str], label: type):
    """A compact rich table (no side borders, one space between columns). Numbers are printed
    whole at any width: a number column is as wide as its widest value and never wraps; a text
    column (labels) wraps when the terminal is too narrow, and below the width of the numbers
    and the longest words the table keeps that width (the terminal wraps the lines).
    ``cols``: the columns shown in a terminal, ``cell(value, column, markdown)``: one formatted
    cell, ``label``: the row-label type (:class:`bnnkit.report.tables.Label`)."""
    from rich import box
    from rich.cells import cell_len

    out = _whole_table_class()(
        title=table.title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption=table.caption,
        caption_justify="left",
    )
    body: list[tuple[list[str], str | None]] = []
    for row in table.rows:
        cells, style = [], None
        for c in cols:
            value = c.get(row)
            if isinstance(value, label):
                text = value.short or value.text
                if value.strong:
                    style = "bold magenta" if value.unseen else "bold"
                elif value.unseen and value.star:
                    text = f"[bold magenta]{text}*[/]"
                cells.append(text)
            else:
                cells.append(cell(value, c, False))
        body.append((cells, style))
    for j, c in enumerate(cols):
        header = c.short or c.header
        if c.left:
            options = {"no_wrap": False, "overflow": "fold", **c.rich}
        else:  # a number column: its widest value, never wrapped nor cut
            widest = max([cell_len(r[0][j]) for r in body] + [1])
            options = {**c.rich, "no_wrap": True, "overflow": "fold"}
            options["min_width"] = max(widest, options.get("min_width") or 0)
            options.pop("max_width", None)
        out.add_column(header, justify="left" if c.left else "right", **options)
    for i, (cells, style) in enumerate(body):
        if i in table.sections:
            out.add_section()
        out.add_row(*cells, style=style)
    return out
