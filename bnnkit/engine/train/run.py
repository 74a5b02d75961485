"""Train a recipe into a run directory, or resume one: what :func:`bnnkit.api.train` and each
protocol cell (:func:`bnnkit.engine.protocol.cells.run_cell`) call, so both train the same way."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnnkit.engine.build import ensemble_size
from bnnkit.engine.device import resolve_device
from bnnkit.engine.train.distributed import broadcast, init_distributed, shutdown
from bnnkit.engine.train.members import EnsembleTrainer, member_of
from bnnkit.engine.train.signals import TrainingInterrupted
from bnnkit.engine.train.trainer import Trainer
from bnnkit.errors import BnnkitError, UsageError
from bnnkit.recipe import load_recipe, load_run_recipe
from bnnkit.run.checkpoint import has_checkpoint
from bnnkit.run.dirs import create_run_dir
from bnnkit.run.layout import RECIPE_FILE, RunLayout


def train_run(
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    resume: str | Path | None = None,
    runs_dir: str | Path,
    cache_dir: str | Path,
    device: Any = "auto",
    console: Any = None,
    on_start: Any = None,
) -> tuple[Path, Any]:
    """Train ``recipe`` with ``overrides`` (or continue the run ``resume``); return the run
    directory and the trainer's summary. The options are :func:`bnnkit.api.train`'s."""
    if resume is not None:
        if recipe is not None or overrides:
            raise UsageError("--resume takes the run's own recipe: give no RECIPE and no --set")
        resume = Path(resume)
        if not RunLayout(resume).recipe.is_file():
            raise UsageError(f"{resume} is not a bnnkit run directory (no {RECIPE_FILE})")
        ensemble = member_of(resume)
        if ensemble is not None:  # alone it would lose the member's bootstrap resample
            raise UsageError(
                f"{resume} is a member of the whole-detector ensemble {ensemble}",
                hint=f"resume the ensemble: bnnkit train --resume {ensemble}",
            )
        r = load_run_recipe(RunLayout(resume).recipe)
    elif recipe is None:
        raise UsageError(
            "give a RECIPE (file or bundled name) or --resume RUN", hint="bnnkit recipes list"
        )
    else:
        r = load_recipe(recipe, list(overrides))
    dev, note = resolve_device(device, r.train.device)
    info = init_distributed(dev)
    run_dir = resume
    if run_dir is None:
        run_dir = broadcast(create_run_dir(runs_dir, r.name) if info.is_main else None, info)
    if info.enabled:
        note += f"; rank {info.rank} of {info.world}"
    if on_start is not None:
        on_start(run_dir, r, note, info)
    # a whole-detector ensemble trains its M member runs one after another
    trainer = EnsembleTrainer if ensemble_size(r) else Trainer
    try:
        result = trainer(
            r, run_dir, dev, note, console=console if info.is_main else None,
            cache_dir=Path(cache_dir), resume=resume is not None, dist=info,
        ).run()  # fmt: skip
    except BnnkitError as exc:
        # a problem found while building (a bad option, hub weights that cannot be fetched):
        # leave no run directory behind that holds nothing to resume
        fresh = resume is None and info.is_main and not isinstance(exc, TrainingInterrupted)
        if fresh and not _has_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        shutdown(info)
    return Path(run_dir), result


def _has_checkpoints(run_dir: Path) -> bool:
    """Whether a run (or any member of a whole-detector ensemble) saved a checkpoint."""
    members = RunLayout(run_dir).members
    return has_checkpoint(run_dir) or (
        members.is_dir() and any(has_checkpoint(m) for m in members.iterdir())
    )
