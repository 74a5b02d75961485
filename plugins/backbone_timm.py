"""Backbone: any timm model by name, returning its feature map (before pooling and classifier).

``pretrained`` is ``false`` (random init), ``true`` (timm's hub weights; needs network or a warm
cache) or a path to local ``.pth``/``.safetensors`` weights. Hub failures are reported at once
with what to do instead (set ``HF_HUB_OFFLINE=1`` to make them immediate).

Input normalisation comes from the model's own pretrained config
(``timm.data.resolve_model_data_config``: e.g. CLIP's mean 0.4815/0.4578/0.4082 and std
0.2686/0.2613/0.2758, Inception-style 0.5/0.5, ImageNet's for most others), also with
``pretrained = false`` (timm attaches the config of the name's default or given tag either way).
It is declared as ``input_mean``/``input_std``/``input_interpolation``, which bnnkit records in
the run and uses in every transform. Interpolations torchvision cannot apply to tensors (``box``,
``hamming``, ``lanczos``) become ``bicubic``.

Readout: by default a ViT-style model's patch tokens are folded into a ``(B, C, h, w)`` grid
(its prefix tokens dropped), which the detector pools. :meth:`TimmBackbone.use_cls_token`
switches the backbone to its CLS embedding instead: row 0 of ``forward_features`` (after the
final norm; what timm's ``forward_head(pre_logits=True)`` gives with ``global_pool = "token"``)
as a ``(B, C, 1, 1)`` map. ``model.pool = "cls"`` does this, and the training-free methods'
ViT recipes use it (WePe and RIGID read DINOv2's CLS embedding).

Truncation: ``out_index = N`` builds the model with timm's ``features_only = True,
out_indices = (N,)``, which drops every block after feature level ``N``, and reads that level's
map (``out_channels`` = its channels). For a ResNet, levels 1-4 are ``layer1``-``layer4`` (0 is
the stem): NPR's network is a ResNet-50 cut after ``layer2`` (``out_index = 2``, 512 channels,
stride 8). A truncated model has no CLS readout. ``drop_path_rate`` is spread by timm over the
full model's depth before the cut, so the blocks kept get the smaller rates of the early blocks.

CLIP image towers (a timm name with a CLIP pretrained tag, e.g.
``vit_large_patch14_clip_224.openai``, whose pretrained config keeps CLIP's projection as the
model's ``head``; see
:func:`clip_projection_dim`) are built with that head, and their CLS readout is the *image
embedding*: the CLS row after the final norm times the projection (``out_channels`` = the
projection's width, 768 for ViT-L/14), i.e. ``model(x)`` of timm's model and what UnivFD
probes. With ``pool = "avg"``/``"max"`` the projection is left out (it maps one vector, not a
token grid) and is not part of the saved weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.errors import BnnkitError, UsageError
from bnnkit.hookspecs import RegisterBackbone
from bnnkit.options import Field, PluginOptions


class TimmBackbone(nn.Module):
    """A timm model whose ``forward`` gives a ``(B, C, h, w)`` map, ``C = out_channels``."""

    def __init__(self, model: nn.Module, *, projection: bool | None = None) -> None:
        """``projection``: whether the model's ``head`` is a CLIP-style projection of the CLS
        embedding (kept for the ``cls`` readout); ``None``: as :func:`clip_projection_dim`
        says of its pretrained config."""
        super().__init__()
        self.model = model
        #: a timm feature wrapper (``features_only``): ``model(x)`` is a list of maps, one level
        self.truncated = not callable(getattr(model, "forward_features", None))
        info = getattr(model, "feature_info", None)
        self.out_channels = int(info.channels()[-1] if self.truncated else model.num_features)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.input_mean, self.input_std, self.input_interpolation = _data_config(model)
        self.readout = "map"  # or "cls": see use_cls_token
        if projection is None:
            projection = clip_projection_dim(getattr(model, "pretrained_cfg", None) or {}) > 0
        head = getattr(model, "head", None)
        keep = projection and isinstance(head, nn.Linear) and self.has_cls_token
        # held outside the module tree until use_cls_token: a map readout neither uses nor saves it
        self._projection: list[nn.Linear] = [head] if keep else []
        if int(getattr(model, "num_classes", 0) or 0) and hasattr(model, "reset_classifier"):
            model.reset_classifier(0)

    @property
    def has_cls_token(self) -> bool:
        """Whether the model has a CLS token (timm puts it first among the prefix tokens)."""
        return getattr(self.model, "cls_token", None) is not None and self.num_prefix_tokens > 0

    def use_cls_token(self) -> None:
        """Make ``forward`` return the CLS embedding after the final norm, ``(B, C, 1, 1)``
        (see the module docstring). A model without a CLS token (a CNN, Swin, a ViT built
        with ``class_token = False``) raises ``ValueError``."""
        if self.truncated:
            raise ValueError(
                "model.pool = 'cls' reads the CLS token, which a backbone cut with "
                "model.backbone.out_index does not give: use pool = 'avg' or 'max'"
            )
        if not self.has_cls_token:
            kind = "tokens but no CLS token" if hasattr(self.model, "patch_embed") else "a map"
            raise ValueError(
                f"model.pool = 'cls' reads a ViT-style backbone's CLS token; timm model "
                f"'{type(self.model).__name__}' has {kind}: use pool = 'avg' or 'max'"
            )
        self.readout = "cls"
        if self._projection and getattr(self, "projection", None) is None:
            self.projection = self._projection[0]  # now a submodule: trained, saved, moved
            self.out_channels = int(self.projection.out_features)

    @property
    def has_projection(self) -> bool:
        """Whether the model came with a CLIP-style projection of its CLS embedding."""
        return bool(self._projection)

    def forward(self, images: Tensor) -> Tensor:
        if self.truncated:
            return self.model(images)[-1]
        out = self.model.forward_features(images)
        if self.readout == "cls":
            cls = out[:, 0]  # the CLS row after the final norm
            projection = getattr(self, "projection", None)
            if projection is not None:
                cls = projection(cls)
            return cls[:, :, None, None]
        if out.ndim == 4:
            if out.shape[1] != self.out_channels and out.shape[-1] == self.out_channels:
                out = out.permute(0, 3, 1, 2)  # NHWC models (e.g. some ConvNeXt/Swin variants)
            return out
        if out.ndim == 3:  # ViT-style tokens (B, N, C): drop prefix tokens, fold into a grid
            tokens = out[:, self.num_prefix_tokens :]
            n = tokens.shape[1]
            side = int(round(n**0.5))
            if side * side != n:
                return tokens.mean(1)[:, :, None, None]
            return tokens.transpose(1, 2).reshape(out.shape[0], -1, side, side)
        raise RuntimeError(f"unexpected timm feature shape {tuple(out.shape)}")


def _data_config(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``(mean, std, interpolation)`` of the model's pretrained config."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        interpolation = "bicubic"
    return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])), interpolation


class TimmOptions(PluginOptions):
    drop_path_rate: float = Field(
        0.0, ge=0, lt=1, description="stochastic depth rate (for models that have it)"
    )
    img_size: int | None = Field(
        None,
        ge=8,
        description="input size of a ViT-style model whose position embeddings fix it (e.g. 224 "
        "for DINOv2, built for 518; pretrained position embeddings are interpolated)",
    )
    out_index: int | None = Field(
        None,
        ge=0,
        description="cut the model after this feature level (timm features_only, out_indices="
        "(N,)); ResNet: 1-4 = layer1-layer4, NPR's is 2 (512 channels)",
    )


def create_timm_backbone(
    name: str, *, pretrained: bool | str = False, in_chans: int = 3, **options: Any
) -> TimmBackbone:
    """``pretrained``: false, true (hub weights) or a local weights file; ``in_chans``: the
    frontend's channel count (timm adapts a pretrained first layer to it); ``options``:
    :class:`TimmOptions`."""
    import timm

    opts = TimmOptions.parse(options, "model.backbone", owner="backbone 'timm'")
    name = name.split("/", 1)[1] if name.startswith("timm/") else name
    projection = 0 if opts.out_index is not None else _projection_of(name)
    kwargs: dict = {"num_classes": projection, "global_pool": ""}
    if opts.out_index is not None:  # timm's feature wrapper takes no classifier arguments
        kwargs = {"features_only": True, "out_indices": (opts.out_index,)}
    if in_chans != 3:
        kwargs["in_chans"] = int(in_chans)
    if opts.drop_path_rate:
        kwargs["drop_path_rate"] = opts.drop_path_rate
    if opts.img_size is not None:
        kwargs["img_size"] = opts.img_size
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise UsageError(
                f"model.backbone.pretrained: weights file '{pretrained}' does not exist",
                hint="give a .pth or .safetensors file, or true/false",
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    try:
        model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except (IndexError, AssertionError):  # timm's CNN / ViT feature wrappers
        if opts.out_index is None:
            raise
        raise UsageError(
            f"model.backbone.out_index = {opts.out_index}: timm model '{name}' has no such "
            "feature level",
            hint="a ResNet has levels 0 (stem) to 4 (layer4); see timm's model.feature_info",
        ) from None
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
        raise UsageError(
            f"model.backbone.img_size: timm model '{name}' takes no input size ({exc})",
            hint="img_size is for ViT-style models (vit_*, deit_*, ...); remove it here",
        ) from None
    except (RuntimeError, OSError, ValueError) as exc:
        if not pretrained:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise BnnkitError(
            f"could not load pretrained weights for timm model '{name}': {exc}",
            hint=(
                "no network to the model hub here"
                + (" (HF_HUB_OFFLINE is set)" if offline else "")
                + "; use model.backbone.pretrained = false, or a local weights file: "
                "--set model.backbone.pretrained='path/to/weights.safetensors'"
            ),
        ) from exc
    return TimmBackbone(model, projection=projection > 0)


#: a tag of an ImageNet(-21k) classifier fine-tuned from CLIP (its head is a classifier)
_CLASSIFIER_TAG = re.compile(r"(^|_)(ft_)?in\d+k")


def clip_projection_dim(cfg: Any) -> int:
    """The width of the CLIP projection a timm pretrained config keeps as the model's head
    (``vit_large_patch14_clip_224.openai``: 768), else 0. A CLIP image tower is a config whose
    architecture or tag names CLIP, with a head (``num_classes > 0``) that is not an ImageNet
    classifier (tags such as ``openai_ft_in12k_in1k``, ``laion2b_ft_in1k``)."""
    get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
    architecture, tag = str(get("architecture", "") or ""), str(get("tag", "") or "")
    if "clip" not in f"{architecture}.{tag}".lower() or _CLASSIFIER_TAG.search(tag):
        return 0
    return max(int(get("num_classes", 0) or 0), 0)


def _projection_of(name: str) -> int:
    """:func:`clip_projection_dim` of a timm name (with or without a pretrained tag)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError):  # an unknown name: create_model says so
        return 0
    return clip_projection_dim(cfg) if cfg is not None else 0


def _catalog() -> list[str]:
    """Every timm model name, and every name with a pretrained tag
    (``vit_large_patch14_clip_224.openai``): the tag picks the weights and the normalisation.
    Both lists are timm's local registry (no hub)."""
    import timm

    return [*timm.list_models(), *timm.list_pretrained()]


@hookimpl
def register_backbones(register: RegisterBackbone) -> None:
    register(
        "timm",
        create_timm_backbone,
        catalog=_catalog,
        options=TimmOptions,
        summary="any timm model by name (feature map before pooling)",
    )
