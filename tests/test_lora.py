"""Parameter-efficient fine-tuning (train.backbone = "lora" / "partial", bnnkit.model.adapt):
what trains, what the checkpoint holds, exact resume, the rebuilt detector, refusals."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, tiny_overrides
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bnnkit.cli import main
from bnnkit.engine.build import build, load_run
from bnnkit.engine.train.phases import Phase, plan_phases
from bnnkit.errors import UsageError
from bnnkit.plugins import get_registry
from bnnkit.recipe import validate

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = '{name="test_vit", pretrained=false, img_size=32}'


def _sets(backbone: str = "test_vit", mode: str = "lora", method: str = "map", **extra) -> dict:
    sets = {
        "model.backbone": VIT
        if backbone == "test_vit"
        else f'{{name="{backbone}", pretrained=false}}',
        "model.attention": '{name="none"}',
        "model.head": '{name="bbb"}' if method == "bbb" else '{name="linear"}',
        "inference": f'{{name="{method}"}}',
        "train.backbone": f'"{mode}"',
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.partial_blocks": 2,
    }
    sets.update(extra)
    return sets


def _train(runner, synth_root: Path, runs: Path, **sets) -> Path:
    args = ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q",
            *tiny_overrides(synth_root, **_sets(**sets))]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    (run,) = list(runs.iterdir())
    return run


def _model_file(run: Path) -> Path:
    return run / json.loads((run / "checkpoint.json").read_text())["files"]["model"]


def _recipe(mode: str, backbone: str = "test_vit", **train) -> object:
    bb = {"name": backbone, "pretrained": False}
    if backbone == "test_vit":
        bb["img_size"] = 32
    raw = {"seed": 3, "data": {"image_size": 32}, "model": {"backbone": bb},
           "inference": {"name": "map"}, "train": {"backbone": mode, **train}}  # fmt: skip
    return validate(raw, get_registry())


# -- what trains --------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["test_vit", "test_resnet"])
def test_lora_adapts_the_default_targets_and_freezes_the_base(backbone):
    detector, _ = build(_recipe("lora", backbone), num_train=8)
    learn = [n for n, p in detector.named_parameters() if p.requires_grad]
    body = [n for n in learn if n.startswith("backbone.")]
    assert body and all(".lora_A." in n or ".lora_B." in n for n in body)
    if backbone == "test_vit":  # qkv, proj, fc1, fc2 of every block; not the patch embedding
        assert {n.split(".")[-4] for n in body} == {"qkv", "proj", "fc1", "fc2"}
        assert len(body) == 6 * 4 * 2 and not any("patch_embed" in n for n in body)
    else:  # conv1-3 of layer3/layer4
        assert all(n.split(".")[2] in ("layer3", "layer4") for n in body)
    assert any(n.startswith("head.") for n in learn)


def test_partial_trains_the_last_blocks_and_the_final_norm():
    detector, _ = build(_recipe("partial", partial_blocks=2), num_train=8)
    body = {n.split(".")[3] for n, p in detector.named_parameters()
            if p.requires_grad and n.startswith("backbone.model.blocks.")}  # fmt: skip
    assert body == {"4", "5"}  # test_vit has 6 blocks
    assert detector.backbone.model.norm.weight.requires_grad
    assert not detector.backbone.model.patch_embed.proj.weight.requires_grad
    resnet, _ = build(_recipe("partial", "test_resnet", partial_blocks=1), num_train=8)
    learn = {n for n, p in resnet.backbone.named_parameters() if p.requires_grad}
    assert learn and all(n.startswith("model.layer4.0.") for n in learn)


def test_the_base_init_is_deterministic_under_the_recipe_seed():
    """timm's init under torch.manual_seed: the same base twice, whatever ran before."""
    a, _ = build(_recipe("lora"), num_train=8)
    torch.rand(100)  # the global generator moved on: the base must not depend on it
    b, _ = build(_recipe("lora"), num_train=8)
    assert a.adaptation["digest"] == b.adaptation["digest"]
    wa, wb = a.backbone.model.blocks[0].attn.qkv.base_layer.weight, b.backbone.model.blocks[0]
    torch.testing.assert_close(wa, wb.attn.qkv.base_layer.weight, rtol=0, atol=0)


def test_plan_phases_for_lora_and_partial_follow_finetune():
    for mode in ("lora", "partial"):
        assert plan_phases(mode, True, 2) == [Phase("finetune", 2)]
        assert plan_phases(mode, False, 2, 3) == [Phase("finetune-map", 2), Phase("head", 3)]


def test_refusals_say_what_to_do():
    with pytest.raises(UsageError, match="needs train.epochs >= 1"):
        _recipe("lora", epochs=0)
    with pytest.raises(UsageError, match="has 6 blocks"):
        build(_recipe("partial", partial_blocks=7), num_train=8)
    with pytest.raises(UsageError, match="target_modules"):
        build(_recipe("lora", lora={"target_modules": ["no_such_layer"]}), num_train=8)


# -- the checkpoint -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backbone", "mode", "method"),
    [("test_vit", "lora", "map"), ("test_vit", "lora", "kflaplace"), ("test_vit", "lora", "bbb"),
     ("test_resnet", "lora", "map"), ("test_vit", "partial", "map"),
     ("test_resnet", "partial", "sgld")],
)  # fmt: skip
def test_checkpoint_holds_only_what_trains_and_reloads_exactly(
    backbone, mode, method, runner, synth_root, tmp_path, monkeypatch
):
    import bnnkit.engine.train.trainer as trainer_mod

    built: list = []

    def spy(*args, **kwargs):
        out = build(*args, **kwargs)
        built.append(out[0])
        return out

    monkeypatch.setattr(trainer_mod, "build", spy)
    run = _train(runner, synth_root, tmp_path, backbone=backbone, mode=mode, method=method)
    (trained,) = built
    # evaluate/predict rebuild the same detector: base from the seed, the rest from the file
    _, loaded, _, _ = load_run(run, torch.device("cpu"))
    with safe_open(str(_model_file(run)), framework="pt") as fh:
        saved = set(fh.keys())
    # what trains, as the build sets it (the trainer's copy froze the body for a head phase)
    learn = {n for n, p in loaded.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert any(n.startswith("backbone.") for n in learn) and any(
        n.startswith("head.") for n in learn
    )
    buffers = {n for n, _ in trained.named_buffers()}
    assert saved - buffers == learn, "parameters saved != parameters that train"
    assert len(saved) < len(trained.state_dict())
    base = json.loads((run / "checkpoint.json").read_text())["base"]
    assert base["mode"] == mode and base["pretrained"] is False and base["init_seed"] == 0
    trained.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(0)  # bbb's head samples its weights
        reloaded_logits = loaded(x)
        torch.manual_seed(0)
        torch.testing.assert_close(reloaded_logits, trained(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.features(x), trained.features(x), rtol=0, atol=0)
    result = runner.invoke(main, ["predict", str(run), str(next(synth_root.rglob("*.png")))])
    assert result.exit_code == 0, result.output


def test_predict_on_the_reloaded_run_equals_the_in_memory_detector(
    runner, synth_root, tmp_path, monkeypatch
):
    """``predict`` on the run (its detector rebuilt from the checkpoint and the base reference)
    against the same predict with the detector and method the trainer held in memory."""
    import bnnkit.engine.predict.run as predict_mod
    import bnnkit.engine.train.trainer as trainer_mod

    built: list = []

    def spy(*args, **kwargs):
        out = build(*args, **kwargs)
        built.append(out)
        return out

    monkeypatch.setattr(trainer_mod, "build", spy)
    run = _train(runner, synth_root, tmp_path)
    images = sorted(synth_root.rglob("*.png"))[:6]
    cpu = torch.device("cpu")
    reloaded = predict_mod.predict_run(run, images, device=cpu, abstain=False)
    ((detector, method),) = built
    recipe, _, _, meta = load_run(run, cpu)
    monkeypatch.setattr(
        predict_mod, "load_run", lambda *a, **k: (recipe, detector.eval(), method, meta)
    )
    in_memory = predict_mod.predict_run(run, images, device=cpu, abstain=False)
    assert len(reloaded.rows) == len(images)
    assert reloaded.rows == in_memory.rows


# -- resume ---------------------------------------------------------------------------------------
def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(_model_file(run)))


@pytest.mark.parametrize("mode", ["lora", "partial"])
def test_interrupted_and_resumed_ends_with_the_same_weights(
    mode, runner, synth_root, tmp_path, monkeypatch
):
    from bnnkit.methods.base import InferenceMethod

    whole = _weights(_train(runner, synth_root, tmp_path / "whole", mode=mode))

    def sigint_after_first_epoch(self, epoch: int) -> None:
        if epoch == 1:
            signal.raise_signal(signal.SIGINT)  # checkpoint (optimiser, RNG) and stop

    runs = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(InferenceMethod, "after_epoch", sigint_after_first_epoch)
        args = ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q",
                *tiny_overrides(synth_root, **_sets(mode=mode))]  # fmt: skip
        assert runner.invoke(main, args).exit_code == 128 + signal.SIGINT
    (run,) = list(runs.iterdir())
    assert json.loads((run / "checkpoint.json").read_text())["complete"] is False
    result = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    resumed = _weights(run)
    assert set(resumed) == set(whole)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_sigkilled_lora_run_resumes_to_the_same_weights(runner, synth_root, tmp_path):
    """SIGKILL after the first epoch's checkpoint, resumed in the same kind of process (its own
    thread count) as the uninterrupted run it is compared with."""
    import os
    import subprocess

    from test_resume import _position, _start_and_wait

    def cmd(runs: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "bnnkit", "train", *extra, "-q", "--runs-dir", str(runs),
                *tiny_overrides(synth_root, **_sets())]  # fmt: skip

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd(tmp_path / "whole", str(QUICKSTART)), env=env, check=True)
    (whole_run,) = list((tmp_path / "whole").iterdir())
    whole = _weights(whole_run)
    runs = tmp_path / "cut"
    ready = lambda r: (_position(r) or {}).get("epoch", 0) >= 2  # noqa: E731
    proc, run = _start_and_wait(cmd(runs, str(QUICKSTART)), runs, ready)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resume = [sys.executable, "-m", "bnnkit", "train", "--resume", str(run), "-q"]
    subprocess.run(resume, env=env, check=True)
    resumed = _weights(run)
    assert set(resumed) == set(whole)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)


# -- the base reference -------------------------------------------------------------------------
def test_a_changed_base_refuses_to_load(runner, synth_root, tmp_path):
    """Rebuilt under another seed (the recipe edited), the base's digest differs: refused."""
    run = _train(runner, synth_root, tmp_path)
    recipe = run / "recipe.toml"
    recipe.write_text(recipe.read_text().replace("seed = 0", "seed = 1", 1))
    result = runner.invoke(main, ["evaluate", str(run)])
    assert result.exit_code == 2, result.output
    assert "differ from those it was trained on" in " ".join(result.output.split())


def test_a_base_weights_file_is_checked_by_its_sha256(runner, synth_root, tmp_path):
    import timm

    weights = tmp_path / "base.safetensors"
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    bb = f'{{name="test_vit", pretrained="{weights}", img_size=32}}'
    run = _train(runner, synth_root, tmp_path / "runs", **{"model.backbone": bb})
    base = json.loads((run / "checkpoint.json").read_text())["base"]
    assert base["pretrained"] == str(weights) and len(base["sha256"]) == 64
    assert runner.invoke(main, ["evaluate", str(run)]).exit_code == 0
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(weights))
    result = runner.invoke(main, ["evaluate", str(run)])
    assert result.exit_code == 2, result.output
    assert "changed since the run was trained" in " ".join(result.output.split())


# -- the cost benchmark ---------------------------------------------------------------------------
def test_lora_benchmark_smoke_prints_one_json_object():
    """``benchmarks/lora.py`` on test_vit: every mode measured, the ratios there (no timing is
    asserted: the figures are recorded from a full run in benchmarks/README.md)."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "lora.py"
    cmd = [sys.executable, str(script), "--backbone", "test_vit", "--image-size", "32",
           "--batch", "2", "--steps", "1", "--warmup", "0"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["modes"]) == {"finetune", "lora", "partial"}
    full = out["modes"]["finetune"]
    for mode in ("lora", "partial"):
        m = out["modes"][mode]
        assert 0 < m["trainable_params"] < full["trainable_params"]
        assert m["step_seconds"] > 0 and m["peak_rss_bytes"] > 0
        assert 0 < out["ratios"][f"{mode}_state_over_full"] < 1  # fewer tensors learn
    assert set(out["meets_targets"]) == {
        "lora_time_over_full", "lora_state_over_full",
        "partial_time_over_full", "partial_state_over_full",
    }  # fmt: skip


def test_whole_detector_ensembles_are_refused_before_training():
    raw = {"model": {"backbone": {"name": "test_resnet"}}, "train": {"backbone": "lora"},
           "inference": {"name": "ensemble", "members": "detectors", "size": 2}}  # fmt: skip
    with pytest.raises(UsageError, match="whole-detector"):
        validate(raw, get_registry())
