"""``bnnkit predict``: verdicts for image files with a trained (and evaluated) run.

Owns the prediction (:mod:`.run`) and ``--explain``'s overlays (:mod:`.explain`).

May import: :mod:`bnnkit.engine.features` (streaming, tiles), :mod:`bnnkit.engine.posthoc`
(the saved scores and temperature an evaluation and calibration left), ``build``, ``device`` and
the lower layers. Never train, evaluate or protocol.

``bnnkit.engine.predict`` was a module in bnnkit 0.1: its names still resolve here, with a
:class:`DeprecationWarning`, until the next release (import them from :mod:`.run`).
"""

from __future__ import annotations

from typing import Any

#: bnnkit 0.1's ``bnnkit.engine.predict`` names, now in :mod:`.run`
_OLD_NAMES = ("FIELDS", "PredictResult", "collect_files", "predict_run", "row_fields")


def __getattr__(name: str) -> Any:
    if name in _OLD_NAMES:
        from bnnkit.engine import moved_warning
        from bnnkit.engine.predict import run

        moved_warning(f"{__name__}.{name}", f"{run.__name__}.{name}")
        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
