"""The engine: what runs when a user trains, evaluates, predicts or runs a protocol.

One subpackage per thing a user does, over a shared base; each ``__init__`` says what it owns
and what it may import (``tests/test_run_layout.py`` checks the direction):

- :mod:`~bnnkit.engine.features`: images to pooled features and head outputs (loaders, the
  streaming loop, the feature cache and its store, standardisation, tiled streaming);
- :mod:`~bnnkit.engine.train`: ``bnnkit train`` (trainer, phases, epochs, data, checkpoints'
  state, signals, data parallelism, whole-detector ensembles);
- :mod:`~bnnkit.engine.posthoc`: what is fitted after training on the calibration split
  (``bnnkit calibrate``'s temperature, the score plugins' fits and the chosen score set);
- :mod:`~bnnkit.engine.evaluate`: ``bnnkit evaluate`` (the evaluation, its options, partial
  results, benchmarks, adversarial conditions, what it writes);
- :mod:`~bnnkit.engine.predict`: ``bnnkit predict`` (the per-image verdicts, ``--explain``);
- :mod:`~bnnkit.engine.protocol`: ``bnnkit protocol`` (cells, launchers, settings);
- ``build`` (a recipe or a run into a detector and method; ``recipes validate``'s construction
  check) and ``device`` (where to run; AMP, channels-last and compilation there), used by all.

Allowed imports: features < posthoc (features) < train (features), evaluate (features,
posthoc) < predict (features, posthoc) < protocol (train, evaluate). ``build`` and ``device``
import no subpackage; nothing here imports :mod:`bnnkit.api` or :mod:`bnnkit.cli`.

The flat module names of bnnkit 0.1 (``bnnkit.engine.loop``, ``bnnkit.engine.evaluation``, ...)
still import, with a :class:`DeprecationWarning`, until the next release: :data:`MOVED` maps
each to its new home.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Any

#: ``bnnkit.engine.<old>`` (bnnkit 0.1) -> ``bnnkit.engine.<new>``; removed in the next release.
#: ``bnnkit.engine.predict`` and ``bnnkit.engine.protocol`` are packages now: their old names
#: are kept by the packages themselves.
MOVED = {
    "loop": "features.loop",
    "cache": "features.cache",
    "feature_store": "features.store",
    "standardise": "features.standardise",
    "tiles": "features.tiles",
    "trainer": "train.trainer",
    "phases": "train.phases",
    "epochs": "train.epochs",
    "accel": "device",
    "signals": "train.signals",
    "train_data": "train.data",
    "run_state": "train.state",
    "distributed": "train.distributed",
    "members": "train.members",
    "check_build": "build",
    "evaluation": "evaluate.run",
    "eval_options": "evaluate.options",
    "eval_partial": "evaluate.partial",
    "score_fit": "posthoc.score_fit",
    "score_set": "posthoc.score_set",
    "calibrate": "posthoc.calibrate",
    "explain": "predict.explain",
    "protocol_launch": "protocol.launch",
    "protocol_settings": "protocol.settings",
}


def moved_warning(old: str, new: str, stacklevel: int = 2) -> None:
    """The :class:`DeprecationWarning` for an old ``bnnkit.engine`` name."""
    warnings.warn(
        f"{old} moved to {new} (bnnkit.engine is split by command); the old name is removed "
        "in the next release",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


class _Alias(importlib.abc.Loader):
    """Loads an old module name as the new module itself (one module object, two names)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import system set the alias's spec on it


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds ``bnnkit.engine.<old>`` for every old name in :data:`MOVED`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        old = fullname.removeprefix(f"{__name__}.")
        if old == fullname or old not in MOVED:
            return None
        new = f"{__name__}.{MOVED[old]}"
        moved_warning(fullname, new)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())


def __getattr__(name: str) -> Any:
    # `bnnkit.engine.loop` as an attribute, or `from bnnkit.engine import loop`: the old module
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
