"""The detector module and how a recipe's ``[model]`` section builds it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.data.dataset import IMAGENET, Normalisation
from bnnkit.model import frontend as frontends
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


class FeatureStandardiser(nn.Module):
    """Per-feature ``(x - mean) / std`` of the pooled features before the head, with ``mean``
    and ``std`` fit on the training features (:meth:`fit`); identity (0 and 1) until then.
    Saved with the detector (buffers ``standardiser.mean``/``.std``); a checkpoint from before
    they existed loads as identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_load_state_dict_pre_hook(self._identity_if_missing)

    def _identity_if_missing(self, module: Any, state: dict, prefix: str, *args: Any) -> None:
        if prefix + "mean" not in state and prefix + "std" not in state:  # an older checkpoint
            state[prefix + "mean"] = torch.zeros_like(self.mean)
            state[prefix + "std"] = torch.ones_like(self.std)

    @property
    def active(self) -> bool:
        return bool((self.mean != 0).any() or (self.std != 1).any())

    def reset(self) -> None:
        """Back to identity."""
        self.mean.zero_()
        self.std.fill_(1.0)

    @torch.no_grad()
    def fit(self, rows: Any, chunk: int = 65536) -> None:
        """Fit ``mean``/``std`` on ``rows`` (``N x dim``: a tensor or anything sliced into
        tensors, e.g. the cache's memory-mapped rows), in chunks, accumulated in float64.
        Features that (almost) do not vary keep scale 1, as scikit-learn's StandardScaler."""
        n = int(rows.shape[0])
        if n == 0:
            self.reset()
            return
        total = torch.zeros(self.mean.shape, dtype=torch.float64)
        squares = torch.zeros_like(total)
        for s in range(0, n, chunk):
            x = rows[s : s + chunk].detach().to("cpu", torch.float64)
            total += x.sum(0)
            squares += (x * x).sum(0)
        mean = total / n
        std = (squares / n - mean * mean).clamp_min(0).sqrt()
        flat = std <= 1e-6 * float(std.max()) + 1e-30
        std = torch.where(flat, torch.ones_like(std), std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))

    def forward(self, features: Tensor) -> Tensor:
        mean, std = self.mean.to(features.dtype), self.std.to(features.dtype)
        return (features - mean) / std

    def snapshot(self) -> Callable[[Tensor], Tensor]:
        """The transform with the current statistics, fixed (on the CPU): for lazily read rows."""
        mean, std = self.mean.detach().cpu().clone(), self.std.detach().cpu().clone()
        return lambda x: (x - mean.to(x.device, x.dtype)) / std.to(x.device, x.dtype)


#: global poolings of ``model.pool``: ``gem`` is generalised-mean pooling (:func:`gem_pool`),
#: ``cls`` a token backbone's CLS embedding (for a CLIP image tower: times its projection)
POOLS = ("avg", "max", "gem", "cls")
#: GeM's exponent (fixed: a frozen backbone's features are cached after pooling, so a learnt
#: exponent could not train there) and its floor
GEM_P, GEM_EPS = 3.0, 1e-6


def gem_pool(fmap: Tensor, p: float = GEM_P, eps: float = GEM_EPS) -> Tensor:
    """Generalised-mean pooling (Radenovic et al. 2018) of ``(B, C, h, w)`` to ``(B, C)``:
    ``mean(clamp(x, eps)^p)^(1/p)``; between average (``p = 1``) and max pooling (``p -> inf``).
    Activations are clamped at ``eps`` first, so it suits non-negative (post-ReLU) CNN maps."""
    return fmap.clamp_min(eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def select_pool(backbone: nn.Module, pool: str) -> None:
    """Prepare ``backbone`` for ``pool`` (before reading its ``out_channels``): ``cls`` switches
    it to its CLS readout (:meth:`use_cls_token`, whose width may differ: a CLIP projection),
    and a backbone without one is refused with a ``ValueError``. Idempotent."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if pool != "cls":
        return
    use_cls_token = getattr(backbone, "use_cls_token", None)
    if use_cls_token is None:
        raise ValueError(
            f"model.pool = 'cls' needs a backbone with a CLS token (a ViT-style timm "
            f"model); {type(backbone).__name__} has none: use pool = 'avg', 'max' or 'gem'"
        )
    use_cls_token()


class Detector(nn.Module):
    """image -> frontend -> backbone feature map -> attention (map -> map) -> global pool
    -> [standardiser] -> head -> logits.

    ``features`` stops before the head: it is what every inference method samples its head over,
    so the backbone runs once per image. ``raw_features`` stops before the standardiser: it is
    what the frozen-backbone cache stores (one extraction serves every run on that backbone,
    whatever statistics their training features give); every consumer of raw features hands
    them to the head through :meth:`standardise` (the cache's reader does it,
    :func:`bnnkit.engine.features.cache.cached_features`). The standardiser is identity unless the
    trainer fit it (``model.standardise``).

    ``frontend`` (:mod:`bnnkit.model.frontend`) is a module, or a registered frontend's name
    built with its default options (``"none"``, ``"laplacian"``: what ``input_filter`` was).

    ``normalisation`` is the input normalisation the detector's images must have (the backbone's
    own unless a recipe overrides it; for a loaded run, what it was trained with): every
    transform that feeds it (train, evaluate, predict) and ``--explain``'s display use it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        attention: nn.Module,
        head: Head,
        pool: str = "avg",
        frontend: nn.Module | str = "none",
    ):
        super().__init__()
        self.frontend = frontends.make_frontend(frontend) if isinstance(frontend, str) else frontend
        self.backbone = backbone
        self.attention = attention
        self.head = head
        select_pool(backbone, pool)  # cls: the CLS embedding, a (B, C, 1, 1) map
        self.pool = pool
        self.normalisation: Normalisation = backbone_normalisation(backbone)
        self.standardiser = FeatureStandardiser(int(backbone.out_channels))

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.out_channels)

    @property
    def frontend_name(self) -> str:
        return frontends.frontend_name(self.frontend)

    @property
    def input_filter_name(self) -> str:
        """The frontend's identity for the frozen-feature cache's key
        (:func:`bnnkit.model.frontend.frontend_key`: ``none``, ``laplacian``, or name, options
        and a digest of its saved tensors). Named after the ``input_filter`` it replaced."""
        return frontends.frontend_key(self.frontend)

    @property
    def input_filter(self) -> nn.Module:
        """The frontend (its name before frontends were plugins)."""
        return self.frontend

    def feature_map(self, images: Tensor) -> Tensor:
        return self.attention(self.backbone(self.frontend(images)))

    def pool_raw(self, fmap: Tensor) -> Tensor:
        """The global pooling of a :meth:`feature_map` to one raw feature vector per image."""
        if self.pool == "max":
            return fmap.amax(dim=(2, 3))
        return gem_pool(fmap) if self.pool == "gem" else fmap.mean(dim=(2, 3))

    def standardise(self, raw: Tensor) -> Tensor:
        """Raw pooled features -> the head's input (the fitted standardisation, or identity)."""
        return self.standardiser(raw)

    def pool_features(self, fmap: Tensor) -> Tensor:
        """The head's input from a :meth:`feature_map`: pooled, then standardised."""
        return self.standardise(self.pool_raw(fmap))

    def raw_features(self, images: Tensor) -> Tensor:
        """Pooled features before the standardiser (what the frozen cache stores)."""
        return self.pool_raw(self.feature_map(images))

    def features(self, images: Tensor) -> Tensor:
        return self.pool_features(self.feature_map(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


#: the number of classes a head gets when :func:`build_detector` is not told (2: real, fake);
#: :func:`head_classes` sets it while a recipe with ``data.labels = "generator"`` is built, so
#: every method's own ``build_detector`` gets the (1 + G)-class head without a new argument
_CLASSES: ContextVar[int] = ContextVar("bnnkit_head_classes", default=2)


@contextmanager
def head_classes(num_classes: int) -> Iterator[None]:
    """Heads built by :func:`build_detector` in this block have ``num_classes`` outputs."""
    token = _CLASSES.set(int(num_classes))
    try:
        yield
    finally:
        _CLASSES.reset(token)


def build_detector(
    model_cfg: Any, head_name: str, registry: Any, num_classes: int | None = None
) -> Detector:
    """Build a :class:`Detector` from a validated ``model`` recipe section (``num_classes``:
    default 2, or the one :func:`head_classes` sets)."""
    num_classes = _CLASSES.get() if num_classes is None else num_classes
    if model_cfg.pool == "cls" and model_cfg.attention.name != "none":
        raise ValueError(
            f"model.pool = 'cls' reads one CLS embedding per image, which attention "
            f"'{model_cfg.attention.name}' (a block over a feature map) cannot weight: set "
            "model.attention.name = 'none', or pool = 'avg' / 'max' / 'gem'"
        )
    fe = model_cfg.frontend
    frontend = frontends.make_frontend(fe.name, fe.options(), registry=registry)
    in_chans = frontends.frontend_channels(frontend)
    bb = model_cfg.backbone
    backbone_entry = registry.get("backbone", bb.name)
    extra = {} if in_chans == 3 else {"in_chans": in_chans}
    try:
        backbone = backbone_entry.obj(bb.name, pretrained=bb.pretrained, **bb.options(), **extra)
    except TypeError as exc:
        if not extra or "in_chans" not in str(exc):
            raise
        raise ValueError(
            f"frontend '{fe.name}' gives {in_chans} channels, and backbone '{bb.name}' takes no "
            f"in_chans (it reads 3-channel images): choose a 3-channel frontend"
        ) from None
    select_pool(backbone, model_cfg.pool)  # before out_channels: cls may project
    channels = int(backbone.out_channels)
    attention = registry.get("attention", model_cfg.attention.name).obj(
        channels, **model_cfg.attention.options()
    )
    head_opts = model_cfg.head.options() if model_cfg.head is not None else {}
    head = registry.get("head", head_name).obj(channels, num_classes, **head_opts)
    return Detector(backbone, attention, head, pool=model_cfg.pool, frontend=frontend)
