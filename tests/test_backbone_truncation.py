"""``[model.backbone] out_index``: a timm model cut after one feature level (timm's
``features_only``), as NPR's ResNet-50 after layer2."""

from __future__ import annotations

import pytest
import timm
import torch

from bnnkit.errors import UsageError
from bnnkit_plugins.backbone_timm import create_timm_backbone


def test_the_map_is_the_full_models_after_that_level() -> None:
    torch.manual_seed(0)
    cut = create_timm_backbone("test_resnet", out_index=2).eval()
    full = timm.create_model("test_resnet", pretrained=False, num_classes=0, global_pool="")
    missing, unexpected = full.load_state_dict(cut.model.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("layer3.", "layer4.")) for k in missing)
    full.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = full.layer2(full.layer1(full.maxpool(full.act1(full.bn1(full.conv1(x))))))
        got = cut(x)
    torch.testing.assert_close(got, want)
    assert cut.out_channels == want.shape[1] == 48 and got.shape[-1] == 64 // 8
    assert not any(name.startswith(("layer3", "layer4")) for name, _ in cut.model.named_modules())


def test_a_level_the_model_lacks_names_the_key() -> None:
    with pytest.raises(UsageError, match=r"model\.backbone\.out_index = 9: .*such feature level"):
        create_timm_backbone("test_resnet", out_index=9)
    with pytest.raises(UsageError, match=r"model\.backbone\.out_index = 9: .*such feature level"):
        create_timm_backbone("test_vit", out_index=9)  # timm asserts instead of an IndexError


def test_a_cut_vit_has_a_map_but_no_cls_readout() -> None:
    vit = create_timm_backbone("test_vit", out_index=1)
    assert vit(torch.randn(1, 3, 160, 160)).shape == (1, vit.out_channels, 10, 10)
    with pytest.raises(ValueError, match="cut with model.backbone.out_index .* 'avg' or 'max'"):
        vit.use_cls_token()


@pytest.mark.parametrize("method", ["map", "bbb", "kflaplace", "ensemble"])
def test_the_npr_recipes_cut_resnet50_after_layer2(method) -> None:
    """Built weightless on the meta device: 512 channels, nothing after layer2."""
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import load_recipe

    bb = load_recipe(f"npr_{method}").model.backbone
    with torch.device("meta"):
        entry = get_registry().get("backbone", bb.name)
        backbone = entry.obj(bb.name, pretrained=False, **bb.options())
    assert backbone.out_channels == 512
    assert [n for n, _ in backbone.model.named_children()][-1] == "layer2"


def _build(mode: str, backbone: dict, **train):
    from bnnkit.engine.build import build
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import validate

    raw = {"seed": 0, "data": {"image_size": 32}, "model": {"backbone": backbone},
           "inference": {"name": "map"}, "train": {"backbone": mode, **train}}  # fmt: skip
    return build(validate(raw, get_registry()), num_train=8)[0]


def test_lora_and_partial_adapt_what_a_cut_model_keeps() -> None:
    cut = {"name": "test_resnet", "pretrained": False, "out_index": 2}
    body = [n for n, p in _build("lora", cut).backbone.named_parameters() if p.requires_grad]
    assert body and {n.split(".")[1] for n in body} == {"layer1", "layer2"}  # its last two
    assert all(".lora_A." in n or ".lora_B." in n for n in body)
    partial = _build("partial", cut, partial_blocks=1).backbone
    learn = [n for n, p in partial.named_parameters() if p.requires_grad]
    last = len(partial.model.layer2) - 1
    assert learn and all(n.startswith(f"model.layer2.{last}.") for n in learn)
    vit = {"name": "test_vit", "pretrained": False, "img_size": 32, "out_index": 3}
    body = [n for n, p in _build("lora", vit).backbone.named_parameters() if p.requires_grad]
    blocks = {int(n.split("blocks.")[1].split(".")[0]) for n in body}
    assert blocks == {0, 1, 2, 3}  # the blocks up to level 3; the pruned ones are gone
