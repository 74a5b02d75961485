"""Run directories: ``runs/<recipe>-<timestamp>/``, created atomically so two trainings started at
the same second never share one."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from bnnkit.errors import UsageError

CHECKPOINT_META = "checkpoint.json"


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


def is_run_dir(path: Path) -> bool:
    return (path / CHECKPOINT_META).is_file() and (path / "recipe.toml").is_file()


def latest_run(runs_root: str | Path = "runs") -> Path:
    root = Path(runs_root)
    runs = [p for p in root.iterdir() if p.is_dir() and is_run_dir(p)] if root.is_dir() else []
    if not runs:
        raise UsageError(
            f"no finished run under '{root}/'",
            hint="train one first (`bnnkit train recipes/quickstart.toml`) or pass RUN explicitly",
        )
    return max(runs, key=lambda p: (os.stat(p / CHECKPOINT_META).st_mtime, p.name))


def resolve_run(run: str | Path | None, runs_root: str | Path = "runs") -> Path:
    if run is None:
        return latest_run(runs_root)
    path = Path(run)
    if not path.is_dir():
        raise UsageError(f"run directory '{run}' does not exist")
    if not is_run_dir(path):
        raise UsageError(
            f"'{run}' is not a finished bnnkit run (no {CHECKPOINT_META} / recipe.toml)",
            hint="a run directory is made by `bnnkit train`",
        )
    return path
