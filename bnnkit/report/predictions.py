"""``RUN/predictions.csv``: per image and condition, p(fake), the uncertainty parts (nats) and the
value of every score the evaluation computed (one column per score, named by the score; a name
that is already a column gets the prefix ``score_``), so any table of the evaluation can be
recomputed."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bnnkit.metrics.records import UNCERTAINTY_KEYS, Predictions

__all__ = ["HEADER", "predictions_csv", "score_columns"]

HEADER = ["condition", "generator", "seen", "label", "path", "p_fake", *UNCERTAINTY_KEYS]


def _relative(path: Path, root: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return os.path.relpath(path, root).replace(os.sep, "/")


def score_columns(names: Sequence[str]) -> list[str]:
    """The CSV column of each score name (``score_<name>`` where the name is a fixed column)."""
    return [f"score_{n}" if n in HEADER else n for n in names]


def predictions_csv(
    conditions: Mapping[str, Predictions],
    paths: Sequence[Path],
    generators: Sequence[str],
    n_seen: int,
    root: str,
) -> str:
    """The CSV text; ``paths[i]`` is the file of dataset index ``i``, written relative to
    ``root`` (the data root)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(next(iter(conditions.values())).scores) if conditions else []
    writer.writerow(HEADER + score_columns(names))
    for cond, data in conditions.items():
        for row in range(len(data)):
            gi = int(data.generators[row])
            writer.writerow(
                [
                    cond,
                    generators[gi],
                    int(gi < n_seen),
                    int(data.labels[row]),
                    _relative(paths[int(data.indices[row])], root),
                    # + 0.0: a negative zero is written as 0
                    *(
                        f"{float(getattr(data, k)[row]) + 0.0:.9g}"
                        for k in ("p_fake", *UNCERTAINTY_KEYS)
                    ),
                    *(f"{float(data.scores[n][row]) + 0.0:.17g}" for n in names),
                ]
            )
    return buf.getvalue()
