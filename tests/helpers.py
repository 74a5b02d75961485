"""Shared test helpers (import with ``from helpers import ...``; fixtures are in conftest.py).

Built on :mod:`bnnkit.testing`: tiny ``--set`` overrides, the CLI train + evaluate runner, and
the recipe paths of this checkout.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bnnkit.testing import TrainedRun, invoke, synth_data, tiny_overrides, train_and_evaluate

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
QUICKSTART = RECIPES / "quickstart.toml"

__all__ = [
    "QUICKSTART",
    "RECIPES",
    "REPO",
    "TrainedRun",
    "invoke",
    "recipe",
    "run_in_session",
    "synth_data",
    "tiny_overrides",
    "train_and_evaluate",
    "two_blobs",
]


def recipe(name: str) -> Path:
    """A bundled recipe of this checkout by file stem, e.g. ``recipe("resnet50_lrt")``."""
    path = RECIPES / f"{name}.toml"
    assert path.is_file(), f"no recipe {path}"
    return path


def two_blobs(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping Gaussian blobs in ``d`` dimensions, labels alternating 0/1 (so a MAP head
    is finite and uncertain): features ``[n, d]`` and labels ``[n]``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g)
    x[:, 0] += 1.5 * (2 * y - 1)
    return x, y


def run_in_session(
    cmd: Sequence[str], *, cwd: Path | None = None, pythonpath: Sequence[Path] = (), timeout=300
) -> tuple[str, str]:
    """Run ``cmd`` (e.g. torchrun) offline with one OMP thread, ``pythonpath`` prepended, in its
    own session so that a timeout kills the whole group (torchrun and every rank); assert that
    it succeeds and return ``(stdout, stderr)``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stdout + stderr
    return stdout, stderr
