"""The detector module and how a recipe's ``[model]`` section builds it."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from bnnkit.data.dataset import IMAGENET, Normalisation
from bnnkit.model.heads import Head


def backbone_normalisation(backbone: nn.Module) -> Normalisation:
    """The input normalisation a backbone module declares: attributes ``input_mean`` and
    ``input_std`` (3 numbers each, 0-1 pixel scale) and ``input_interpolation`` (``bilinear``,
    ``bicubic`` or ``nearest``). Missing ones default to ImageNet's mean/std and bilinear."""
    mean = getattr(backbone, "input_mean", None)
    std = getattr(backbone, "input_std", None)
    interpolation = getattr(backbone, "input_interpolation", None)
    if mean is None and std is None and interpolation is None:
        return IMAGENET
    try:
        return Normalisation(
            IMAGENET.mean if mean is None else tuple(mean),
            IMAGENET.std if std is None else tuple(std),
            IMAGENET.interpolation if interpolation is None else str(interpolation),
            source="backbone",
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"backbone {type(backbone).__name__} declares a bad input {exc}") from None


class Detector(nn.Module):
    """image -> backbone feature map -> attention (map -> map) -> global pool -> head -> logits.

    ``features`` stops before the head: it is what the frozen-backbone cache stores and what every
    inference method samples its head over, so the backbone runs once per image.

    ``normalisation`` is the input normalisation the detector's images must have (the backbone's
    own unless a recipe overrides it; for a loaded run, what it was trained with): every
    transform that feeds it (train, evaluate, predict) and ``--explain``'s display use it.
    """

    def __init__(self, backbone: nn.Module, attention: nn.Module, head: Head, pool: str = "avg"):
        super().__init__()
        self.backbone = backbone
        self.attention = attention
        self.head = head
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.normalisation: Normalisation = backbone_normalisation(backbone)

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.out_channels)

    def feature_map(self, images: Tensor) -> Tensor:
        return self.attention(self.backbone(images))

    def pool_features(self, fmap: Tensor) -> Tensor:
        """The global pooling of a :meth:`feature_map` to one feature vector per image."""
        return fmap.mean(dim=(2, 3)) if self.pool == "avg" else fmap.amax(dim=(2, 3))

    def features(self, images: Tensor) -> Tensor:
        return self.pool_features(self.feature_map(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def build_detector(model_cfg: Any, head_name: str, registry: Any, num_classes: int = 2) -> Detector:
    """Build a :class:`Detector` from a validated ``model`` recipe section."""
    bb = model_cfg.backbone
    backbone_entry = registry.get("backbone", bb.name)
    backbone = backbone_entry.obj(bb.name, pretrained=bb.pretrained, **bb.options())
    channels = int(backbone.out_channels)
    attention = registry.get("attention", model_cfg.attention.name).obj(
        channels, **model_cfg.attention.options()
    )
    head_opts = model_cfg.head.options() if model_cfg.head is not None else {}
    head = registry.get("head", head_name).obj(channels, num_classes, **head_opts)
    return Detector(backbone, attention, head, pool=model_cfg.pool)
