"""Run directories: ``runs/<recipe>-<timestamp>/``, created atomically so two trainings started at
the same second never share one; a run is *finished* (evaluable) once it has its recipe and a
checkpoint."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from bnnkit.errors import UsageError
from bnnkit.run.layout import CHECKPOINT_FILE, MEMBERS_FILE, RECIPE_FILE

__all__ = ["DEFAULT_RUNS_ROOT", "create_run_dir", "is_run_dir", "latest_run", "resolve_run"]

DEFAULT_RUNS_ROOT = "runs"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def create_run_dir(runs_root: str | Path, recipe_name: str) -> Path:
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{_slug(recipe_name)}-{stamp}"
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}-{i}")
        try:
            path.mkdir()  # atomic: fails if another process got there first
        except FileExistsError:
            continue
        return path
    raise UsageError(f"could not create a run directory under {root}")


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CHECKPOINT_FILE).is_file() and (path / RECIPE_FILE).is_file()


def latest_run(runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """The finished run under ``runs_root`` whose checkpoint was written last."""
    root = Path(runs_root)
    runs = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise UsageError(
            f"no finished run under '{root}/'",
            hint="train one first (`bnnkit train recipes/quickstart.toml`) or pass RUN explicitly",
        )
    return max(runs, key=lambda p: (os.stat(p / CHECKPOINT_FILE).st_mtime, p.name))


def resolve_run(run: str | Path | None, runs_root: str | Path = DEFAULT_RUNS_ROOT) -> Path:
    """``run`` checked to be a finished run directory, or the latest one when ``None``."""
    if run is None:
        return latest_run(runs_root)
    path = Path(run)
    if not path.is_dir():
        raise UsageError(f"run directory '{run}' does not exist")
    if not is_run_dir(path):
        if (path / MEMBERS_FILE).is_file():  # a whole-detector ensemble, members unfinished
            raise UsageError(
                f"'{run}' is a whole-detector ensemble whose members are not all trained yet "
                "(it has no checkpoint of its own until they are)",
                hint=f"finish it with: bnnkit train --resume {run}",
            )
        if (path / "config.json").is_file():  # a model repository, not written by bnnkit export
            raise UsageError(
                f"'{run}' has a config.json but is not a bnnkit run or export (no "
                f"{CHECKPOINT_FILE} / {RECIPE_FILE})",
                hint="bnnkit reads folders written by `bnnkit export` (or `bnnkit pull`)",
            )
        raise UsageError(
            f"'{run}' is not a finished bnnkit run (no {CHECKPOINT_FILE} / {RECIPE_FILE})",
            hint="a run directory is made by `bnnkit train` (a portable one by `bnnkit export`)",
        )
    return path
