"""The open-set attribution table of a generator-labelled run (``data.labels = "generator"``):
the confusion matrix of the seen generators' fakes (true generator -> predicted class, real
first), the attribution accuracy in the title and, per held-out generator, the training
generator its fakes are most often attributed to. Rendered by :mod:`bnnkit.report.tables`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bnnkit.report.tables import Column, Label, Table, fmt_value

__all__ = ["attribution_table"]


def attribution_table(m: Mapping[str, Any]) -> Table | None:
    """The table of ``metrics["attribution"]``, or None when the run has no attribution."""
    a = m.get("attribution")
    if not a:
        return None
    conf = a["confusion"]
    pairs = zip(conf["rows"], conf["counts"], strict=True)
    rows: list[tuple[Any, ...]] = [(name, sum(counts), counts) for name, counts in pairs]
    unseen = a.get("unseen") or {}
    columns = [
        Column("true generator", lambda r: r[0], short="true", left=True),
        Column("n", lambda r: r[1]),
        *(Column(f"→ {c}", lambda r, i=i: r[2][i], short=c) for i, c in enumerate(conf["columns"])),
    ]
    notes = "; ".join(
        f"{name}: most often {u['most_often']} (mean top generator p "
        f"{fmt_value(u['mean_max_generator_prob'])})"
        for name, u in unseen.items()
    )
    return Table(
        columns,
        [(Label(r[0]), *r[1:]) for r in rows],
        title=f"generator attribution (seen fakes, accuracy {fmt_value(a['accuracy'])})",
        caption="rows: the seen generators' fakes; columns: the most likely class (real first)."
        + (f" Unseen generators: {notes}." if notes else ""),
    )
