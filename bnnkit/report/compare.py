"""The table of ``bnnkit compare``: one row per evaluated run (rows from
:func:`bnnkit.cli.compare.run_row`), rendered like the evaluation's tables
(:mod:`bnnkit.report.tables`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnnkit.report.benchmarks import BENCH_CAPTION, BENCHMARK_COLUMNS
from bnnkit.report.tables import RICH_DASH, Column, Marked, Table

__all__ = [
    "CACHED_MARK",
    "COMPARE_CAPTION",
    "COMPARE_COLUMNS",
    "TIMED_BACKBONE",
    "TIMED_CACHED",
    "compare_table",
    "protocol_cell",
    "row_names",
]

#: what a run's ``predict ms/img`` timed: the backbone and the K posterior samples, or (a
#: frozen run evaluated from its feature cache) the head's K samples only
TIMED_BACKBONE = "backbone + K posterior samples"
TIMED_CACHED = "head only (cached features)"
CACHED_MARK = "‡"

#: (key in a row, header, digits): the columns of ``bnnkit compare``, in order.
COMPARE_COLUMNS: list[tuple[str, str, int]] = [
    ("run", "run", 0),
    ("method", "method", 0),
    ("backbone", "backbone", 0),
    ("samples", "K", 0),
    ("unseen", "unseen", 0),
    ("id_accuracy", "ID acc", 3),
    ("id_real_accuracy", "ID R.Acc", 3),
    ("id_fake_accuracy", "ID F.Acc", 3),
    ("nll", "NLL", 3),
    ("ece", "ECE", 3),
    ("unseen_accuracy", "unseen acc", 3),
    ("unseen_fake_accuracy", "unseen F.Acc", 3),
    ("epistemic_auroc", "epist. OOD AUROC", 3),
    ("abstain_score", "abstain on", 0),
    ("abstain_auroc", "its OOD AUROC", 3),
    ("caught_rate", "unseen caught", 1),
    *BENCHMARK_COLUMNS,  # only when a run was evaluated with --data
    ("train_seconds", "train s", 1),
    ("predict_ms_per_image", "predict ms/img", 2),
]
COMPARE_CAPTION = (
    "ID = generators seen in training (val split). R.Acc / F.Acc: accuracy on reals / fakes. "
    "Unseen acc, unseen F.Acc and epistemic OOD AUROC (unseen fakes vs seen-generator images) "
    "are means over the unseen generators. Unseen caught: the "
    "fraction of the unseen generators' errors the run's abstention threshold (on the score "
    "'abstain on', whose mean OOD AUROC is 'its OOD AUROC') catches. Predict time per image = "
    "backbone + K posterior samples, from `bnnkit evaluate`."
)
CACHED_CAPTION = (
    f" {CACHED_MARK}: head only, from the feature cache of a frozen backbone (no backbone pass "
    "timed): not comparable with the other rows' predict time."
)


def protocol_cell(run_dir: Path) -> dict[str, Any] | None:
    """``{"protocol", "block", "key", "folder"}`` of the protocol cell a run belongs to
    (``OUT/cells/<block>/<key>/<run>``, named in ``OUT/protocol.json``), else None."""
    run_dir = Path(run_dir).resolve()
    folder = run_dir.parent
    if len(run_dir.parents) < 4 or folder.parent.parent.name != "cells":
        return None
    out = folder.parent.parent.parent
    try:
        record = json.loads((out / "protocol.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    for cell in record.get("cells") or []:
        if Path(cell.get("folder", "")).resolve() == folder:
            return {"protocol": record.get("protocol"), "block": cell["block"],
                    "key": cell["key"], "folder": str(out)}  # fmt: skip
    return {"protocol": record.get("protocol"), "block": folder.parent.name, "key": folder.name,
            "folder": str(out)}  # fmt: skip


def row_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each row's name: a protocol cell's ``<block>/<key>`` (its run's name too where two rows
    would share it), else the run's name."""

    def cell_name(r: Mapping[str, Any]) -> str | None:
        cell = r.get("cell")
        return f"{cell['block']}/{cell['key']}" if cell else None

    names = [cell_name(r) for r in rows]
    return [
        r["run"] if n is None else n if names.count(n) == 1 else f"{n}/{r['run']}"
        for n, r in zip(names, rows, strict=True)
    ]


def _predict_ms(row: Mapping[str, Any]) -> Any:
    value = row.get("predict_ms_per_image")
    return Marked(value, CACHED_MARK) if row.get("predict_timed") == TIMED_CACHED else value


def compare_table(
    rows: list[Mapping[str, Any]], title: str | None = None, drop: Sequence[str] = ()
) -> Table:
    """The comparison of runs; ``drop``: keys of columns left out (e.g. a value every run
    shares, which the terminal title states instead)."""

    def column(key: str, header: str, digits: int) -> Column:
        get = lambda r, k=key: r.get(k)  # noqa: E731
        if key == "predict_ms_per_image":
            return Column(header, _predict_ms, digits, short=header.replace(" ", "\n", 1))
        if key == "unseen":
            get = lambda r: ", ".join(r.get("unseen_generators") or ()) or "none"  # noqa: E731
            return Column(header, get, digits, left=True)
        if key == "run":
            fold = {"no_wrap": False, "overflow": "fold", "min_width": 12}
            return Column(header, get, digits, left=True, rich=fold)
        if key in ("method", "backbone", "abstain_score"):
            return Column(header, get, digits, left=True, short=header.replace(" ", "\n", 1))
        if key.endswith("_rate"):  # a percentage, headed by its last word in the terminal
            return Column(header, get, digits, kind="pct", short=header.split()[-1])
        return Column(header, get, digits, short=header.replace(" ", "\n", 1))

    if not any(r.get("bench_acc_mean") is not None for r in rows):
        drop = [*drop, *(c[0] for c in BENCHMARK_COLUMNS)]
    if not any(r.get("id_real_accuracy") is not None for r in rows):  # evaluated before them
        drop = [*drop, "id_real_accuracy", "id_fake_accuracy", "unseen_fake_accuracy"]
    columns = [column(*c) for c in COMPARE_COLUMNS if c[0] not in drop]
    caption = COMPARE_CAPTION + ("" if BENCHMARK_COLUMNS[0][0] in drop else BENCH_CAPTION)
    if any(r.get("predict_timed") == TIMED_CACHED for r in rows):
        caption += CACHED_CAPTION
    named = [{**r, "run": name} for r, name in zip(rows, row_names(rows), strict=True)]
    return Table(columns, named, title=title, caption=caption, dash=RICH_DASH)
