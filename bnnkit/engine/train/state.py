"""What a training run carries between steps and processes: its position (phase, epoch, batch),
the seeds and per-epoch data order, the result, and what gets printed and recorded about it."""

from __future__ import annotations

import platform
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from bnnkit._version import __version__
from bnnkit.engine.train.phases import PHASES
from bnnkit.plugins import get_registry
from bnnkit.recipe import Recipe

SUM_KEYS = ("loss", "nll", "kl", "correct", "n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, phase: str, epoch: int) -> Tensor:
    """The permutation of the training set for one epoch; independent of any RNG state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + PHASES.index(phase) * 10_007 + epoch)
    return torch.randperm(n, generator=g)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    broken: list[dict[str, str]] = field(default_factory=list)
    resumed_from: str | None = None


@dataclass
class Position:
    """Where training is: the phase, the epoch in progress (1-based) and batches done in it."""

    phase: str
    epoch: int = 1
    step_in_epoch: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SUM_KEYS, 0.0))


def progress_bar(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )


def environment(recipe: Recipe, device_note: str) -> dict[str, Any]:
    registry = get_registry()
    used = {
        "backbone": registry.get("backbone", recipe.model.backbone.name),
        "attention": registry.get("attention", recipe.model.attention.name),
        "head": registry.get("head", recipe.head_name(registry)),
        "method": registry.get("method", recipe.inference.name),
    }
    return {
        "bnnkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_note,
        "seed": recipe.seed,
        "plugins": {
            kind: {"name": e.name, "package": e.package, "version": e.version}
            for kind, e in used.items()
        },
    }


def epoch_stats(sums: dict[str, float]) -> str:
    m = max(sums["n"], 1)
    return (
        f"loss {sums['loss'] / m:.4f} nll {sums['nll'] / m:.4f} "
        f"kl {sums['kl'] / m:.3g} acc {sums['correct'] / m:.3f}"
    )
