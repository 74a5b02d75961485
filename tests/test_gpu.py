"""The CUDA paths, on a real GPU: mixed precision, channels-last, device selection, the frozen
feature cache, and a one-epoch quickstart train + evaluate on ``cuda``.

Every test here is marked ``gpu`` and skipped when ``torch.cuda.is_available()`` is false, so the
normal suite on a CPU machine (CI) reports them as skipped. ``make gpu-check`` runs them
(``pytest -m gpu``) with the benchmarks; see benchmarks/README.md, "GPU figures".

Comparisons between CUDA and CPU results, or between memory layouts, use a tolerance relative to
the largest magnitude (:func:`assert_near`): cuDNN picks different convolution algorithms per
layout and may use TF32, so the sums are not bit-identical, while a wrong layout or a wrong
device copy gives errors of order 1.
"""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
from helpers import QUICKSTART, invoke, tiny_overrides, train_and_evaluate

from bnnkit.engine.build import build
from bnnkit.engine.device import Acceleration, cuda_free_memory, select_device
from bnnkit.errors import UsageError
from bnnkit.recipe import load_recipe

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is false); `make gpu-check` runs it",
    ),
]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
GENERATORS = ["adm", "sdv4"]


def tiny_recipe(root, **sets: object):
    """The quickstart recipe, tiny (32 px, one epoch), on the data under ``root``; ``sets`` map
    recipe keys to TOML values and win."""
    args = tiny_overrides(root, **sets)
    return load_recipe(QUICKSTART, [a for a in args if a != "--set"])


def built(recipe):
    """``(detector, method)`` as ``bnnkit train`` builds them, from the same seed every time."""
    torch.manual_seed(0)
    return build(recipe, num_train=64)


def assert_near(actual: torch.Tensor, expected: torch.Tensor, tol: float = 2e-2) -> None:
    """Same shape, finite, and max |actual - expected| <= tol * max |expected|."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape
    assert torch.isfinite(actual).all() and torch.isfinite(expected).all()
    scale = expected.abs().max().clamp_min(1e-6)
    error = (actual - expected).abs().max() / scale
    assert error <= tol, f"relative error {error:.3g} > {tol}"


def random_batch(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 2


@pytest.fixture(autouse=True)
def no_local_rank(monkeypatch):
    """Outside torchrun: ``LOCAL_RANK`` from the outer environment must not pick the device."""
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)


# -- device selection on the real device ----------------------------------------------------------
def test_select_device_picks_a_visible_gpu():
    count = torch.cuda.device_count()
    free = cuda_free_memory()
    assert free, "no visible CUDA device answered a free-memory query"
    assert all(0 <= i < count and 0 <= f <= t and t > 0 for i, f, t in free)
    for request in ("auto", "cuda"):
        device, reason = select_device(request)
        assert device.type == "cuda" and 0 <= device.index < count, (request, device)
        assert torch.cuda.get_device_name(device.index) in reason
        assert "GiB free" in reason
    assert select_device("cuda:0") == (torch.device("cuda", 0), "cuda:0 (requested)")
    with pytest.raises(UsageError, match=r"CUDA device\(s\) visible"):
        select_device(f"cuda:{count}")
    x = torch.arange(4.0, device=select_device("auto")[0])
    assert x.is_cuda and (2 * x).sum().item() == 12.0


def test_devices_command_lists_the_gpus():
    info = json.loads(invoke(["devices", "--json"]))
    assert len(info["cuda_devices"]) == torch.cuda.device_count()
    assert info["cuda_devices"][0]["name"] == torch.cuda.get_device_name(0)
    assert info["selected"]["device"].startswith("cuda:")


# -- mixed precision ------------------------------------------------------------------------------
def test_auto_amp_is_a_cuda_mode_and_off_on_the_cpu(synth_root):
    recipe = tiny_recipe(synth_root)
    assert recipe.train.amp == "auto" and recipe.train.channels_last
    accel = Acceleration.from_recipe(recipe.train, CUDA)
    mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert (accel.amp_mode, accel.amp, accel.channels_last) == (mode, True, True)
    assert accel.scaler.is_enabled() == (mode == "fp16")  # bf16 needs no loss scaling
    assert Acceleration.from_recipe(recipe.train, CPU).amp_mode == "off"


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_amp_step_runs_in_reduced_precision_and_updates_float32_weights(synth_root, mode):
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    recipe = tiny_recipe(synth_root, **{"train.amp": f'"{mode}"'})
    detector, method = built(recipe)
    detector.to(CUDA)
    method.to(CUDA)
    accel = Acceleration.from_recipe(recipe.train, CUDA)
    assert accel.dtype == (torch.float16 if mode == "fp16" else torch.bfloat16)
    assert accel.scaler.is_enabled() == (mode == "fp16")
    forward = accel.prepare(detector)
    conv = next(m for m in detector.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    seen: list[torch.dtype] = []
    conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    params = [p for p in detector.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = method.configure_optimizer(
        [{"params": params}], optimizer="adamw", lr=1e-3, weight_decay=0.0
    )
    x, y = random_batch(8, recipe.data.image_size)
    x, y = accel.images(x.to(CUDA)), y.to(CUDA)
    assert x.is_contiguous(memory_format=torch.channels_last)
    detector.train()
    for _ in range(5):  # the steps of EpochLoop._step (fp16 may skip the first on overflow)
        with accel.autocast():
            parts = method.training_loss(forward(x), y, torch.arange(8, device=CUDA))
        assert parts.loss.dtype == torch.float32 and torch.isfinite(parts.loss)
        optimizer.zero_grad(set_to_none=True)
        accel.scaler.scale(parts.loss).backward()
        accel.scaler.unscale_(optimizer)
        accel.scaler.step(optimizer)
        accel.scaler.update()
    assert seen and set(seen) == {accel.dtype}  # the convolutions ran in reduced precision
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
    if mode == "fp16":
        assert accel.scaler.get_scale() > 0


# -- channels-last --------------------------------------------------------------------------------
def test_channels_last_features_match_contiguous_and_the_cpu(synth_root):
    recipe = tiny_recipe(synth_root, **{"train.amp": '"off"'})
    detector, _ = built(recipe)
    plain = copy.deepcopy(detector).to(CUDA).eval()
    on_cpu = copy.deepcopy(detector).eval()
    detector.to(CUDA).eval()
    accel = Acceleration.from_recipe(recipe.train, CUDA)
    assert accel.channels_last and not accel.amp
    forward = accel.prepare(detector)
    weights = [p for p in detector.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    x, _ = random_batch(6, recipe.data.image_size, seed=3)
    with torch.no_grad():
        last = forward(accel.images(x.to(CUDA)))
        contiguous = plain.features(x.to(CUDA))
        reference = on_cpu.features(x)
    assert last.is_cuda and last.shape == (6, detector.feature_dim)
    assert_near(last, contiguous)
    assert_near(last, reference)


# -- the frozen feature cache ---------------------------------------------------------------------
def test_feature_cache_on_cuda_matches_the_cpu_and_is_reused(synth_root, tmp_path):
    from bnnkit.data.dataset import ImageDataset, build_transform
    from bnnkit.data.layouts import index_split
    from bnnkit.engine.features.cache import FEATURES_DIR, cached_features

    recipe = tiny_recipe(synth_root, **{"train.backbone": '"frozen"'})
    detector, method = built(recipe)
    on_cpu = copy.deepcopy(detector)
    detector.to(CUDA)
    method.to(CUDA)
    Acceleration.from_recipe(recipe.train, CUDA).prepare(detector)  # as the trainer does
    samples = index_split(synth_root, GENERATORS, "val", seed=0)
    transform = build_transform(
        recipe.data.image_size, recipe.data.preprocess, False, detector.normalisation
    )
    dataset = ImageDataset(samples, transform, GENERATORS)
    gpu_dir, cpu_dir = tmp_path / "gpu", tmp_path / "cpu"
    gpu = cached_features(detector, dataset, CUDA, recipe, "val", gpu_dir)
    cpu = cached_features(on_cpu, dataset, CPU, recipe, "val", cpu_dir)
    # the key depends on the weights, not on their device or memory layout
    entries = sorted(p.name for p in (gpu_dir / FEATURES_DIR).iterdir())
    assert len(entries) == len(GENERATORS)
    assert entries == sorted(p.name for p in (cpu_dir / FEATURES_DIR).iterdir())
    rows = gpu.features.materialise()
    assert rows.shape == (len(samples), detector.feature_dim) and rows.device == CPU
    assert_near(rows, cpu.features.materialise())
    assert torch.equal(gpu.labels, cpu.labels) and torch.equal(gpu.indices, cpu.indices)

    files = {p: p.stat().st_mtime_ns for p in gpu_dir.rglob("*") if p.is_file()}
    again = cached_features(detector, dataset, CUDA, recipe, "val", gpu_dir)
    assert {p: p.stat().st_mtime_ns for p in gpu_dir.rglob("*") if p.is_file()} == files
    assert torch.equal(again.features.materialise(), rows)

    # the head reads cached rows on the GPU
    method.head.eval()
    with torch.no_grad():
        logits = method.head(gpu.features.to(CUDA))
    assert logits.is_cuda and logits.shape == (len(samples), 2)
    assert torch.isfinite(logits).all()


# -- a quickstart run on cuda ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backbone", "amp"), [("finetune", "auto"), ("finetune", "fp16"), ("frozen", "auto")]
)
def test_quickstart_trains_and_evaluates_on_cuda(synth_root, tmp_path, backbone, amp):
    out = train_and_evaluate(
        QUICKSTART,
        tmp_path,
        data=synth_root,
        backbone=None,
        sets={
            "train.device": '"cuda"',
            "train.backbone": f'"{backbone}"',
            "train.amp": f'"{amp}"',
        },
        evaluate_args=("--no-plots", "--device", "cuda", "--ood", "midjourney"),
    )
    env = json.loads((out.run / "env.json").read_text(encoding="utf-8"))
    assert env["device"].startswith("cuda:"), env["device"]
    assert "cuda" in out.evaluate_output
    with (out.run / "history.csv").open(encoding="utf-8") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert losses and all(math.isfinite(v) for v in losses)  # no fp16 overflow, no NaN
    metrics = out.metrics
    assert 0.0 <= metrics["seen"]["accuracy"] <= 1.0
    assert metrics["ood_generators"] == ["midjourney"]
    auroc = metrics["ood"]["midjourney"]["scores"]["mutual_info"]["auroc"]
    assert 0.0 <= auroc <= 1.0
