"""Input normalisation: taken from the backbone (timm's pretrained config), overridable by the
recipe, recorded in the run and applied in train, evaluate, predict and ``--explain``; old runs
load as ImageNet; the frozen-feature cache keys on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as T

from bnnkit.data.dataset import (
    IMAGENET,
    FileDataset,
    ImageDataset,
    Normalisation,
    build_transform,
)

REPO = Path(__file__).resolve().parents[1]
CLIP_NAME = "vit_base_patch16_clip_224"  # timm's CLIP ViT-B/16 architecture
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_VIT = {"img_size": 32, "depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture()
def tiny_clip(monkeypatch):
    """timm's CLIP architecture (and its pretrained config) at toy width, depth and image size:
    the real ViT-B/16 would take seconds to build; the config timm attaches is the same."""
    import timm

    create = timm.create_model

    def small(name, *args, **kwargs):
        if "clip" in name:
            kwargs = {**kwargs, **TINY_VIT}
        return create(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", small)


def _normalize_of(transform: T.Compose) -> T.Normalize:
    (norm,) = [t for t in transform.transforms if isinstance(t, T.Normalize)]
    return norm


@pytest.fixture()
def applied(monkeypatch) -> dict[str, list[T.Compose]]:
    """The transforms datasets actually apply (num_workers = 0, so in this process)."""
    seen: dict[str, list[T.Compose]] = {"ImageDataset": [], "FileDataset": []}
    for cls in (ImageDataset, FileDataset):
        original = cls.__getitem__

        def spy(self, index, _original=original, _name=cls.__name__):
            seen[_name].append(self.transform)
            return _original(self, index)

        monkeypatch.setattr(cls, "__getitem__", spy)
    return seen


def _assert_uses(transforms: list[T.Compose], mean, std) -> None:
    assert transforms, "no image went through a dataset"
    for tf in transforms:
        norm = _normalize_of(tf)
        np.testing.assert_allclose(norm.mean, mean, rtol=0, atol=1e-7)
        np.testing.assert_allclose(norm.std, std, rtol=0, atol=1e-7)


# -- the backbone's own normalisation -------------------------------------------------------------
def test_timm_backbones_declare_their_pretrained_normalisation(tiny_clip):
    from bnnkit.model.detector import backbone_normalisation
    from bnnkit_plugins.backbone_timm import create_timm_backbone

    clip = backbone_normalisation(create_timm_backbone(CLIP_NAME, pretrained=False))
    np.testing.assert_allclose(clip.mean, CLIP_MEAN)
    np.testing.assert_allclose(clip.std, CLIP_STD)
    assert clip.interpolation == "bicubic" and clip.source == "backbone"
    # timm's test models carry Inception-style 0.5/0.5 configs; test_efficientnet ImageNet's
    assert backbone_normalisation(create_timm_backbone("test_resnet")) == Normalisation(
        (0.5,) * 3, (0.5,) * 3, "bilinear"
    )
    eff = backbone_normalisation(create_timm_backbone("test_efficientnet"))
    assert (eff.mean, eff.std) == (IMAGENET.mean, IMAGENET.std)


def test_plugin_backbone_declares_or_defaults_to_imagenet():
    from bnnkit.model.detector import backbone_normalisation

    plain = nn.Conv2d(3, 4, 3)
    assert backbone_normalisation(plain) == IMAGENET
    plain.input_mean, plain.input_std = (0.5, 0.5, 0.5), [0.25, 0.25, 0.25]
    declared = backbone_normalisation(plain)
    assert declared.mean == (0.5,) * 3 and declared.std == (0.25,) * 3
    assert declared.interpolation == "bilinear"
    plain.input_std = (0.25, 0.0, 0.25)
    with pytest.raises(ValueError, match="std must be > 0"):
        backbone_normalisation(plain)


def test_transform_normalises_and_resizes_as_told():
    norm = Normalisation(CLIP_MEAN, CLIP_STD, "bicubic")
    image = Image.new("RGB", (40, 40), (200, 100, 50))
    out = build_transform(32, "crop", train=False, norm=norm)(image)
    expected = (torch.tensor([200, 100, 50]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(
        CLIP_STD
    )
    torch.testing.assert_close(out[:, 0, 0], expected.float())
    torch.testing.assert_close(norm.denormalise(out)[:, 5, 5], torch.tensor([200, 100, 50]) / 255)
    (resize,) = [
        t for t in build_transform(32, "resize", False, norm).transforms if isinstance(t, T.Resize)
    ]
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert Normalisation.from_dict(None) == IMAGENET  # runs from before it was recorded
    assert Normalisation.from_dict(norm.to_dict()) == norm


# -- recipes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["data.mean=[0.5, 0.5, 0.5]"], "data.mean: also give data.std"),
        (["data.mean=[0.5, 0.5]", "data.std=[0.5, 0.5, 0.5]"], "data.mean: needs 3 values"),
        (["data.mean=[123.7, 116.3, 103.5]", "data.std=[58.4, 57.1, 57.4]"], "not 0-255"),
        (["data.mean=[0.5, 0.5, 0.5]", "data.std=[0.5, 0, 0.5]"], r"data.std: values must be"),
        (['data.interpolation="lanczos"'], "data.interpolation"),
    ],
)
def test_recipe_rejects_bad_normalisation(sets, message):
    from bnnkit.errors import RecipeError
    from bnnkit.recipe import load_recipe

    with pytest.raises(RecipeError, match=message):
        load_recipe(REPO / "recipes" / "quickstart.toml", sets)


def test_recipe_override_wins_over_the_backbone():
    from bnnkit.engine.build import build
    from bnnkit.recipe import load_recipe

    recipe = load_recipe(
        REPO / "recipes" / "quickstart.toml",
        ["data.mean=[0.1, 0.2, 0.3]", "data.std=[0.4, 0.5, 0.6]"],
    )
    detector, _ = build(recipe, num_train=4)
    assert detector.normalisation == Normalisation((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bilinear")
    assert detector.normalisation.source == "recipe"
    # without the override: test_resnet's own (0.5/0.5), not ImageNet's
    detector, _ = build(load_recipe(REPO / "recipes" / "quickstart.toml"), num_train=4)
    assert detector.normalisation.mean == (0.5, 0.5, 0.5)


def test_feature_cache_key_changes_with_the_normalisation():
    from bnnkit.engine.build import build
    from bnnkit.engine.features.cache import feature_key
    from bnnkit.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "quickstart.toml")
    torch.manual_seed(0)
    detector, _ = build(recipe, num_train=4)
    before = feature_key(detector, recipe, "train", [])
    assert feature_key(detector, recipe, "train", []) == before
    for other in (IMAGENET, Normalisation((0.5,) * 3, (0.5,) * 3, "bicubic")):
        detector.normalisation = other  # test_resnet's own is 0.5/0.5 bilinear
        assert feature_key(detector, recipe, "train", []) != before


# -- a CLIP-named backbone through train, evaluate, predict and --explain -------------------------
def _sets(root: Path, **extra: object) -> list[str]:
    values = {
        "data.root": f'"{root}"', "data.image_size": 32, "data.num_workers": 0,
        "model.backbone.name": f'"{CLIP_NAME}"', "model.backbone.pretrained": "false",
        "train.epochs": 1, "train.batch_size": 16, "train.backbone": '"frozen"',
        "eval.samples": 4,
        # quickstart's high-pass filter would hide the normalised pixels from the backbone spy
        "model.frontend": '{name = "none"}', **extra,
    }  # fmt: skip
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _train(runner, root: Path, runs: Path, **extra: object) -> Path:
    from bnnkit.cli import main

    recipe = str(REPO / "recipes" / "quickstart.toml")
    args = ["train", recipe, "--runs-dir", str(runs), "-q", *_sets(root, **extra)]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def _backbone_inputs(monkeypatch) -> list[torch.Tensor]:
    from bnnkit_plugins.backbone_timm import TimmBackbone

    inputs: list[torch.Tensor] = []
    forward = TimmBackbone.forward

    def spy(self, images):
        inputs.append(images.detach().clone())
        return forward(self, images)

    monkeypatch.setattr(TimmBackbone, "forward", spy)
    return inputs


def test_clip_backbone_run_records_and_uses_clip_normalisation(
    synth_root, runner, tmp_path, monkeypatch, tiny_clip, applied
):
    from bnnkit.cli import main

    monkeypatch.chdir(tmp_path)  # the feature cache stays in tmp
    run = _train(runner, synth_root, tmp_path / "runs")
    _assert_uses(applied["ImageDataset"], CLIP_MEAN, CLIP_STD)  # train (and its val split)
    meta = json.loads((run / "checkpoint.json").read_text())
    np.testing.assert_allclose(meta["normalisation"]["mean"], CLIP_MEAN)
    np.testing.assert_allclose(meta["normalisation"]["std"], CLIP_STD)
    assert meta["normalisation"]["interpolation"] == "bicubic"

    applied["ImageDataset"].clear()
    result = runner.invoke(main, ["evaluate", str(run), "--no-plots"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _assert_uses(applied["ImageDataset"], CLIP_MEAN, CLIP_STD)

    # predict and --explain on a uniform image: the backbone sees (c - mean) / std, and the
    # explain figure shows the original colour again
    colour = (200, 100, 50)
    Image.new("RGB", (32, 32), colour).save(tmp_path / "flat.png")
    inputs = _backbone_inputs(monkeypatch)
    shown: list[np.ndarray] = []
    import bnnkit.report.explain as plots

    figure = plots.explain_figure

    def explain_spy(image, *args, **kwargs):
        shown.append(image)
        return figure(image, *args, **kwargs)

    monkeypatch.setattr(plots, "explain_figure", explain_spy)
    args = ["predict", str(run), str(tmp_path / "flat.png"), "--format", "json", "--explain"]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    _assert_uses(applied["FileDataset"], CLIP_MEAN, CLIP_STD)
    c = torch.tensor(colour) / 255
    expected = ((c - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1)
    (seen,) = inputs
    torch.testing.assert_close(seen, expected.expand_as(seen).float())
    (image,) = shown
    np.testing.assert_allclose(image, np.broadcast_to(c.numpy(), image.shape), atol=1e-6)


def test_old_run_without_recorded_normalisation_loads_as_imagenet(
    synth_root, runner, tmp_path, monkeypatch, tiny_clip, applied
):
    from bnnkit.cli import main
    from bnnkit.engine.build import load_run

    monkeypatch.chdir(tmp_path)
    run = _train(runner, synth_root, tmp_path / "runs")
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    meta = json.loads((old / "checkpoint.json").read_text())
    del meta["normalisation"]  # as written before normalisation was recorded
    (old / "checkpoint.json").write_text(json.dumps(meta))
    _, detector, _, _ = load_run(old, torch.device("cpu"))
    assert detector.normalisation == IMAGENET
    _, detector, _, _ = load_run(run, torch.device("cpu"))
    assert detector.normalisation.mean == pytest.approx(CLIP_MEAN)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "x.png")
    result = runner.invoke(main, ["predict", str(old), str(tmp_path / "x.png"), "--format", "json"])
    assert result.exit_code == 0, result.output
    _assert_uses(applied["FileDataset"], IMAGENET.mean, IMAGENET.std)


def test_timm_img_size_option_sets_a_vits_input_size_and_is_refused_elsewhere():
    """``model.backbone.img_size``: a ViT built for 160 px (timm's test_vit) is built for 32 px
    instead (2 x 2 patches of 16 px, its position embeddings sized to match); a CNN, which has no
    such argument, gets a clear error."""
    from bnnkit.errors import UsageError
    from bnnkit_plugins.backbone_timm import create_timm_backbone

    assert create_timm_backbone("test_vit").model.patch_embed.img_size == (160, 160)
    vit = create_timm_backbone("test_vit", img_size=32)
    assert vit.model.patch_embed.img_size == (32, 32)
    assert vit(torch.zeros(1, 3, 32, 32)).shape[-2:] == (2, 2)
    with pytest.raises(UsageError, match="model.backbone.img_size"):
        create_timm_backbone("test_resnet", img_size=32)
