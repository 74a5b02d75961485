"""Shared fixtures: offline hub, one torch thread, tiny synthetic GenImage tree, CLI runner, a
trained run. Helpers (not fixtures) live in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # once, before timm/huggingface_hub are imported

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from helpers import QUICKSTART, synth_data, train_and_evaluate  # noqa: E402


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny problems: one torch thread avoids thread-pool overhead on a busy machine (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic GenImage tree (all 8 generators, 32 px), written once per session."""
    return synth_data(tmp_path_factory.mktemp("synth"), train_per_class=8, val_per_class=4)


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synth_root) -> Path:
    """One quickstart run on the tiny tree, shared by read-only tests (evaluate, predict)."""
    work = tmp_path_factory.mktemp("runs")
    return train_and_evaluate(QUICKSTART, work, data=synth_root, backbone=None, evaluate=False).run
