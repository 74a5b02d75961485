"""The trainer's phase plan, and what a method hears of it: ``begin_phase`` with each phase's
length, ``calibrate`` on the validation features, and validation after that last step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import QUICKSTART, tiny_overrides
from safetensors.torch import load_file

from bnnkit import hookimpl, plugins
from bnnkit.cli import main
from bnnkit.data.layouts import index_split
from bnnkit.engine.train.phases import Phase, plan_phases
from bnnkit.methods.base import InferenceMethod


@pytest.mark.parametrize(
    ("backbone", "joint", "expected"),
    [
        ("finetune", True, [Phase("finetune", 3)]),
        ("finetune", False, [Phase("finetune-map", 3), Phase("head", 5)]),
        ("frozen", True, [Phase("head", 5)]),
        ("frozen", False, [Phase("head", 5)]),
    ],
)
def test_plan_from_backbone_and_method(backbone, joint, expected):
    assert plan_phases(backbone, joint, epochs=3, head_epochs=5) == expected


def test_plan_head_epochs_default_to_epochs_and_phase_roles():
    assert plan_phases("frozen", True, epochs=4, head_epochs=None) == [Phase("head", 4)]
    assert plan_phases("frozen", True, epochs=4, head_epochs=0) == [Phase("head", 4)]
    finetune_map, head = plan_phases("finetune", False, epochs=2)
    assert finetune_map.trains_backbone and not finetune_map.uses_method_loss
    assert not head.trains_backbone and head.uses_method_loss
    assert Phase("finetune", 1).trains_backbone and Phase("finetune", 1).uses_method_loss
    with pytest.raises(ValueError, match="train.backbone"):
        plan_phases("halfway", True, epochs=1)  # "partial" is a mode now (lora.py tests it)


CALLS: list[tuple] = []


class ZeroingCalibration(InferenceMethod):
    """MAP on a linear head whose post-hoc ``calibrate`` zeroes the head (p = 0.5 everywhere),
    so a validation after it shows val NLL = ln 2 and one before it does not."""

    joint_finetune = False  # finetune-map, then head: both kinds of phase
    needs_val_features = True

    def begin_phase(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        CALLS.append(("begin_phase", phase, epochs, steps_per_epoch))

    def after_training(self, features, targets) -> None:
        CALLS.append(("after_training",))

    def calibrate(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        context = (torch.is_grad_enabled(), features.requires_grad, self.head.training)
        CALLS.append(
            ("calibrate", features.clone(), targets.tolist(), *context, features.device.type)
        )
        with torch.no_grad():
            for p in self.head.parameters():
                p.zero_()


class _Plugin:
    @hookimpl
    def register_methods(self, register):
        register("zeroing_calibration", ZeroingCalibration, summary="test: calibrate zeroes")


def test_method_hears_phases_then_calibrates_before_final_validation(runner, synth_root, tmp_path):
    CALLS.clear()
    plugins.add_plugin("zeroing-calibration-test", _Plugin())
    try:
        sets = {"train.epochs": 1, "train.head_epochs": 2, "model.head": '{name="linear"}',
                "inference": '{name="zeroing_calibration"}'}  # fmt: skip
        args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
                *tiny_overrides(synth_root, **sets)]  # fmt: skip
        result = runner.invoke(main, args)
    finally:
        plugins.remove_plugin("zeroing-calibration-test")
    assert result.exit_code == 0, result.output
    (run,) = list(tmp_path.iterdir())
    meta = json.loads((run / "checkpoint.json").read_text())
    steps = math.ceil(meta["num_train"] / 16)  # batch 16, one process
    assert [c[0] for c in CALLS] == ["begin_phase", "begin_phase", "after_training", "calibrate"]
    assert CALLS[0][1:] == ("finetune-map", 1, steps) and CALLS[1][1:] == ("head", 2, steps)
    features, targets, grad_enabled, requires_grad, head_training, device = CALLS[3][1:]
    # rows in the order of the calibration split (carved from the training folders, never
    # trained on); autograd on, detached features, eval-mode head
    from bnnkit.data.splits import carve_calibration

    gens = ["adm", "biggan", "glide", "sdv4", "sdv5", "vqdm", "wukong"]
    _, cal = carve_calibration(index_split(synth_root, gens, "train", seed=0), 0.1, 0)
    assert cal and targets == [s.label for s in cal]
    assert features.shape == (len(cal), meta["feature_dim"])
    assert grad_enabled and not requires_grad and not head_training and device == "cpu"
    # the last epoch is validated after calibrate: the zeroed head gives p = 0.5 everywhere
    last = meta["history"][-1]
    assert (last["phase"], last["epoch"]) == ("head", 2)
    assert last["val_nll"] == pytest.approx(math.log(2), abs=1e-6)
    assert meta["history"][-2]["val_nll"] != pytest.approx(math.log(2), abs=1e-6)
    assert "val NLL 0.693" in result.output
    history = (run / "history.csv").read_text().splitlines()
    assert history[-1].split(",")[7] == "0.693147"  # val_nll column, as the summary shows
    weights = load_file(run / "model-final.safetensors")
    assert all(not weights[k].any() for k in weights if k.startswith("head."))


def test_no_training_batch_is_a_lone_sample():
    """A shard whose size is 1 more than a multiple of the batch size would end on a batch of
    one image, which batch norm cannot train on (the calibration split made this common): the
    last sample of that epoch's order is left out, and the step count says so."""
    from types import SimpleNamespace

    import torch

    from bnnkit.engine.train.data import TrainData
    from bnnkit.engine.train.distributed import DistInfo

    for world in (1, 2):
        recipe = SimpleNamespace(seed=0, train=SimpleNamespace(batch_size=4))
        dist = DistInfo(rank=0, world=world, local_rank=0) if world > 1 else DistInfo()
        data = TrainData(recipe, torch.device("cpu"), dist, cache_dir=None)
        for n in range(1, 20):
            assert len(data.epoch_indices(n, "head", 1, images=False)) == -(-n // world)
            order = data.epoch_indices(n, "finetune", 1)
            sizes = [len(order[s : s + 4]) for s in range(0, len(order), 4)]
            assert 1 not in sizes or sizes == [1], (world, n, sizes)
            assert len(sizes) == data.steps_per_epoch(n)
            assert len(order) >= len(set(order.tolist())) >= min(n, -(-n // world)) - 1
