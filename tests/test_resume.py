"""Interrupted runs resume exactly: SIGKILL at three moments, SIGINT mid-epoch, NaN losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import QUICKSTART, tiny_overrides, train_stopped

from bnnkit.cli import main

ARGS = {"train.epochs": 3, "train.batch_size": 8}


def _metrics(runner, run: Path) -> dict:
    result = runner.invoke(main, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    data.pop("run")
    return data


def _train_cmd(synth_root: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "bnnkit", "train", str(QUICKSTART), "--runs-dir", str(runs),
            "-q", *tiny_overrides(synth_root, **ARGS)]  # fmt: skip


def _position(run: Path) -> dict | None:
    try:
        return json.loads((run / "checkpoint.json").read_text())["position"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def _start_and_wait(cmd: list[str], runs: Path, ready) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs_now = [p for p in runs.iterdir()] if runs.is_dir() else []
        if runs_now and ready(runs_now[0]):
            return proc, runs_now[0]
        if proc.poll() is not None:
            pytest.fail(f"training ended before the kill point: {proc.stdout.read().decode()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("kill point never reached")


@pytest.fixture(scope="module")
def baseline(synth_root, tmp_path_factory):
    from click.testing import CliRunner

    runner = CliRunner()
    runs = tmp_path_factory.mktemp("baseline")
    args = ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q",
            *tiny_overrides(synth_root, **ARGS)]  # fmt: skip
    assert runner.invoke(main, args).exit_code == 0
    (run,) = list(runs.iterdir())
    return _metrics(runner, run)


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    ["before-first-checkpoint", "after-epoch-1", "after-epoch-2"],
)
def test_sigkill_then_resume_matches_uninterrupted(moment, baseline, synth_root, tmp_path, runner):
    runs = tmp_path / "runs"
    ready = {
        "before-first-checkpoint": lambda run: (run / "recipe.toml").is_file(),
        "after-epoch-1": lambda run: (_position(run) or {}).get("epoch", 0) >= 2,
        "after-epoch-2": lambda run: (_position(run) or {}).get("epoch", 0) >= 3,
    }[moment]
    proc, run = _start_and_wait(_train_cmd(synth_root, runs), runs, ready)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if moment != "before-first-checkpoint":
        assert json.loads((run / "checkpoint.json").read_text())["complete"] is False
    result = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert _metrics(runner, run) == baseline


@pytest.mark.slow
def test_sigint_mid_epoch_saves_and_resumes_exactly(baseline, synth_root, tmp_path, runner):
    runs = tmp_path / "runs"
    proc, run = _start_and_wait(
        _train_cmd(synth_root, runs), runs, lambda r: (_position(r) or {}).get("epoch", 0) >= 2
    )
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    text = out.decode()
    assert proc.returncode == 128 + signal.SIGINT, text
    assert f"bnnkit train --resume {run}" in text.replace("\n", "")
    assert "Traceback" not in text
    result = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output
    assert _metrics(runner, run) == baseline


def test_resume_refuses_complete_run_and_bad_args(runner, trained_run):
    result = runner.invoke(main, ["train", "--resume", str(trained_run)])
    assert result.exit_code == 2 and "already complete" in result.output
    result = runner.invoke(main, ["train", str(QUICKSTART), "--resume", str(trained_run)])
    assert result.exit_code == 2


def test_nan_loss_stops_with_clear_message(runner, synth_root, tmp_path):
    args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
            *tiny_overrides(synth_root, **{"train.lr": "1e30", "train.epochs": 2,
                                           "inference": '{name="map"}',
                                           "model.head": '{name="linear"}'})]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "loss became" in result.output and "epoch 1" in result.output
    assert "grad_clip" in result.output and "Traceback" not in result.output


def test_resume_with_mismatched_optimiser_state_stops_clearly(
    runner, synth_root, tmp_path, monkeypatch
):
    """A run whose saved optimiser state no longer fits (e.g. a bbb run saved before blitz's
    aliased parameters were deduplicated: twice the parameters in the head's group) stops with
    a usage error instead of torch's ValueError from ``Optimizer.load_state_dict``."""

    def sigint_after_epoch_one(self, epoch: int) -> None:
        if epoch == 1:
            signal.raise_signal(signal.SIGINT)  # the trainer checkpoints and stops cleanly

    args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
            *tiny_overrides(synth_root, **{"train.epochs": 2})]  # fmt: skip
    run = train_stopped(runner, monkeypatch, "after_epoch", sigint_after_epoch_one, args, tmp_path)
    meta_path = run / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    assert meta["position"]["epoch"] == 2 and meta["complete"] is False
    groups = meta["state"]["optimizer"]["param_groups"]
    groups[0]["params"] = groups[0]["params"][:-1]  # the saved layout differs from today's
    meta_path.write_text(json.dumps(meta))
    result = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 2, result.output
    assert "cannot resume" in result.output and "optimiser state" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
