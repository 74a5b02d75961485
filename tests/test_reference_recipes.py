"""The reference recipes (UnivFD, NPR, CNNSpot, DINOv2 + LoRA, CLIP + LoRA, each x map / bbb /
kflaplace / ensemble): generated from one template, valid offline without building a model,
and each family's tiny stand-in trains -> evaluates -> predicts end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
import types
from pathlib import Path

import pytest
from helpers import REPO, invoke, recipe, train_and_evaluate

from bnnkit.recipes_bundled import bundled

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("univfd", "npr", "cnnspot", "dinov2_lora", "clip_lora")
METHODS = ("map", "bbb", "kflaplace", "ensemble")
NAMES = [f"{f}_{m}" for f in FAMILIES for m in METHODS]
VIT = {"model.backbone.name": '"test_vit"', "model.backbone.img_size": 32}
CNN = {"model.backbone.name": '"test_resnet"'}
#: one method per family for the end-to-end run (CI time), covering all four between them
END_TO_END = {
    "univfd": ("kflaplace", VIT),  # a Laplace posterior over a frozen cls probe
    "npr": ("map", CNN),
    "cnnspot": ("bbb", CNN),  # blur + JPEG augmentation on while fine-tuning
    "dinov2_lora": ("ensemble", VIT),
    "clip_lora": ("map", VIT),
}


def _generator() -> types.ModuleType:
    path = REPO / "docs" / "gen_reference_recipes.py"
    spec = importlib.util.spec_from_file_location("gen_reference_recipes", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_recipes_are_the_template_and_bundled() -> None:
    files = _generator().files()
    assert sorted(p.stem for p in files) == sorted(NAMES)
    stale = [p.name for p, text in files.items() if recipe(p.stem).read_text() != text]
    assert not stale, f"{stale} differ from the template: python docs/gen_reference_recipes.py"
    assert set(NAMES) <= set(bundled()), "reference recipes missing from bnnkit_recipes"


def test_every_reference_recipe_validates_offline_without_weights(monkeypatch) -> None:
    """`recipes validate` builds the backbone without weights (``pretrained`` forced to false,
    on the meta device) although every recipe has ``pretrained = true``: nothing is fetched."""
    import huggingface_hub
    import timm

    create = timm.create_model
    asked: list[object] = []

    def no_weights(*args, **kwargs):
        asked.append(kwargs.get("pretrained"))
        return create(*args, **kwargs)

    def no_hub(*args, **kwargs):
        raise AssertionError("recipes validate reached the hub")

    monkeypatch.setattr(timm, "create_model", no_weights)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    for name in NAMES:
        raw = tomllib.loads(bundled()[name])
        assert raw["model"]["backbone"]["pretrained"] is True
        assert raw["data"]["train_generators"] == ["sdv4"] and len(raw["data"]["holdout"]) == 7
        assert "ok" in invoke(["recipes", "validate", name])
        family, method = next((f, m) for f in FAMILIES for m in METHODS if name == f"{f}_{m}")
        stand_in = VIT if END_TO_END[family][1] is VIT else CNN
        sets = {**stand_in, "model.backbone.pretrained": "false", "data.image_size": 32}
        args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        assert "ok" in invoke(["recipes", "validate", name, *args]), (family, method)
    assert asked and not any(asked), f"a backbone was asked for weights: {asked}"


def test_listed_with_the_paper_each_follows() -> None:
    listed = json.loads(invoke(["recipes", "list", "--json"]))
    papers = {"univfd": "UnivFD", "npr": "NPR", "cnnspot": "CNNSpot", "dinov2_lora": "DINOv2",
              "clip_lora": "CLIP"}  # fmt: skip
    for name in NAMES:
        family = name.rsplit("_", 1)[0]
        assert listed[name].startswith(papers[family]), listed[name]
        assert "What differs" in bundled()[name]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_stand_in_trains_evaluates_and_predicts(family, synth_root, tmp_path) -> None:
    method, backbone = END_TO_END[family]
    sets = {**backbone, "model.backbone.pretrained": False, "train.batch_size": 8}
    done = train_and_evaluate(
        recipe(f"{family}_{method}"), tmp_path, data=synth_root, sets=sets, backbone=None
    )
    assert done.meta["complete"] and done.meta["method"] == method
    per_generator = done.metrics["per_generator"]
    assert len(per_generator) == 8 and [g for g, m in per_generator.items() if m["seen"]] == [
        "sdv4"
    ], "trained on SD1.4, evaluated on all eight generators"
    saved = tomllib.loads((done.run / "recipe.toml").read_text(encoding="utf-8"))
    if family == "npr":
        assert saved["model"]["frontend"]["name"] == "npr"
    if family == "cnnspot":
        assert saved["data"]["augment"]["blur_p"] == saved["data"]["augment"]["jpeg_p"] == 0.5
    if family.endswith("_lora"):
        assert done.meta["base"]["mode"] == "lora"
    if family in ("univfd", "dinov2_lora", "clip_lora"):
        assert saved["model"]["pool"] == "cls"
    image = next(Path(synth_root, "imagenet_glide").rglob("*.png"), None) or next(
        Path(synth_root).rglob("*.png")
    )
    out = invoke(["predict", str(done.run), str(image)])
    assert image.name in out


@pytest.mark.parametrize("name", ["univfd_map", "clip_lora_map", "dinov2_lora_map"])
def test_vit_recipes_read_the_towers_embedding_with_its_own_normalisation(name) -> None:
    """Built weightless on the meta device: the CLIP recipes get CLIP's normalisation, QuickGELU
    (OpenAI's activation) and the 768-d projected CLS embedding; DINOv2 ImageNet's and 768."""
    import torch

    from bnnkit.model.detector import select_pool
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import load_recipe

    bb = load_recipe(name).model.backbone
    with torch.device("meta"):
        backbone = (
            get_registry().get("backbone", bb.name).obj(bb.name, pretrained=False, **bb.options())
        )
        select_pool(backbone, "cls")
    clip = name.startswith(("univfd", "clip"))
    mean = (0.48145466, 0.4578275, 0.40821073) if clip else (0.485, 0.456, 0.406)
    assert backbone.input_mean == pytest.approx(mean)
    assert backbone.out_channels == 768
    act = type(backbone.model.blocks[0].mlp.act).__name__
    assert act == ("QuickGELU" if clip else "GELU")
