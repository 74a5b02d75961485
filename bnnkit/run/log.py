"""The training log of a run: one row per (phase, epoch) in ``history.csv`` and, when
``train.log = ["tensorboard"]``, the same numbers as TensorBoard scalars (``<phase>/<key>`` at
step ``epoch``) under ``tensorboard/``.

One interface for both: :meth:`TrainingLog.append` adds an epoch's row, :meth:`TrainingLog.
complete_last` adds values to the latest row (the trainer validates the last epoch only after
the method's post-training step, so the log shows the posterior that is saved). Only the process
that owns the run directory (rank 0) writes; the others keep the rows in memory.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from bnnkit.errors import UsageError
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import RunLayout

#: the columns of ``history.csv``, in order
HISTORY_FIELDS = [
    "phase", "epoch", "loss", "nll", "kl", "train_acc", "val_acc", "val_nll", "seconds",
]  # fmt: skip


def format_history(rows: list[dict[str, Any]]) -> str:
    """``history.csv``'s text for ``rows`` (floats to 6 significant digits)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=HISTORY_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


class TrainingLog:
    """``history.csv`` and TensorBoard behind one interface.

    ``rows`` are the rows already logged (a resumed run's history, from its checkpoint);
    ``writes`` is False on ranks other than 0; ``tensorboard`` opens a ``SummaryWriter`` (the
    ``tensorboard`` package must be installed: a clear :class:`UsageError` otherwise).
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        rows: list[dict[str, Any]] | None = None,
        writes: bool = True,
        tensorboard: bool = False,
    ) -> None:
        self.layout = RunLayout(run_dir)
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.writes = writes
        self._writer = self._tensorboard() if tensorboard and writes else None

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError(
                'train.log = ["tensorboard"] needs the tensorboard package',
                hint="pip install 'bnnkit[tensorboard]'  (or: pip install tensorboard)",
            ) from None
        return SummaryWriter(log_dir=str(self.layout.tensorboard))

    @property
    def last(self) -> dict[str, Any] | None:
        return self.rows[-1] if self.rows else None

    def append(self, row: dict[str, Any]) -> None:
        """Log one epoch: ``row`` has ``phase``, ``epoch`` and numbers named in HISTORY_FIELDS."""
        self.rows.append(row)
        self._emit(row, row)

    def complete_last(self, values: dict[str, Any]) -> None:
        """Add ``values`` (e.g. ``val_acc``, ``val_nll``) to the latest row and log them."""
        if not self.rows:
            return
        self.rows[-1].update(values)
        self._emit(self.rows[-1], values)

    def _emit(self, row: dict[str, Any], values: dict[str, Any]) -> None:
        if not self.writes:
            return
        atomic_write_text(self.layout.history, format_history(self.rows))
        if self._writer is not None:
            for key, value in values.items():
                if key not in ("phase", "epoch"):
                    self._writer.add_scalar(f"{row['phase']}/{key}", value, row["epoch"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
