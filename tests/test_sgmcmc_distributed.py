"""SG-MCMC under torchrun: the ranks run one chain (same noise, all-reduced gradients) and
burn-in is counted in global batches (issue 10, defect 3)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import recipe, run_in_session, tiny_overrides

WORKER = Path(__file__).with_name("sgmcmc_dist_worker.py")
HEAD_EPOCHS, BURN_IN_EPOCHS = 3, 1.0


def _train_args(synth_root: Path, runs: Path, batch: int) -> list[str]:
    sets = {
        "model.backbone.name": '"test_resnet"', "model.backbone.pretrained": "false",
        "train.backbone": '"frozen"', "train.head_epochs": HEAD_EPOCHS,
        "train.batch_size": batch, "eval.samples": 4, "eval.batch_size": 64,
        "inference.burn_in_epochs": BURN_IN_EPOCHS,
    }  # fmt: skip
    args = ["train", str(recipe("resnet50_sgld")), "--runs-dir", str(runs), "-q"]
    return args + tiny_overrides(synth_root, **sets)


def _run(cmd: list[str], cwd: Path) -> None:
    run_in_session(cmd, cwd=cwd, pythonpath=[WORKER.parent])


def _meta(runs: Path) -> dict:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return json.loads((run / "checkpoint.json").read_text())


@pytest.mark.slow
def test_two_gloo_ranks_run_one_sgld_chain(synth_root, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun ships with torch"
    dist_out, single_out = tmp_path / "dist", tmp_path / "single"
    for d in (dist_out, single_out):
        d.mkdir()
    # 2 ranks x 8 images per step, and one process with the same global batch of 16
    _run([torchrun, "--standalone", "--nproc-per-node", "2", str(WORKER), str(dist_out),
          *_train_args(synth_root, dist_out / "runs", 8)], dist_out)  # fmt: skip
    _run([sys.executable, str(WORKER), str(single_out),
          *_train_args(synth_root, single_out / "runs", 16)], single_out)  # fmt: skip

    meta, single_meta = _meta(dist_out / "runs"), _meta(single_out / "runs")
    steps_per_epoch = math.ceil(meta["num_train"] / 16)  # global batch: 2 ranks x 8
    rank0, rank1 = torch.load(dist_out / "rank0.pt"), torch.load(dist_out / "rank1.pt")
    assert rank0.shape[0] == HEAD_EPOCHS * steps_per_epoch == meta["method_meta"]["steps"]
    # identical head parameters on both ranks after every step: one chain, not two
    for step, (a, b) in enumerate(zip(rank0, rank1, strict=True), 1):
        assert torch.equal(a, b), f"ranks differ after step {step}: {(a - b).abs().max():.3g}"
    assert rank0[1:].sub(rank0[:-1]).abs().amax(1).min() > 0  # and the chain moves every step
    # burn-in counted in global batches: the same as one process with batch 16
    burn_in = round(BURN_IN_EPOCHS * steps_per_epoch)
    assert meta["method_meta"]["burn_in_steps"] == burn_in
    assert single_meta["method_meta"]["burn_in_steps"] == burn_in
    assert meta["method_meta"]["world_size"] == 2 and single_meta["method_meta"]["world_size"] == 1
    # the global batches and the noise are the same as the single process's, so is the chain
    # (up to float summation order: a mean of two rank means vs one mean)
    single = torch.load(single_out / "rank0.pt")
    torch.testing.assert_close(rank0, single, rtol=1e-4, atol=1e-5)
