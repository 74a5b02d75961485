"""Faults a long run meets: a full disk while checkpointing, a corrupted checkpoint, an
evaluation killed half-way (issue 14, item 4)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import QUICKSTART, REPO, tiny_overrides

from bnnkit.cli import main
from bnnkit.errors import CheckpointWarning
from bnnkit.run import RunLayout
from bnnkit.run.checkpoint import find_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(args: list[str]):
    result = CliRunner().invoke(main, [str(a) for a in args])
    # a BnnkitError ends in SystemExit with its message; anything else is a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.output,
        result.exception,
    )
    assert "Traceback" not in result.output
    return result


def _no_temporaries(run: Path) -> None:
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]


# -- a full disk ---------------------------------------------------------------------------------
@pytest.fixture()
def small_disk(tmp_path) -> Path:
    """A 32 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_disk_full_during_a_checkpoint_stops_cleanly_and_resumes(
    small_disk, synth_root, tmp_path, monkeypatch
):
    import bnnkit.engine.train.trainer as trainer

    real_save, calls = trainer.save_checkpoint, []
    ballast = small_disk / "ballast"

    def fill_before_the_second(*args, **kwargs):
        calls.append(kwargs.get("tag"))
        if len(calls) == 2:  # leave 4 KiB: far less than a checkpoint, enough for the log
            free = shutil.disk_usage(small_disk).free
            with open(ballast, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, free - 4096)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", fill_before_the_second)
    runs, cache = small_disk / "runs", tmp_path / "cache"
    sets = tiny_overrides(synth_root, **{"train.epochs": 3})
    common = ["--runs-dir", runs, "--cache-dir", cache, "-q"]
    result = _cli(["train", QUICKSTART, *common, *sets])
    assert result.exit_code == 1, result.output
    assert "no space left on the device" in result.output
    assert "needs about" in result.output and "free some space" in result.output
    (run,) = runs.iterdir()
    assert f"bnnkit train --resume {run}" in result.output.replace("\n", "")
    # the first epoch's checkpoint is the current one, whole; nothing of the second is left
    found = find_checkpoint(run, warn=False)
    assert found.fallback is None and found.meta["position"]["epoch"] == 2
    tensor_files = {p.name for p in RunLayout(run).tensor_files()}
    assert tensor_files == set(found.files.values())
    _no_temporaries(run)

    ballast.unlink()  # space is back
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    result = _cli(["train", "--resume", run, "--cache-dir", cache, "-q"])
    assert result.exit_code == 0, result.output
    assert "resumed from finetune epoch 2" in result.output
    meta = find_checkpoint(run, warn=False).meta
    assert meta["complete"] and [r["epoch"] for r in meta["history"]] == [1, 2, 3]
    _no_temporaries(run)


# -- a corrupted checkpoint ----------------------------------------------------------------------
def _corrupt(run: Path, how: str) -> None:
    layout = RunLayout(run)
    files = json.loads(layout.checkpoint.read_text())["files"]
    if how == "truncated":
        model = run / files["model"]
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif how == "bad-json":
        layout.checkpoint.write_text('{"format": 1, "files": {"model": ')
    else:
        (run / files["state"]).unlink()


@pytest.mark.parametrize("how", ["truncated", "bad-json", "state-missing"])
def test_corrupt_latest_checkpoint_never_gives_a_traceback(how, trained_run, synth_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    _corrupt(run, how)
    image = next((synth_root / "imagenet_ai_0419_biggan" / "val" / "ai").iterdir())
    # the previous checkpoint is from before the posterior was finished: say how to finish it
    for args in (["evaluate", run, "--no-plots"], ["predict", run, image]):
        result = _cli(args)
        assert result.exit_code == 2, result.output
        assert "cannot be used" in result.output
        assert f"bnnkit train --resume {run}" in result.output.replace("\n", "")
    with pytest.warns(CheckpointWarning, match="using the previous one"):
        result = _cli(["train", "--resume", run, "--cache-dir", tmp_path / "cache", "-q"])
    assert result.exit_code == 0, result.output
    found = find_checkpoint(run, warn=False)
    assert found.fallback is None and found.meta["complete"]
    assert _cli(["evaluate", run, "--no-plots"]).exit_code == 0
    _no_temporaries(run)


def test_corrupt_final_checkpoint_falls_back_to_a_finished_previous(
    trained_run, synth_root, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    layout = RunLayout(run)
    shutil.rmtree(layout.previous)  # a previous checkpoint of the finished run, then damage
    layout.previous.mkdir()
    for name in [
        layout.checkpoint.name,
        *json.loads(layout.checkpoint.read_text())["files"].values(),
    ]:
        shutil.copy(run / name, layout.previous / name)
    _corrupt(run, "truncated")
    image = next((synth_root / "imagenet_ai_0419_biggan" / "val" / "ai").iterdir())
    for args in (["evaluate", run, "--no-plots"], ["predict", run, image, "--format", "json"]):
        with pytest.warns(CheckpointWarning, match="is damaged"):
            result = _cli(args)
        assert result.exit_code == 0, result.output
    with pytest.warns(CheckpointWarning):
        result = _cli(["train", "--resume", run, "--cache-dir", tmp_path / "cache"])
    assert result.exit_code == 2 and "already complete" in result.output


# -- an evaluation killed half-way ---------------------------------------------------------------
_KILL_AFTER_FIRST = """
import os, signal, sys
import bnnkit.engine.evaluate.partial as ep
save = ep.PartialResults.save
def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
ep.PartialResults.save = save_then_die
from bnnkit.cli import main
main(sys.argv[1:], prog_name="bnnkit")
"""


def test_killed_evaluation_resumes_from_finished_conditions(trained_run, tmp_path, monkeypatch):
    import bnnkit.engine.evaluate.run as evaluation

    run, reference = tmp_path / "run", tmp_path / "reference"
    shutil.copytree(trained_run, run)
    shutil.copytree(trained_run, reference)
    # the session's trained run may already have been evaluated by an earlier test
    RunLayout(run).metrics.unlink(missing_ok=True)
    args = ["--no-plots", "--degrade", "jpeg:30,blur:3", "-k", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AFTER_FIRST, "evaluate", str(run), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    layout = RunLayout(run)
    # the first condition streamed is the calibration split (clean), which the fits use
    assert [p.name for p in layout.eval_partial.iterdir()] == [
        layout.eval_partial_condition("calibration").name
    ]
    assert not layout.metrics.exists()

    computed: list[str] = []
    real = evaluation._run_condition

    def counting(*a, **kw):
        computed.append(a[9])  # the condition's label
        return real(*a, **kw)

    monkeypatch.setattr(evaluation, "_run_condition", counting)
    result = _cli(["evaluate", run, *args])
    assert result.exit_code == 0, result.output
    assert computed == ["clean", "jpeg:30", "blur:3"]
    assert "calibration: reused from an interrupted evaluation" in result.output
    assert json.loads(layout.timing.read_text())["reused_conditions"] == ["calibration"]
    assert not layout.eval_partial.exists()  # deleted once the evaluation's files are written

    computed.clear()
    assert _cli(["evaluate", reference, *args]).exit_code == 0
    assert computed == ["calibration", "clean", "jpeg:30", "blur:3"]
    resumed = json.loads(layout.metrics.read_text())
    uninterrupted = json.loads(RunLayout(reference).metrics.read_text())
    assert resumed.pop("run") == "run" and uninterrupted.pop("run") == "reference"
    assert resumed == uninterrupted
    assert layout.predictions.read_text() == RunLayout(reference).predictions.read_text()


def test_partial_results_of_other_weights_or_arguments_are_discarded(tmp_path):
    import torch

    from bnnkit.engine.evaluate.partial import PartialResults
    from bnnkit.engine.features.loop import StreamStats
    from bnnkit.metrics.records import Predictions

    layout = RunLayout(tmp_path)
    record = Predictions(torch.rand(3), torch.rand(3), torch.rand(3), torch.rand(3))
    PartialResults(layout, "key-a").save("jpeg:30", record, StreamStats())
    loaded = PartialResults(layout, "key-a").load("jpeg:30")
    assert loaded is not None
    torch.testing.assert_close(loaded[0].p_fake, record.p_fake)
    assert PartialResults(layout, "key-b").load("jpeg:30") is None
    assert not list(layout.eval_partial.iterdir())  # the other key's file is deleted on sight
