"""SIGINT/SIGTERM during training: finish the current step, checkpoint, stop with a message.

:class:`StopSignals` installs the handlers for the duration of a ``with`` block; a second signal
acts at once (the previous handlers are back). Under torchrun a signal seen by any rank stops
every rank at the same step.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

from bnnkit.engine.train.distributed import DistInfo
from bnnkit.errors import BnnkitError


class TrainingInterrupted(BnnkitError):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was saved."""


class StopSignals:
    """Records SIGINT/SIGTERM instead of dying; :meth:`should_stop` polls it (all ranks)."""

    def __init__(self, dist: DistInfo, device: torch.device) -> None:
        self.dist = dist
        self.device = device
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.signum = signum
            self._restore()  # a second signal acts at once

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (e.g. inside a notebook worker)
            self._previous.clear()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def should_stop(self) -> bool:
        """A signal seen by any rank stops every rank at the same step."""
        if not self.dist.enabled:
            return self.signum is not None
        flag = torch.tensor([float(self.signum or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())

    def interrupted(self, run_dir: Path, phase: str, epoch: int, step: int) -> TrainingInterrupted:
        """The error to raise once the checkpoint is saved; its exit code is 128 + signal."""
        signum = int(self.signum or signal.SIGINT)
        exc = TrainingInterrupted(
            f"{signal.Signals(signum).name}: stopped after {phase} epoch {epoch} step {step}; "
            f"checkpoint saved in {run_dir}",
            hint=f"resume with: bnnkit train --resume {run_dir}",
        )
        exc.exit_code = 128 + signum
        return exc
