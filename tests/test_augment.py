"""Training augmentation ([data.augment]): each op against a direct torchvision call, recipe
validation, off by default, refused-by-warning with a frozen backbone, and augmented training
bit-identical across two seeded runs and after a kill (or stop) and resume mid-epoch."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUICKSTART, tiny_overrides, train_stopped
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.v2 import functional as F

from bnnkit.cli import main
from bnnkit.data.augment import FROZEN_NOTE, SeededSamples, is_active, sample_seed
from bnnkit.data.dataset import IMAGENET, build_transform
from bnnkit.recipe import RecipeError, load_recipe
from bnnkit.recipe_schema import AugmentConfig

SIZE = 48


def _image(seed: int = 0) -> Image.Image:
    """A textured RGB image (edges and noise, so blur and JPEG visibly change it)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    base[::8] = 255
    return Image.fromarray(base)


def _augmented(seed: int = 0, **settings: object) -> torch.Tensor:
    """The training transform with only ``settings`` on (no flip; ``resize`` to the image's own
    size is the identity), on the 0-1 scale, under ``torch.manual_seed(seed)``."""
    cfg = AugmentConfig(hflip=False, **settings)  # type: ignore[arg-type]
    tf = build_transform(SIZE, "resize", train=True, augment=cfg)
    torch.manual_seed(seed)
    return IMAGENET.denormalise(tf(_image()))


def _pixels() -> torch.Tensor:
    return F.pil_to_tensor(_image())


def _scaled(x: torch.Tensor) -> torch.Tensor:
    return F.to_dtype(x, torch.float32, scale=True)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5)


# -- each op ---------------------------------------------------------------------------------
def test_all_off_is_the_plain_transform():
    assert not is_active(AugmentConfig())
    torch.manual_seed(3)
    plain = build_transform(SIZE // 2, "crop", train=True)(_image())
    torch.manual_seed(3)
    off = build_transform(SIZE // 2, "crop", train=True, augment=AugmentConfig())(_image())
    assert torch.equal(plain, off)
    assert _close(_augmented(), _scaled(_pixels()))  # the reference the ops are checked on


def test_jpeg_matches_torchvision_and_changes_pixels():
    out = _augmented(jpeg_p=1.0, jpeg_quality=[30, 30])
    assert _close(out, _scaled(F.jpeg(_pixels(), 30)))
    assert (out - _scaled(_pixels())).abs().max() > 0.05


def test_blur_matches_torchvision_and_smooths():
    out = _augmented(blur_p=1.0, blur_sigma=[2.0, 2.0])
    ref = _scaled(F.gaussian_blur(_pixels(), kernel_size=[13, 13], sigma=[2.0, 2.0]))
    assert (out - ref).abs().max() <= 1 / 255 + 1e-5  # two 1-D passes: within one level
    assert (out - ref).abs().gt(1e-5).float().mean() < 0.01
    plain = _scaled(_pixels())

    def roughness(x: torch.Tensor) -> float:
        return float((x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(out) < 0.5 * roughness(plain)
    assert _close(_augmented(blur_p=1.0, blur_sigma=[0.0, 0.0]), plain)  # sigma 0: unchanged


def test_noise_matches_torchvision_on_the_same_seed():
    out = _augmented(seed=7, noise_p=1.0, noise_sigma=[0.05, 0.05])
    torch.manual_seed(7)
    ref = F.gaussian_noise(_scaled(_pixels()), sigma=0.05, clip=True)
    assert _close(out, ref) and not _close(out, _scaled(_pixels()))


def test_downscale_upscale_matches_torchvision():
    out = _augmented(resize_p=1.0, resize_scale=[0.5, 0.5])
    half = F.resize(_pixels(), [SIZE // 2, SIZE // 2], antialias=True)
    assert _close(out, _scaled(F.resize(half, [SIZE, SIZE], antialias=True)))
    assert out.shape == (3, SIZE, SIZE)


def test_grayscale_gives_equal_channels():
    out = _augmented(grayscale_p=1.0)
    assert _close(out[0], out[1]) and _close(out[1], out[2])
    assert not _close(out[0], _scaled(_pixels())[0])


def test_vflip_and_hflip_switches():
    seen = {_close(_augmented(seed=s, vflip=True), _scaled(_pixels()).flip(-2)) for s in range(12)}
    assert seen == {True, False}  # flipped on some seeds, not on others
    tf = build_transform(SIZE, "resize", train=True, augment=AugmentConfig(hflip=False))
    assert all(torch.equal(tf(_image()), tf(_image())) for _ in range(5))  # nothing random left


def test_probability_applies_sometimes():
    plain = _scaled(_pixels())
    changed = [not _close(_augmented(seed=s, jpeg_p=0.5), plain) for s in range(20)]
    assert 0 < sum(changed) < 20


# -- recipe ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("blur_sigma", "[3, 1]", "low <= high"),
        ("jpeg_quality", "[0, 100]", "[1, 100]"),
        ("resize_scale", "[0, 0.5]", "(0.0, 1.0]"),
        ("noise_sigma", "[0.1]", "[low, high]"),
        ("blur_p", "1.5", "less than or equal to 1"),
    ],
)
def test_bad_augment_settings_name_the_key_path(key, value, needle):
    with pytest.raises(RecipeError) as err:
        load_recipe(QUICKSTART, [f"data.augment.{key}={value}"])
    text = str(err.value)
    assert f"data.augment.{key}" in text and needle in text


def test_recipe_reads_cnndetection_settings():
    r = load_recipe(
        QUICKSTART,
        ["data.augment.blur_p=0.5", "data.augment.jpeg_p=0.5", "data.augment.vflip=true"],
    )
    a = r.data.augment
    assert (a.blur_sigma, a.jpeg_quality, a.hflip, a.vflip) == ([0.0, 3.0], [30, 100], True, True)
    assert is_active(a) and not is_active(load_recipe(QUICKSTART).data.augment)


# -- seeding ---------------------------------------------------------------------------------
class _Draws(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> float:
        return float(torch.rand(()))


def test_seeded_samples_depend_on_seed_phase_epoch_index_only():
    a = SeededSamples(_Draws(), 0, "joint", 2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    forward = [a[i] for i in range(6)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    torch.manual_seed(999)
    assert [a[i] for i in reversed(range(6))] == forward[::-1]  # order and state do not matter
    assert SeededSamples(_Draws(), 0, "joint", 3)[0] != forward[0]
    assert SeededSamples(_Draws(), 1, "joint", 2)[0] != forward[0]
    assert len({sample_seed(0, "joint", 2, i) for i in range(1000)}) == 1000


def test_frozen_backbone_warns_that_augmentation_is_ignored(tmp_path):
    from bnnkit.engine.train.data import TrainData
    from bnnkit.engine.train.distributed import DistInfo

    def datasets(*sets: str) -> None:
        r = load_recipe(QUICKSTART, list(sets))
        TrainData(r, torch.device("cpu"), DistInfo(), tmp_path).datasets(([], []), IMAGENET)

    with pytest.warns(UserWarning, match="no effect on cached frozen features"):
        datasets('train.backbone="frozen"', "data.augment.jpeg_p=0.5")
    assert "train.backbone = 'finetune'" in FROZEN_NOTE
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datasets("data.augment.jpeg_p=0.5")  # fine-tuned: used, no warning
        datasets('train.backbone="frozen"')  # frozen, augmentation off: no warning


# -- training: seeded and resumable ----------------------------------------------------------
AUGMENT = {
    "train.epochs": 2,
    "train.batch_size": 8,
    "data.augment.blur_p": 0.5,
    "data.augment.jpeg_p": 0.5,
    "data.augment.noise_p": 0.3,
    "data.augment.resize_p": 0.3,
    "data.augment.grayscale_p": 0.2,
    "data.augment.vflip": True,
}
#: the resumed run decodes in two DataLoader workers (the uninterrupted one in the training
#: process): the draws must not depend on which process makes them, nor on the batches skipped
WORKERS = {"data.num_workers": 2}


def _train(runner, synth_root: Path, runs: Path) -> Path:
    args = ["train", str(QUICKSTART), "--runs-dir", str(runs), "-q",
            *tiny_overrides(synth_root, **AUGMENT)]  # fmt: skip
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    (run,) = list(runs.iterdir())
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["complete"] is True
    return load_file(run / meta["files"]["model"])


def _history(run: Path) -> list[dict]:
    rows = json.loads((run / "checkpoint.json").read_text())["history"]
    return [{k: v for k, v in row.items() if "second" not in k and k != "time"} for row in rows]


def _same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"
    assert _history(a) == _history(b)


@pytest.fixture(scope="module")
def augmented_run(synth_root, tmp_path_factory):
    from click.testing import CliRunner

    return _train(CliRunner(), synth_root, tmp_path_factory.mktemp("augmented"))


def test_augmented_training_is_bit_identical_across_seeded_runs(
    augmented_run, synth_root, tmp_path, runner
):
    _same(augmented_run, _train(runner, synth_root, tmp_path))


def test_stop_mid_epoch_then_resume_is_bit_identical(
    augmented_run, synth_root, tmp_path, runner, monkeypatch
):
    """Stopped after step 3 of epoch 2 (a checkpoint *inside* the epoch: the resume skips the
    batches done and must draw the same augmentations for the rest), decoding in workers."""
    state = {"steps": 0}
    first_epoch_steps = json.loads((augmented_run / "checkpoint.json").read_text())["step"] // 2

    def stop_mid_epoch_two(self, step: int) -> None:
        state["steps"] += 1
        if state["steps"] == first_epoch_steps + 3:
            signal.raise_signal(signal.SIGINT)  # the trainer checkpoints and stops cleanly

    args = ["train", str(QUICKSTART), "--runs-dir", str(tmp_path), "-q",
            *tiny_overrides(synth_root, **AUGMENT, **WORKERS)]  # fmt: skip
    run = train_stopped(runner, monkeypatch, "after_step", stop_mid_epoch_two, args, tmp_path)
    position = json.loads((run / "checkpoint.json").read_text())["position"]
    assert position["epoch"] == 2 and position["step_in_epoch"] == 3
    result = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    _same(augmented_run, run)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    augmented_run, synth_root, tmp_path, runner
):
    from test_resume import _position, _start_and_wait

    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bnnkit", "train", str(QUICKSTART), "--runs-dir", str(runs),
           "-q", *tiny_overrides(synth_root, **AUGMENT, **WORKERS)]  # fmt: skip
    proc, run = _start_and_wait(cmd, runs, lambda r: (_position(r) or {}).get("epoch", 0) >= 2)
    proc.send_signal(signal.SIGKILL)  # during epoch 2 (its checkpoint is at its end)
    proc.wait()
    assert json.loads((run / "checkpoint.json").read_text())["complete"] is False
    result = runner.invoke(main, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    _same(augmented_run, run)


# -- the cost benchmark (a smoke test: tiny, no timing asserted) -------------------------------
def test_augment_benchmark_prints_its_figures(tmp_path):
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "augment.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--images", "6", "--side", "40", "--image-size", "32",
         "--rounds", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)
    assert set(result["ratio"]) == {"cnndetection", "all"}
    assert all(v > 0 for v in result["ms_per_image"].values())
    assert all(v > 0 for v in result["ratio"].values())
    assert isinstance(result["meets_targets"]["augment_over_plain"], bool)
    assert list(tmp_path.iterdir()) == []  # nothing written outside its temp folder
