"""The table of ``bnnkit compare``: one row per evaluated run (rows from
:func:`bnnkit.cli.compare.run_row`), rendered like the evaluation's tables
(:mod:`bnnkit.report.tables`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bnnkit.report.tables import RICH_DASH, Column, Table

__all__ = ["COMPARE_CAPTION", "COMPARE_COLUMNS", "compare_table"]

#: (key in a row, header, digits): the columns of ``bnnkit compare``, in order.
COMPARE_COLUMNS: list[tuple[str, str, int]] = [
    ("run", "run", 0),
    ("method", "method", 0),
    ("backbone", "backbone", 0),
    ("samples", "K", 0),
    ("id_accuracy", "ID acc", 3),
    ("nll", "NLL", 3),
    ("ece", "ECE", 3),
    ("unseen_accuracy", "unseen acc", 3),
    ("epistemic_auroc", "epist. OOD AUROC", 3),
    ("abstain_score", "abstain on", 0),
    ("abstain_auroc", "its OOD AUROC", 3),
    ("caught_rate", "unseen caught", 1),
    ("train_seconds", "train s", 1),
    ("predict_ms_per_image", "predict ms/img", 2),
]
COMPARE_CAPTION = (
    "ID = generators seen in training (val split). Unseen acc and epistemic OOD AUROC (unseen "
    "fakes vs seen-generator images) are means over the unseen generators. Unseen caught: the "
    "fraction of the unseen generators' errors the run's abstention threshold (on the score "
    "'abstain on', whose mean OOD AUROC is 'its OOD AUROC') catches. Predict time per image = "
    "backbone + K posterior samples, from `bnnkit evaluate`."
)


def compare_table(
    rows: list[Mapping[str, Any]], title: str | None = None, drop: Sequence[str] = ()
) -> Table:
    """The comparison of runs; ``drop``: keys of columns left out (e.g. a value every run
    shares, which the terminal title states instead)."""

    def column(key: str, header: str, digits: int) -> Column:
        get = lambda r, k=key: r.get(k)  # noqa: E731
        if key == "run":
            fold = {"no_wrap": False, "overflow": "fold", "min_width": 12}
            return Column(header, get, digits, left=True, rich=fold)
        if key in ("method", "backbone", "abstain_score"):
            return Column(header, get, digits, left=True, short=header.replace(" ", "\n", 1))
        if key.endswith("_rate"):  # a percentage, headed by its last word in the terminal
            return Column(header, get, digits, kind="pct", short=header.split()[-1])
        return Column(header, get, digits, short=header.replace(" ", "\n", 1))

    columns = [column(*c) for c in COMPARE_COLUMNS if c[0] not in drop]
    return Table(columns, list(rows), title=title, caption=COMPARE_CAPTION, dash=RICH_DASH)
