"""bnnkit: Bayesian detectors of AI-generated images on GenImage.

Plugin authors import :data:`hookimpl` from here, and declare options with
:class:`PluginOptions` and :func:`Field` (see :mod:`bnnkit.options`)::

    from bnnkit import Field, PluginOptions, hookimpl


    class BlockOptions(PluginOptions):
        scale: float = Field(0.5, gt=0, description="what the block multiplies by")


    @hookimpl
    def register_attention(register):
        register("myblock", MyBlock, options=BlockOptions)
"""

from __future__ import annotations

from typing import Any

from bnnkit._version import __version__
from bnnkit.hookspecs import hookimpl

__all__ = ["Field", "PluginOptions", "Run", "__version__", "hookimpl", "train"]


def __getattr__(name: str) -> Any:
    # lazy, so `import bnnkit` stays light (pydantic is imported on first use)
    if name in ("Field", "PluginOptions"):
        from bnnkit import options

        return getattr(options, name)
    if name in ("Run", "train"):  # the Python API (docs/api.md)
        from bnnkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'bnnkit' has no attribute {name!r}")
