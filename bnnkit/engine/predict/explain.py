"""``--explain``: per image, an overlay PNG of where the detector looks and of the patch-wise
epistemic uncertainty, drawn from the feature maps of the same pass that gave the verdict.

Untiled (:func:`explain_hook`, a per-batch hook of the streaming loop) the maps cover the crop
the detector saw; tiled (:func:`tiled_explain_hook`, per image of
:func:`~bnnkit.engine.features.tiles.stream_tiled`) each tile's maps are stitched over the whole
(possibly downscaled) image, overlaps averaged, with the per-tile p(fake) as a third map.
Explaining draws extra posterior samples: the RNG is forked, so verdicts are the same with and
without ``--explain``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnnkit.data.dataset import Normalisation
from bnnkit.engine.features.loop import predict_features
from bnnkit.engine.features.tiles import TileGrid, TileResult, attention_maps
from bnnkit.metrics.records import Predictions

__all__ = ["ExplainWriter", "attention_maps", "explain_hook", "stitch", "tiled_explain_hook"]


def _denormalise(image: Tensor, norm: Normalisation):
    """A normalised ``(3, H, W)`` image back to displayable ``(H, W, 3)`` pixels in [0, 1], with
    the normalisation the detector was fed (``detector.normalisation``)."""
    return norm.denormalise(image.float().cpu()).clamp(0, 1).permute(1, 2, 0).numpy()


class ExplainWriter:
    """Writes one overlay PNG per image into ``folder`` with collision-free names."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.used: set[str] = set()

    def path_for(self, source: Path) -> Path:
        stem = source.stem or "image"
        name, i = f"{stem}.explain.png", 1
        while name in self.used:
            i += 1
            name = f"{stem}-{i}.explain.png"
        self.used.add(name)
        return self.folder / name


def _local_epistemic(method, fmap: Tensor, k: int, device) -> Tensor:
    """Every location's feature vector of the attention output (``fmap[N, c, h, w]``), sampled
    like a pooled feature: the epistemic part per location, ``[N, h, w]``."""
    n, c, h, w = fmap.shape
    local = predict_features(method, fmap.permute(0, 2, 3, 1).reshape(n * h * w, c), k, device)
    return local.epistemic.reshape(n, h, w)


def _forked(device: torch.device):
    accel = device.type != "cpu"
    return torch.random.fork_rng(
        devices=[device] if accel else [], device_type=device.type if accel else None
    )


def _title(path: Path, row: dict[str, Any]) -> str:
    return (
        f"{path.name}: {row['verdict']}, p(fake) {row['p_fake']:.3f}, "
        f"epistemic {row['epistemic']:.2g} nats"
    )


def _attempt(row: dict[str, Any], target: Path, draw: Callable[[], None]) -> None:
    row["explain"] = None
    try:
        draw()
        row["explain"] = str(target)
    except (OSError, ValueError, RuntimeError) as exc:
        row["error"] = f"explain failed: {exc}"


def explain_hook(detector, method, files, rows, k, device, folder) -> Callable:
    """The per-batch hook of untiled ``--explain``: an overlay PNG per image, written beside its
    row (``rows[index]["explain"]``)."""
    from bnnkit.report.explain import explain_figure
    from bnnkit.report.plots import save_figure

    writer = ExplainWriter(folder)

    def hook(batch, images: Tensor, fmap: Tensor, part: Predictions) -> None:
        maps, label = attention_maps(detector, fmap)
        for j, idx in enumerate(batch.indices.tolist()):
            row, target = rows[idx], writer.path_for(files[idx])
            title = _title(files[idx], row)

            def draw(j: int = j, title: str = title, target: Path = target) -> None:
                with _forked(device):
                    epistemic = _local_epistemic(method, fmap[j : j + 1], k, device)[0]
                fig = explain_figure(
                    _denormalise(images[j], detector.normalisation), maps[j].numpy(), label,
                    epistemic.numpy(), title,
                )  # fmt: skip
                save_figure(fig, target)

            _attempt(row, target, draw)

    return hook


def stitch(values: Tensor, grid: TileGrid) -> Tensor:
    """Per-tile maps ``values[T, C, h, w]`` placed over the ``grid``'s image: ``[C, H, W]``,
    each map stretched (bilinear) over its tile, overlaps averaged, padding cut off."""
    s, height, width = grid.size, grid.height, grid.width
    values = values.float().cpu()
    if values.shape[-2:] != (s, s):
        values = torch.nn.functional.interpolate(
            values, size=(s, s), mode="bilinear", align_corners=False
        )
    total = torch.zeros(values.shape[1], height, width)
    count = torch.zeros(1, height, width)
    for tile, (top, left) in zip(values, grid.boxes, strict=True):
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + s, height), min(left + s, width)
        total[:, y0:y1, x0:x1] += tile[:, y0 - top : y1 - top, x0 - left : x1 - left]
        count[:, y0:y1, x0:x1] += 1
    return total / count.clamp_min(1)


def tiled_explain_hook(
    detector, method, files: Sequence[Path], rows, k, device, folder
) -> Callable[[TileResult], None]:
    """The per-image hook of tiled ``--explain`` (call it after the row exists): the whole image
    with the stitched attention, per-tile p(fake) and epistemic maps."""
    from bnnkit.report.explain import tiled_explain_figure
    from bnnkit.report.plots import save_figure

    writer = ExplainWriter(folder)
    norm = detector.normalisation

    def hook(result: TileResult) -> None:
        row, target = rows[result.index], writer.path_for(files[result.index])
        grid = result.image.grid

        def draw() -> None:
            with _forked(device):
                epistemic = _local_epistemic(method, result.fmap, k, device)
            pixels = norm.denormalise(result.image.tiles.float().cpu()).clamp(0, 1)
            p_tile = result.probs[..., 1].mean(0).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
            fig = tiled_explain_figure(
                stitch(pixels, grid).permute(1, 2, 0).numpy(),
                stitch(result.maps[:, None], grid)[0].numpy(),
                result.map_label,
                stitch(p_tile, grid)[0].numpy(),
                stitch(epistemic[:, None], grid)[0].numpy(),
                grid,
                _title(files[result.index], row),
            )
            save_figure(fig, target)

        _attempt(row, target, draw)

    return hook
