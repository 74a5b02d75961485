"""Data-parallel training: sharding arithmetic, and a real 2-process gloo run under torchrun."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, run_in_session, tiny_overrides

from bnnkit.cli import main
from bnnkit.engine.train.distributed import DistInfo, shard


def test_shards_cover_everything_with_equal_sizes():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    parts = [shard(order, DistInfo(rank=r, world=3)) for r in range(3)]
    assert {len(p) for p in parts} == {4}  # padded by wrapping, like DistributedSampler
    assert set(torch.cat(parts).tolist()) == set(range(10))
    assert torch.equal(shard(order, DistInfo()), order)


WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.mark.slow
def test_torchrun_two_cpu_processes_make_one_complete_run(synth_root, tmp_path, runner):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    runs = tmp_path / "runs"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", str(WORKER), str(tmp_path), "train",
           str(QUICKSTART), "--runs-dir", str(runs), "-q",
           *tiny_overrides(synth_root, **{"train.epochs": 2})]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    # own session: on a timeout the whole group (torchrun and both ranks) is killed
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stdout + stderr
    assert "rank 0 of 2" in stdout
    (run,) = list(runs.iterdir())  # rank 0 alone made and wrote the run directory
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["complete"] is True
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    # every training image was seen once per epoch across the two ranks, but for a lone last
    # sample of a rank's shard, which would make a batch of one (batch norm cannot train on it)
    n_train = meta["num_train"]
    per_rank = math.ceil(n_train / 2)
    per_rank -= per_rank % 16 == 1
    steps = math.ceil(per_rank / 16)  # batch 16
    assert meta["step"] == 2 * steps
    # the backbone phase trained through DistributedDataParallel: every step on both ranks,
    # and the replicas ended with the same parameters
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["ddp_forwards"] == rank1["ddp_forwards"] == 2 * steps
    assert torch.equal(rank0["params"], rank1["params"])
    result = runner.invoke(main, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_gp_head_initialised_on_rank_0_is_the_same_on_every_rank(synth_root, tmp_path):
    """The gp head initialises its inducing points from the first training batch it sees; each
    rank sees another batch, so rank 0's initialisation must reach every rank, or the replicas
    train (on all-reduced gradients) from different starting points and end apart."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    sets = {"inference": '{name = "gp"}', "model.head": '{name = "gp", num_inducing = 4}',
            "train.backbone": '"frozen"', "train.head_epochs": 2, "eval.samples": 4}  # fmt: skip
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", str(WORKER), str(tmp_path), "train",
           str(QUICKSTART), "--runs-dir", str(tmp_path / "runs"), "-q",
           *tiny_overrides(synth_root, **sets)]  # fmt: skip
    run_in_session(cmd, pythonpath=[WORKER.parent])
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0["params"], rank1["params"])
