"""The four plugin hooks. Each receives a ``register`` callback (llm's style) and calls it once per
thing it provides. Signatures of ``register`` per kind:

- ``register_backbones(register)``: ``register(name, factory, *, catalog=None, summary="")``.
  ``factory(name, *, pretrained, **options) -> nn.Module`` mapping images ``(B,3,H,W)`` to a feature
  map ``(B,C,h,w)`` and exposing ``out_channels: int``. ``catalog``, when given, is a zero-argument
  callable listing every model name the factory can build (a family such as timm); ``name`` is
  then the family's name and a recipe may use any catalogued model name.
- ``register_attention(register)``: ``register(name, factory, *, summary="")`` with
  ``factory(channels, **options) -> nn.Module`` mapping ``(B,C,h,w)`` to ``(B,C,h,w)``.
- ``register_heads(register)``: ``register(name, factory, *, summary="")`` with
  ``factory(in_features, num_classes, **options) -> bnnkit.model.heads.Head``.
- ``register_methods(register)``: ``register(name, method_class, *, summary="")`` with a subclass
  of :class:`bnnkit.methods.base.InferenceMethod`.

Options a factory accepts are read from its keyword-only parameters with defaults, so recipes are
validated against them (unknown keys, wrong types) before anything is built.
"""

from __future__ import annotations

import pluggy

PROJECT = "bnnkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backbones(register):  # type: ignore[no-untyped-def]
    """Register backbones: ``register(name, factory, *, catalog=None, summary="")``."""


@hookspec
def register_attention(register):  # type: ignore[no-untyped-def]
    """Register attention blocks: ``register(name, factory, *, summary="")``."""


@hookspec
def register_heads(register):  # type: ignore[no-untyped-def]
    """Register heads: ``register(name, factory, *, summary="")``."""


@hookspec
def register_methods(register):  # type: ignore[no-untyped-def]
    """Register inference methods: ``register(name, method_class, *, summary="")``."""
