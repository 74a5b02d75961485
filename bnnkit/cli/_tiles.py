"""The tiling options shared by ``bnnkit predict`` and ``bnnkit evaluate``
(see :mod:`bnnkit.engine.features.tiles`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

TILE_HELP = (
    "Judge each image from a grid of crops at the recipe's image size covering all of it "
    "(overlapping; images needing more than --max-tiles are downscaled first) instead of one "
    "centre crop; p(fake) and the uncertainty parts aggregate the tiles per posterior sample."
)


def tile_options(f: Callable) -> Callable:
    """``--tiles``, ``--max-tiles``, ``--tile-overlap``, ``--tile-reduce``, handed to the command
    as one ``tiling`` argument: ``None`` without ``--tiles``, else the keyword arguments of
    :func:`bnnkit.engine.predict.run.predict_run` (``tiles``, ``max_tiles``, ``tile_overlap``,
    ``tile_reduce``)."""

    @functools.wraps(f)
    def command(*args: Any, tiles: bool, max_tiles: int, tile_overlap: float, tile_reduce: str,
                **kwargs: Any) -> Any:  # fmt: skip
        tiling = None
        if tiles:
            tiling = {"tiles": True, "max_tiles": max_tiles, "tile_overlap": tile_overlap,
                      "tile_reduce": tile_reduce}  # fmt: skip
        return inner(*args, tiling=tiling, **kwargs)

    inner, f = f, command
    for option in reversed(
        [
            click.option("--tiles", is_flag=True, help=TILE_HELP),
            click.option(
                "--max-tiles", type=click.IntRange(min=1), default=64, show_default=True,
                help="At most this many tiles per image (with --tiles).",
            ),
            click.option(
                "--tile-overlap", type=click.FloatRange(0, 1, max_open=True), default=0.25,
                show_default=True, help="Overlap of neighbouring tiles (fraction of a tile).",
            ),
            click.option(
                "--tile-reduce", type=click.Choice(["mean", "max"]), default="mean",
                show_default=True,
                help="Per posterior sample, the image's p(fake): the mean over tiles, or the "
                "largest tile p(fake) (fake if any part is: local edits).",
            ),
        ]
    ):  # fmt: skip
        f = option(f)
    return f
