"""Pooling that fits token backbones: ``model.pool = "cls"`` (the CLS embedding after the final
norm; for a CLIP image tower, times its projection: what UnivFD probes), ``gem``, the refusals,
and timm names with a pretrained tag in recipes."""

from __future__ import annotations

import pytest
import timm
import torch

from bnnkit.errors import RecipeError
from bnnkit.model.detector import Detector, build_detector, gem_pool
from bnnkit.plugins import get_registry
from bnnkit.recipe import validate
from plugins.backbone_timm import TimmBackbone, clip_projection_dim, create_timm_backbone
from plugins.head_linear import LinearHead

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(backbone: str = "test_vit", pool: str = "cls", **model):
    raw = {
        "data": {"image_size": 32},
        "model": {"backbone": {"name": backbone, "pretrained": False}, "pool": pool, **model},
        "inference": {"name": "map"},
    }
    return validate(raw, get_registry())


def test_cls_is_timms_pre_logits_of_a_token_pooled_copy() -> None:
    torch.manual_seed(0)
    backbone = create_timm_backbone("test_vit")
    ref = timm.create_model("test_vit", num_classes=0, global_pool="token").eval()
    ref.load_state_dict(backbone.model.state_dict())
    det = Detector(backbone, torch.nn.Identity(), LinearHead(backbone.out_channels, 2), pool="cls")
    det.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
        got = det.raw_features(x)
    assert det.feature_dim == ref.num_features == got.shape[1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_a_clip_style_projection_head_gives_the_projected_embedding() -> None:
    torch.manual_seed(0)
    # test_vit with an 8-wide head stands in for CLIP's projection (timm keeps it as the head)
    model = timm.create_model("test_vit", num_classes=8, global_pool="token").eval()
    ref = timm.create_model("test_vit", num_classes=8, global_pool="token").eval()
    ref.load_state_dict(model.state_dict())
    backbone = TimmBackbone(model, projection=True)
    assert backbone.has_projection and backbone.out_channels == model.num_features
    assert not any(k.startswith("projection.") for k in backbone.state_dict())  # map: not saved
    det = Detector(backbone, torch.nn.Identity(), LinearHead(8, 2), pool="cls").eval()
    assert det.feature_dim == 8
    assert {"projection.weight", "projection.bias"} <= set(backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(det.raw_features(x), ref(x), rtol=0, atol=1e-6)
        cls = ref.forward_head(ref.forward_features(x), pre_logits=True)
        torch.testing.assert_close(det.raw_features(x), ref.head(cls), rtol=0, atol=1e-6)
    # the map readout of the same kind of model leaves the projection out
    plain = TimmBackbone(timm.create_model("test_vit", num_classes=8), projection=True)
    assert plain(x).shape[1] == model.num_features


@pytest.mark.parametrize(
    ("name", "width"),
    [
        ("vit_large_patch14_clip_224.openai", 768),
        ("vit_large_patch14_clip_quickgelu_224.openai", 768),
        ("vit_base_patch16_clip_224.laion2b", 512),
        ("vit_large_patch14_clip_224.openai_ft_in1k", 0),  # an ImageNet classifier
        ("vit_base_patch16_clip_224.laion2b_ft_in12k_in1k", 0),
        ("vit_base_patch14_dinov2.lvd142m", 0),
        ("test_vit", 0),
    ],
)
def test_clip_image_towers_are_told_by_their_pretrained_config(name: str, width: int) -> None:
    from timm.models import get_pretrained_cfg

    assert clip_projection_dim(get_pretrained_cfg(name)) == width


def test_univfd_backbone_gives_the_768_wide_image_embedding() -> None:
    recipe = _recipe("vit_large_patch14_clip_224.openai")
    with torch.device("meta"):  # shapes only: no weights, no memory
        det = build_detector(recipe.model, "linear", get_registry())
    assert det.feature_dim == 768 and det.head.linear.in_features == 768
    assert det.backbone.projection.in_features == 1024
    with torch.device("meta"):
        avg = build_detector(_recipe("vit_large_patch14_clip_224.openai", "avg").model, "linear",
                             get_registry())  # fmt: skip
    assert avg.feature_dim == 1024 and not hasattr(avg.backbone, "projection")


def test_gem_is_the_generalised_mean_between_avg_and_max() -> None:
    fmap = torch.rand(2, 4, 3, 3) + 0.1
    expected = (fmap**3).mean(dim=(2, 3)) ** (1 / 3)
    torch.testing.assert_close(gem_pool(fmap), expected)
    assert (fmap.mean(dim=(2, 3)) <= gem_pool(fmap) + 1e-7).all()
    assert (gem_pool(fmap) <= fmap.amax(dim=(2, 3)) + 1e-7).all()
    torch.manual_seed(0)
    det = build_detector(_recipe("test_resnet", "gem").model, "linear", get_registry()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fm = det.feature_map(x)
        torch.testing.assert_close(
            det.raw_features(x), (fm.clamp_min(1e-6) ** 3).mean(dim=(2, 3)) ** (1 / 3)
        )


def test_choices_that_do_not_fit_the_backbone_are_refused() -> None:
    with pytest.raises(ValueError, match="pool = 'cls'.*CLS token"):
        build_detector(_recipe("test_resnet", "cls").model, "linear", get_registry())
    attention = {"attention": {"name": "se"}}
    with pytest.raises(ValueError, match="cannot weight"):
        build_detector(_recipe("test_vit", "cls", **attention).model, "linear", get_registry())
    with pytest.raises(RecipeError, match="model.pool"):
        _recipe("test_resnet", "median")


@pytest.mark.parametrize(
    "name",
    [
        "vit_large_patch14_clip_224.openai",
        "vit_base_patch14_dinov2.lvd142m",
        "timm/vit_base_patch16_clip_224.openai",
    ],
)
def test_timm_names_with_a_pretrained_tag_validate(name: str) -> None:
    assert _recipe(name).model.backbone.name == name


def test_an_unknown_tag_is_refused_with_the_known_ones() -> None:
    with pytest.raises(RecipeError) as info:
        _recipe("vit_base_patch16_clip_224.opena")
    message = str(info.value)
    assert "unknown pretrained tag 'opena' of backbone 'vit_base_patch16_clip_224'" in message
    assert "openai" in message and "laion2b" in message
    with pytest.raises(RecipeError, match="unknown backbone 'vit_base_patch16_clip_22'"):
        _recipe("vit_base_patch16_clip_22")
