"""``--explain`` figures: where the detector looks on an image and how sure it is there.

:func:`explain_figure` shows one crop (what the detector saw) with its attention and patch-wise
epistemic maps; :func:`tiled_explain_figure` shows the whole image of a tiled prediction with
the stitched attention, per-tile p(fake) and epistemic maps and the tile grid. Same style and
labelling rules as :mod:`bnnkit.report.plots`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bnnkit.report.plots import WIDTH, _style

__all__ = ["explain_figure", "tiled_explain_figure"]


def explain_figure(
    image: np.ndarray,
    attention: np.ndarray,
    attention_label: str,
    epistemic: np.ndarray,
    title: str,
) -> Figure:
    """The model's input image, the attention map over it, and the patch-wise epistemic map
    over it. ``image`` is ``H x W x 3`` in [0, 1]; the maps are ``h x w`` (feature-map grid),
    stretched bilinearly over the image."""
    import matplotlib

    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    with _style(), matplotlib.rc_context({"axes.grid": False}):
        fig = Figure(figsize=(WIDTH, 2.7), layout="constrained")
        ax_img, ax_att, ax_epi = fig.subplots(1, 3)
        ax_img.imshow(image, extent=extent)
        ax_img.set_title("input (as the detector sees it)")
        for ax, data, cmap, label in (
            (ax_att, attention, "viridis", attention_label),
            (ax_epi, epistemic, "magma", "epistemic uncertainty (nats)"),
        ):
            ax.imshow(image, extent=extent)
            shown = ax.imshow(
                np.asarray(data, float),
                extent=extent,
                cmap=cmap,
                alpha=0.55,
                interpolation="bilinear",
            )
            bar = fig.colorbar(shown, ax=ax, shrink=0.85)
            bar.set_label(label)
            ax.set_title(label.split(" (")[0])
        for ax in (ax_img, ax_att, ax_epi):
            ax.set(xlabel="x (pixels)", ylabel="y (pixels)")
        fig.suptitle(title)
    return fig


def tiled_explain_figure(
    image: np.ndarray,
    attention: np.ndarray,
    attention_label: str,
    p_fake: np.ndarray,
    epistemic: np.ndarray,
    grid: Any,
    title: str,
) -> Figure:
    """The whole image of a tiled prediction (``H x W x 3`` in [0, 1], as tiled: downscaled
    when ``grid.scale < 1``) and, over it, the stitched attention map, the per-tile p(fake)
    and the patch-wise epistemic map (each ``H x W``). ``grid`` (a ``TileGrid``: ``boxes``,
    ``size``, ``scale``) is outlined on the p(fake) panel."""
    import matplotlib
    from matplotlib.patches import Rectangle

    height, width = image.shape[:2]
    extent = (0, width, height, 0)
    aspect = height / max(width, 1)
    fig_height = float(np.clip(WIDTH * aspect + 0.9, 3.0, 9.0))
    with _style(), matplotlib.rc_context({"axes.grid": False}):
        fig = Figure(figsize=(WIDTH, fig_height), layout="constrained")
        (ax_img, ax_att), (ax_p, ax_epi) = fig.subplots(2, 2)
        ax_img.imshow(image, extent=extent)
        scale = "" if grid.scale == 1.0 else f", downscaled x{grid.scale:.3g}"
        ax_img.set_title(f"input ({len(grid.boxes)} tiles of {grid.size} px{scale})")
        panels = (
            (ax_att, attention, "viridis", attention_label, None),
            (ax_p, p_fake, "coolwarm", "p(fake) per tile", (0.0, 1.0)),
            (ax_epi, epistemic, "magma", "epistemic uncertainty (nats)", None),
        )
        for ax, data, cmap, label, limits in panels:
            ax.imshow(image, extent=extent)
            vmin, vmax = limits or (None, None)
            shown = ax.imshow(
                np.asarray(data, float), extent=extent, cmap=cmap, alpha=0.55,
                interpolation="bilinear", vmin=vmin, vmax=vmax,
            )  # fmt: skip
            bar = fig.colorbar(shown, ax=ax, shrink=0.85)
            bar.set_label(label)
            ax.set_title(label.split(" (")[0])
        for top, left in grid.boxes:
            ax_p.add_patch(
                Rectangle((left, top), grid.size, grid.size, fill=False, lw=0.4, ec="black")
            )
        ax_p.set(xlim=(0, width), ylim=(height, 0))
        for ax in (ax_img, ax_att, ax_p, ax_epi):
            ax.set(xlabel="x (pixels)", ylabel="y (pixels)")
        fig.suptitle(title)
    return fig
