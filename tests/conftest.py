"""Shared fixtures: offline hub, tiny synthetic GenImage tree, tiny recipes, CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm/huggingface_hub are imported

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.toml"


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic GenImage tree (all 8 generators, 32 px), written once per session."""
    from bnnkit.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(root, seed=0, train_per_class=8, val_per_class=4, size=32)
    return root


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def tiny_overrides(root: Path, **extra: object) -> list[str]:
    """``--set`` arguments that turn the quickstart into a seconds-long test run."""
    sets = {
        "data.root": f'"{root}"',
        "data.image_size": "32",
        "train.epochs": "1",
        "train.batch_size": "16",
        "eval.samples": "8",
    }
    sets.update({k: str(v) for k, v in extra.items()})
    out: list[str] = []
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synth_root) -> Path:
    """One quickstart run on the tiny tree, shared by read-only tests (evaluate, predict)."""
    from bnnkit.cli import main

    runs = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(
        main,
        ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q", *tiny_overrides(synth_root)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run
