"""The epoch loop of one phase: batches -> loss -> backward -> (gradient averaging) -> clip ->
step, per-epoch sums, the training log row, a checkpoint after every epoch, and a clean stop
(checkpoint mid-epoch) on SIGINT/SIGTERM."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor

from bnnkit.engine.device import Acceleration
from bnnkit.engine.train.distributed import DistInfo, sum_across
from bnnkit.engine.train.signals import StopSignals
from bnnkit.engine.train.state import SUM_KEYS, Position, epoch_stats
from bnnkit.errors import BnnkitError
from bnnkit.methods.base import InferenceMethod, LossParts
from bnnkit.run.log import TrainingLog

#: ``loss(inputs, targets, indices) -> LossParts``: one step's forward (through DDP or not)
StepLoss = Callable[[Tensor, Tensor, Tensor], LossParts]


@dataclass
class PhaseRun:
    """One phase, ready to run: where its batches come from and how a step is computed."""

    phase: str
    epochs: int
    steps_per_epoch: int
    #: ``batches(epoch, skip)``: this rank's batches of ``epoch``, the first ``skip`` left out
    batches: Callable[[int, int], Iterator[tuple[Tensor, Tensor, Tensor]]]
    loss: StepLoss
    #: gets ``after_step``/``after_epoch`` and decides whether ``train.grad_clip`` applies
    learner: InferenceMethod
    optimizer: torch.optim.Optimizer
    #: averages the optimiser's gradients over ranks after backward (a no-op under DDP)
    reduce_gradients: Callable[[list[Tensor]], None]
    #: the epoch's validation metrics (``val_acc``, ``val_nll``); rank 0 only
    validate: Callable[[], dict[str, float]]
    train_body: bool
    #: the last epoch is not validated here: the trainer validates after the method's
    #: post-training step (the run's last phase), so the log shows the posterior that is saved
    defer_last_validation: bool = False


@dataclass
class EpochLoop:
    """Runs phases' epochs; ``step`` counts optimiser steps over the whole run."""

    device: torch.device
    accel: Acceleration
    dist: DistInfo
    grad_clip: float
    detector: Any
    log: TrainingLog
    stop: StopSignals
    run_dir: Path
    #: ``save(optimizer, position)``: checkpoint the run at ``position``
    save: Callable[[torch.optim.Optimizer, Position], None]
    step: int = 0

    def run(self, p: PhaseRun, position: Position, progress: Progress) -> None:
        """Epochs ``position.epoch .. p.epochs`` of phase ``p`` (resuming mid-epoch)."""
        # every parameter the optimiser updates (methods may add their own, e.g. ensemble members)
        params = [q for group in p.optimizer.param_groups for q in group["params"]]
        for epoch in range(position.epoch, p.epochs + 1):
            t_epoch = time.perf_counter()
            here = position.epoch == epoch
            skip = position.step_in_epoch if here else 0
            sums = position.sums if here else dict.fromkeys(SUM_KEYS, 0.0)
            task = progress.add_task(
                f"{p.phase} {epoch}/{p.epochs}", total=p.steps_per_epoch, completed=skip, stats=""
            )
            self.detector.train()
            if not p.train_body:
                self.detector.backbone.eval()
                self.detector.attention.eval()
            done = skip
            for inputs, y, idx in p.batches(epoch, skip):
                y = y.to(self.device, non_blocking=True)
                parts = self._step(p, params, inputs, y, idx, f"epoch {epoch}, step {done + 1}")
                done += 1
                n = y.shape[0]
                sums["loss"] += parts.loss.item() * n
                sums["nll"] += float(parts.nll) * n
                sums["kl"] += float(parts.kl) * n
                sums["correct"] += (parts.logits.argmax(-1) == y).sum().item()
                sums["n"] += n
                progress.update(task, advance=1, stats=epoch_stats(sums))
                if self.stop.should_stop():
                    self.save(p.optimizer, Position(p.phase, epoch, done, sums))
                    raise self.stop.interrupted(self.run_dir, p.phase, epoch, done)
            p.learner.after_epoch(epoch)
            self._end_epoch(p, epoch, sums, t_epoch, task, progress)
            self.save(p.optimizer, Position(p.phase, epoch + 1))
            if self.stop.should_stop():
                raise self.stop.interrupted(self.run_dir, p.phase, epoch + 1, 0)

    def _step(
        self, p: PhaseRun, params: list[Tensor], inputs: Tensor, y: Tensor, idx: Tensor, at: str
    ) -> LossParts:
        with self.accel.autocast():
            parts = p.loss(inputs, y, idx.to(self.device))
        if not torch.isfinite(parts.loss):
            raise BnnkitError(
                f"loss became {parts.loss.item()} in {p.phase} {at}; training stopped. The last "
                f"good checkpoint is in {self.run_dir}",
                hint="lower train.lr or set train.grad_clip (e.g. 1.0)",
            )
        scaler = self.accel.scaler
        p.optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts.loss).backward()
        scaler.unscale_(p.optimizer)
        p.reduce_gradients(params)
        if self.grad_clip > 0 and p.learner.clip_gradients:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        scaler.step(p.optimizer)
        scaler.update()
        self.step += 1
        p.learner.after_step(self.step)
        return parts

    def _end_epoch(
        self, p: PhaseRun, epoch: int, sums: dict[str, float], t0: float, task: Any, progress: Any
    ) -> None:
        sums = sum_across(sums, self.dist, self.device)
        m = max(sums["n"], 1)
        row: dict[str, Any] = {
            "phase": p.phase,
            "epoch": epoch,
            "loss": sums["loss"] / m,
            "nll": sums["nll"] / m,
            "kl": sums["kl"] / m,
            "train_acc": sums["correct"] / m,
        }
        last = p.defer_last_validation and epoch == p.epochs
        row.update(p.validate() if self.dist.is_main and not last else {})
        row["seconds"] = time.perf_counter() - t0
        self.log.append(row)
        if self.dist.is_main and "val_acc" in row:
            progress.update(task, stats=f"{epoch_stats(sums)} val_acc {row['val_acc']:.3f}")
