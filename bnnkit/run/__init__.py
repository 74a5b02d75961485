"""The run directory: its file names (:mod:`~bnnkit.run.layout`), creating and finding runs
(:mod:`~bnnkit.run.dirs`), atomic writes (:mod:`~bnnkit.run.fileio`) and checkpoints
(:mod:`~bnnkit.run.checkpoint`).

A lower layer: nothing here imports :mod:`bnnkit.engine` or :mod:`bnnkit.cli`. The checkpoint
names are loaded on first use, so ``import bnnkit.run`` does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from bnnkit.run.dirs import DEFAULT_RUNS_ROOT, create_run_dir, is_run_dir, latest_run, resolve_run
from bnnkit.run.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_replace,
    temp_path,
)
from bnnkit.run.layout import (
    BROKEN_FILE,
    CHECKPOINT_FILE,
    ENV_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_GLOB,
    PLOT_FILES,
    PLOTS_DIR,
    PREDICTIONS_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    RUN_FILES,
    STATE_GLOB,
    TENSORBOARD_DIR,
    THRESHOLD_FILE,
    TIMING_FILE,
    RunLayout,
    model_file,
    state_file,
)

# bnnkit.run.checkpoint's public names (its __all__), imported on first use: it needs torch
_CHECKPOINT_NAMES = (
    "FORMAT_VERSION CheckpointSet CorruptCheckpoint disk_full_error find_checkpoint flatten "
    "has_checkpoint load_checkpoint model_path read_meta refuse_pickles save_checkpoint "
    "unflatten verify_safetensors warn_fallback"
)
_LAZY = {name: "bnnkit.run.checkpoint" for name in _CHECKPOINT_NAMES.split()}

__all__ = [
    "BROKEN_FILE",
    "CHECKPOINT_FILE",
    "DEFAULT_RUNS_ROOT",
    "ENV_FILE",
    "HISTORY_FILE",
    "METRICS_FILE",
    "MODEL_GLOB",
    "PLOTS_DIR",
    "PLOT_FILES",
    "PREDICTIONS_FILE",
    "RECIPE_FILE",
    "REPORT_FILE",
    "RUN_FILES",
    "STATE_GLOB",
    "TENSORBOARD_DIR",
    "THRESHOLD_FILE",
    "TIMING_FILE",
    "RunLayout",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "create_run_dir",
    "fsync_replace",
    "is_run_dir",
    "latest_run",
    "model_file",
    "resolve_run",
    "state_file",
    "temp_path",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bnnkit.run' has no attribute {name!r}")
