"""Tiled prediction: judge a whole image, not one centre crop of it.

A large photo seen through one ``data.image_size`` centre crop is judged from a small patch (of
sky, often). With a :class:`Tiling`, the image is covered by a grid of crops at the recipe's size
(:func:`tile_grid`: overlapping by ``overlap``; an image that would need more than ``max_tiles``
is first downscaled until it does not), every tile goes once through the backbone, and the K
posterior samples over the head are drawn for all tiles of an image in one call, so sample k is
the same head weights for every tile (methods whose noise is per row, MC dropout and the local
reparameterisation, draw it per tile anyway).

Aggregation (:func:`image_probs`), per posterior sample k: the image-level probability is the
mean over tiles of the tile probabilities (``reduce="mean"``, the image is a uniform mixture of
its tiles), or their maximum (``reduce="max"``: fake if any tile is, for local edits). The
image's p(fake) and its total / aleatoric / epistemic parts are the usual decomposition of those
K image-level predictives (:class:`~bnnkit.metrics.records.Predictions`), so total = aleatoric +
epistemic and epistemic stays the mutual information with the head weights. The spread across
tiles is reported beside them (:func:`tile_spread`): the largest and the standard deviation of
the per-tile p(fake) and ``tile_disagreement``, the information between the label and the tile
(mean over k of H(mean over tiles) minus the mean tile entropy, nats), which the mean mixture
counts as aleatoric.

:func:`attention_maps` (where the detector looks) lives here too: the tiled stream keeps it per
tile and ``--explain`` (:mod:`bnnkit.engine.predict.explain`) draws it, untiled or stitched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from bnnkit.data.dataset import INTERPOLATIONS, Broken, Normalisation
from bnnkit.engine.features.loop import StreamStats, head_probs, make_loader, worker_count
from bnnkit.errors import UsageError
from bnnkit.metrics.records import Predictions
from bnnkit.metrics.uncertainty import entropy

__all__ = [
    "REDUCTIONS",
    "TILE_FIELDS",
    "TileGrid",
    "TileResult",
    "TiledImage",
    "TiledTransform",
    "Tiling",
    "attention_maps",
    "image_probs",
    "make_tiling",
    "run_tiled",
    "stream_tiled",
    "tile_grid",
    "tile_spread",
    "tiling_of",
]

REDUCTIONS = ("mean", "max")
#: the extra columns of a tiled prediction row.
TILE_FIELDS = ["tiles", "tile_scale", "tile_p_fake_max", "tile_p_fake_sd", "tile_disagreement"]


@dataclass(frozen=True)
class Tiling:
    """How to tile: crops of ``size`` px overlapping by ``overlap`` (fraction of a tile), at most
    ``max_tiles`` per image (downscaling the image when it would need more), reduced per
    posterior sample by ``reduce`` (``mean`` or ``max``)."""

    size: int
    overlap: float = 0.25
    max_tiles: int = 64
    reduce: str = "mean"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"tile size must be >= 1, got {self.size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tile overlap must be in [0, 1), got {self.overlap}")
        if self.max_tiles < 1:
            raise ValueError(f"max tiles must be >= 1, got {self.max_tiles}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"tile reduce must be one of {', '.join(REDUCTIONS)}: {self.reduce}")

    @property
    def stride(self) -> int:
        return max(1, round(self.size * (1.0 - self.overlap)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_tiling(image_size: int, tiles: bool | Mapping[str, Any] | None) -> Tiling | None:
    """The tiling an option asks for: ``False``/``None`` none, ``True`` the defaults at the
    recipe's ``image_size``, a mapping ``Tiling``'s other fields (``overlap``, ``max_tiles``,
    ``reduce``). A bad value is a :class:`~bnnkit.errors.UsageError`."""
    if not tiles:
        return None
    try:
        return Tiling(int(image_size), **(dict(tiles) if isinstance(tiles, Mapping) else {}))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"tiles: {exc}") from None


def attention_maps(detector, fmap: Tensor) -> tuple[Tensor, str]:
    """Per-image ``(h, w)`` maps of where the detector looks, and what they are.

    Attention blocks that keep their spatial mask (``spatial``, ``cbam``: ``last_map``) give
    that mask; for the others (``none``, ``se``) the L2 norm over channels of the feature map
    after attention stands in for it."""
    mask = getattr(detector.attention, "last_map", None)
    if (
        isinstance(mask, torch.Tensor)
        and mask.ndim == 4
        and mask.shape[:2] == (fmap.shape[0], 1)
        and mask.shape[2:] == fmap.shape[2:]
    ):
        return mask[:, 0].float().cpu(), "attention mask (0-1)"
    return fmap.float().norm(dim=1).cpu(), "feature-map norm (no spatial mask)"


def _axis(length: int, size: int, stride: int) -> list[int]:
    """Tile offsets along one axis: evenly spaced from 0 to ``length - size`` with steps of at
    most ``stride``; one centred (padded, like a centre crop) tile when ``length <= size``."""
    if length <= size:
        return [-round((size - length) / 2)]
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def _count(width: int, height: int, tiling: Tiling) -> int:
    s, st = tiling.size, tiling.stride
    return len(_axis(width, s, st)) * len(_axis(height, s, st))


@dataclass(frozen=True)
class TileGrid:
    """The image is resized to ``width x height`` (``scale`` of its size; 1 = native pixels)
    and cut into ``size``-px tiles at ``boxes`` (``(top, left)`` each; negative or overhanging
    offsets are zero-padded)."""

    width: int
    height: int
    scale: float
    size: int
    boxes: tuple[tuple[int, int], ...]


def tile_grid(width: int, height: int, tiling: Tiling) -> TileGrid:
    """The grid for a ``width x height`` image: every pixel in at least one tile, at most
    ``tiling.max_tiles`` tiles (the largest downscale factor that fits is chosen)."""
    scale = 1.0
    if _count(width, height, tiling) > tiling.max_tiles:
        lo, hi = 0.0, 1.0  # fits(lo) holds (a single tile), fits(hi) does not
        for _ in range(40):
            mid = (lo + hi) / 2
            w, h = max(1, round(width * mid)), max(1, round(height * mid))
            lo, hi = (mid, hi) if _count(w, h, tiling) <= tiling.max_tiles else (lo, mid)
        scale = lo
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    s, st = tiling.size, tiling.stride
    boxes = tuple((t, x) for t in _axis(height, s, st) for x in _axis(width, s, st))
    return TileGrid(width, height, scale, s, boxes)


@dataclass
class TiledImage:
    """One image as normalised tiles ``[T, 3, size, size]`` cut at ``grid.boxes``."""

    tiles: Tensor
    grid: TileGrid


@dataclass(frozen=True)
class TiledTransform:
    """PIL image -> :class:`TiledImage` (the tiled counterpart of ``build_transform``'s eval
    transform; picklable for DataLoader workers). Downscaling uses the backbone's
    interpolation with antialiasing."""

    tiling: Tiling
    norm: Normalisation

    def __call__(self, image) -> TiledImage:
        pixels = F.to_image(image)
        grid = tile_grid(pixels.shape[-1], pixels.shape[-2], self.tiling)
        if grid.scale != 1.0:
            mode = INTERPOLATIONS[self.norm.interpolation]
            pixels = F.resize(pixels, [grid.height, grid.width], interpolation=mode, antialias=True)
        s = grid.size
        tiles = torch.stack([F.crop(pixels, t, x, s, s) for t, x in grid.boxes])
        tiles = F.to_dtype(tiles, torch.float32, scale=True)
        return TiledImage(self.norm.normalize()(tiles), grid)


def first_item(items: list) -> Any:
    """Collate for a loader of batch size 1 over tiled images: the item itself."""
    return items[0]


def p_fake_of(probs: Tensor) -> Tensor:
    """p(fake) from class probabilities ``[..., C]``: class 1 of two, else 1 - p(real) (a
    generator-attribution head, class 0 real)."""
    return probs[..., 1] if probs.shape[-1] == 2 else 1.0 - probs[..., 0]


def image_probs(probs: Tensor, reduce: str = "mean") -> Tensor:
    """Per posterior sample, the image-level class probabilities from the tiles' ``probs[K, T,
    C]``: ``[K, C]``, the mean over tiles, or (``max``) p(fake) = the largest tile p(fake)."""
    if reduce == "mean":
        return probs.mean(dim=1)
    if reduce == "max":
        p = p_fake_of(probs).amax(dim=1)
        return torch.stack([1.0 - p, p], dim=-1)
    raise ValueError(f"unknown tile reduction {reduce!r}: {', '.join(REDUCTIONS)}")


def tile_spread(probs: Tensor) -> dict[str, float]:
    """The spread across the tiles of one image (``probs[K, T, C]``): the largest and the
    standard deviation (over tiles, ddof 0) of the per-tile p(fake) (mean over k), and the
    tile disagreement (nats, >= 0): mean_k H(mean_t p_kt) - mean_kt H(p_kt)."""
    p64 = probs.double()
    per_tile = p_fake_of(p64).mean(dim=0)
    disagreement = entropy(p64.mean(dim=1)).mean() - entropy(p64).mean()
    return {
        "tiles": int(probs.shape[1]),
        "tile_p_fake_max": float(per_tile.max()),
        "tile_p_fake_sd": float(per_tile.std(correction=0)) if per_tile.numel() > 1 else 0.0,
        "tile_disagreement": max(0.0, float(disagreement)),
    }


@dataclass
class TileResult:
    """What the per-image hook of :func:`stream_tiled` gets: the dataset ``index``, the tiled
    image, the tiles' samples ``probs[K, T, 2]``, their attention-output feature maps and
    attention maps (``[T, c, h, w]`` on the device, ``[T, h, w]``; with ``keep_maps``), the
    image-level record (one entry) and the tile spread (``tile_scale`` included)."""

    index: int
    image: TiledImage
    probs: Tensor
    fmap: Tensor | None
    maps: Tensor | None
    map_label: str
    record: Predictions
    spread: dict[str, Any]


def _process(detector, method, group, k, device, batch_size, reduce, keep_maps, stats, hook):
    t0 = time.perf_counter()
    tiles = torch.cat([item[0].tiles for item in group])
    feats, fmaps, maps, label = [], [], [], ""
    for s in range(0, tiles.shape[0], batch_size):
        fmap = detector.feature_map(tiles[s : s + batch_size].to(device, non_blocking=True))
        feats.append(detector.pool_features(fmap).float())
        if keep_maps:  # the attention's mask belongs to this chunk: read it now
            chunk_maps, label = attention_maps(detector, fmap)
            fmaps.append(fmap)
            maps.append(chunk_maps)
    t1 = time.perf_counter()
    probs = head_probs(method, torch.cat(feats), k).float().cpu()  # one draw for the whole group
    counts = [item[0].tiles.shape[0] for item in group]
    per_image = probs.split(counts, dim=1)
    q = torch.stack([image_probs(p, reduce) for p in per_image], dim=1)
    record = Predictions.from_probs(
        q,
        labels=torch.tensor([item[1] for item in group], dtype=torch.long),
        generators=torch.tensor([item[2] for item in group], dtype=torch.long),
        indices=torch.tensor([item[3] for item in group], dtype=torch.long),
    )
    stats.features_seconds += t1 - t0
    stats.sampling_seconds += time.perf_counter() - t1
    spreads = []
    fmap_all = torch.cat(fmaps) if keep_maps else None
    maps_all = torch.cat(maps) if keep_maps else None
    for j, (item, p) in enumerate(zip(group, per_image, strict=True)):
        spread = {**tile_spread(p), "tile_scale": item[0].grid.scale}
        spreads.append(spread)
        start, end = sum(counts[:j]), sum(counts[: j + 1])
        if hook is not None:
            hook(
                TileResult(
                    item[3], item[0], p,
                    None if fmap_all is None else fmap_all[start:end],
                    None if maps_all is None else maps_all[start:end],
                    label, _one(record, j),
                    spread,
                )
            )  # fmt: skip
    return record, spreads


def _one(record: Predictions, j: int) -> Predictions:
    return record.select(slice(j, j + 1))


@torch.no_grad()
def stream_tiled(
    detector,
    method,
    loader,
    k: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    *,
    batch_size: int,
    reduce: str = "mean",
    on_image: Callable[[TileResult], None] | None = None,
    keep_maps: bool = False,
) -> tuple[Predictions, list[dict[str, Any]], StreamStats]:
    """The tiled counterpart of :func:`~bnnkit.engine.features.loop.stream_predictive`: ``loader``
    yields one ``(TiledImage, label, generator, index)`` (or a ``Broken``) at a time
    (``collate_fn=first_item``); images are grouped until they hold ``batch_size`` tiles, the
    backbone runs on chunks of ``batch_size`` tiles and the head is sampled once per group.
    Returns the image-level record, each image's tile spread (same order) and the stats."""
    detector.eval()
    method.head.eval()
    parts: list[Predictions] = []
    spreads: list[dict[str, Any]] = []
    stats = StreamStats()
    group: list = []

    def flush() -> None:
        if group:
            part, spread = _process(
                detector, method, group, k, device, batch_size, reduce, keep_maps, stats,
                on_image,
            )  # fmt: skip
            parts.append(part)
            spreads.extend(spread)
            if progress is not None:
                progress(len(group))
            group.clear()

    for item in loader:
        if isinstance(item, Broken):
            stats.broken.append(item)
            if progress is not None:
                progress(1)
            continue
        group.append(item)
        if sum(it[0].tiles.shape[0] for it in group) >= batch_size:
            flush()
    flush()
    return Predictions.concat(parts), spreads, stats


def tiling_of(transform: Any) -> Tiling | None:
    """The tiling of an evaluation transform (a :class:`TiledTransform`, possibly behind a
    degradation: an object whose ``then`` is one), else None."""
    while transform is not None and not isinstance(transform, TiledTransform):
        transform = getattr(transform, "then", None)
    return None if transform is None else transform.tiling


def run_tiled(detector, method, dataset, recipe, device, k: int, progress, label: str):
    """One evaluation condition over tiled images (``dataset`` yields :class:`TiledImage`):
    the image-level record and the stream stats, like ``stream_predictive``."""
    tiling = tiling_of(dataset.transform)
    loader = make_loader(
        dataset, 1, seed=recipe.seed, workers=worker_count(recipe.data.num_workers, device),
        device=device, collate_fn=first_item,
    )  # fmt: skip
    task = progress.add_task(f"evaluate: {label} (tiled)", total=len(dataset))
    torch.manual_seed(recipe.seed)
    record, _, stats = stream_tiled(
        detector, method, loader, k, device, lambda n: progress.advance(task, n),
        batch_size=recipe.eval.batch_size, reduce=tiling.reduce,
    )  # fmt: skip
    return record, stats
