"""The six plugin hooks. Each receives a ``register`` callback (llm's style) and calls it once per
thing it provides. Signatures of ``register`` per kind:

- ``register_frontends(register)``: ``register(name, factory, *, options=None, summary="")``
  with ``factory(in_channels, **options) -> nn.Module`` mapping images ``(B,in_channels,H,W)``
  to an image-like tensor ``(B,C',H',W')`` the backbone reads, and exposing ``out_channels: int``
  (``C'``; ``in_channels`` when absent). Fixed or learnable; its parameters and persistent
  buffers are saved with the detector. A backbone is built with ``in_chans=C'`` when ``C' != 3``.
- ``register_backbones(register)``: ``register(name, factory, *, catalog=None, options=None,
  summary="")``. ``factory(name, *, pretrained, **options) -> nn.Module`` mapping images
  ``(B,3,H,W)`` to a feature map ``(B,C,h,w)`` and exposing ``out_channels: int``. ``catalog``,
  when given, is a zero-argument callable listing every model name the factory can build (a
  family such as timm); ``name`` is then the family's name and a recipe may use any catalogued
  model name. ``factory`` receives ``in_chans=C`` (a keyword) only when the frontend gives
  ``C != 3`` channels.
- ``register_attention(register)``: ``register(name, factory, *, options=None, summary="")``
  with ``factory(channels, **options) -> nn.Module`` mapping ``(B,C,h,w)`` to ``(B,C,h,w)``.
- ``register_heads(register)``: ``register(name, factory, *, options=None, summary="")`` with
  ``factory(in_features, num_classes, **options) -> bnnkit.model.heads.Head``.
- ``register_methods(register)``: ``register(name, method_class, *, summary="")`` with a subclass
  of :class:`bnnkit.methods.base.InferenceMethod`.
- ``register_scores(register)``: ``register(name, score_class, *, summary="")`` with a subclass
  of :class:`bnnkit.scores.base.Score` (an OOD score: one number per image, higher = more likely
  from an unseen generator).

Options are declared once per plugin (:mod:`bnnkit.options`): the ``Options`` attribute of the
registered class, or ``options=`` (a :class:`~bnnkit.options.PluginOptions` subclass) for a
factory function. Recipes are validated against that declaration before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from bnnkit.options import PluginOptions

PROJECT = "bnnkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterBackbone(Protocol):
    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        catalog: Callable[[], Iterable[str]] | None = None,
        options: type[PluginOptions] | None = None,
        summary: str = "",
    ) -> None: ...


class RegisterPart(Protocol):
    """``register`` of frontends, attention blocks, heads, methods and scores."""

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        options: type[PluginOptions] | None = None,
        summary: str = "",
    ) -> None: ...


@hookspec
def register_frontends(register: RegisterPart) -> None:
    """Register frontends (image -> image-like tensor in front of the backbone):
    ``register(name, factory, *, options=None, summary="")``."""


@hookspec
def register_backbones(register: RegisterBackbone) -> None:
    """Register backbones, each with
    ``register(name, factory, *, catalog=None, options=None, summary="")``."""


@hookspec
def register_attention(register: RegisterPart) -> None:
    """Register attention blocks: ``register(name, factory, *, options=None, summary="")``."""


@hookspec
def register_heads(register: RegisterPart) -> None:
    """Register heads: ``register(name, factory, *, options=None, summary="")``."""


@hookspec
def register_methods(register: RegisterPart) -> None:
    """Register inference methods: ``register(name, method_class, *, summary="")``."""


@hookspec
def register_scores(register: RegisterPart) -> None:
    """Register OOD scores: ``register(name, score_class, *, summary="")``."""
