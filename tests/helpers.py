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
    "cosine_gap",
    "fit_head",
    "invoke",
    "noisy_readouts",
    "perturbed_copies",
    "recipe",
    "run_in_session",
    "synth_data",
    "tiny_overrides",
    "train_and_evaluate",
    "train_stopped",
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


def fit_head(method, x: torch.Tensor, y: torch.Tensor, epochs: int = 60) -> None:
    """Train ``method``'s head on ``(x, y)`` as a test's trainer would: Adam (lr 0.05, no weight
    decay) through ``method.training_loss``, ``epochs`` passes of minibatches of 50 in a seeded
    order (the same order for every method)."""
    import torch

    opt = method.configure_optimizer(
        [{"params": list(method.head.parameters())}], optimizer="adam", lr=0.05, weight_decay=0.0
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(50):
            opt.zero_grad()
            method.training_loss(x[idx], y[idx], idx).loss.backward()
            opt.step()


def cosine_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` per row, in float64: a training-free method's per-perturbation feature."""
    import torch.nn.functional as F

    return 1 - F.cosine_similarity(a.double(), b.double(), dim=1)


def noisy_readouts(readout, images: torch.Tensor, std: torch.Tensor, sigma: float, n: int = 3):
    """``readout(images + noise_k * sigma / std)`` for each of the ``n`` input perturbations of
    seed 0 (``perturbation_seeds(0, n, "input")``, one ``[3, H, W]`` noise draw each): what the
    ``rigid`` method's k-th pass reads, computed independently of it."""
    import torch

    from bnnkit.model.perturbed import perturbation_seeds

    shape = images.shape[1:]
    return [
        readout(
            images + torch.randn(shape, generator=torch.Generator().manual_seed(s)) * sigma / std
        )
        for s in perturbation_seeds(0, n, "input")
    ]


def check_rigid_features(det, readout, images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Assert that a built ``rigid`` detector's features ``[N, n]`` are, per input perturbation
    (:func:`noisy_readouts`), the :func:`cosine_gap` between the clean and the perturbed
    ``readout`` (the backbone's embedding, computed independently of the method); return them."""
    import torch

    std = torch.tensor(det.normalisation.std).view(3, 1, 1)
    with torch.no_grad():
        got = det.features(images)
        clean = readout(images)
        moved = noisy_readouts(readout, images, std, sigma)
    want = torch.stack([cosine_gap(clean, m) for m in moved], dim=1)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-4)
    return got


def perturbed_copies(base: torch.nn.Module, sigma: float, n: int = 3) -> list[torch.nn.Module]:
    """Copies of ``base`` with the ``wepe`` method's weight noise, made independently of it: for
    each of the ``n`` weight perturbations of seed 0 (``perturbation_seeds(0, n, "weights")``),
    every parameter of >= 2 dims (the default selection, in name order) plus Gaussian noise of
    ``sigma`` times its RMS."""
    import copy

    import torch

    from bnnkit.model.perturbed import perturbation_seeds

    copies = []
    for seed in perturbation_seeds(0, n, "weights"):
        moved = copy.deepcopy(base)
        g = torch.Generator().manual_seed(seed)
        for _, p in sorted(moved.named_parameters()):
            if p.ndim >= 2:
                p.add_(torch.randn(p.shape, generator=g) * sigma * p.pow(2).mean().sqrt())
        copies.append(moved)
    return copies


def train_stopped(runner, monkeypatch, hook: str, stop, args: list[str], runs_dir: Path) -> Path:
    """``bnnkit train`` with ``args`` while ``InferenceMethod.<hook>`` is ``stop`` (which raises
    SIGINT at the moment to test): assert that the trainer checkpointed and stopped on the signal
    and return the run directory, the only one in ``runs_dir``."""
    from bnnkit.cli import main
    from bnnkit.methods.base import InferenceMethod

    with monkeypatch.context() as m:
        m.setattr(InferenceMethod, hook, stop)
        first = runner.invoke(main, args)
    assert first.exit_code == 128 + signal.SIGINT, first.output
    (run,) = list(runs_dir.iterdir())
    return run


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
