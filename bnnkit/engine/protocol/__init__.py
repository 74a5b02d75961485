"""``bnnkit protocol``: GenImage's tables as sets of ordinary runs.

Owns the cells and their planning (:mod:`.cells`), the driver that runs them and writes the
tables (:mod:`.run`), the launchers (:mod:`.launch`: local, workers, SLURM) and the check that
an output folder holds the same settings (:mod:`.settings`). A cell trains and evaluates
through :func:`bnnkit.engine.train.run.train_run` and
:func:`bnnkit.engine.evaluate.run.evaluate_run_dir`, never through :mod:`bnnkit.api`.

May import: :mod:`bnnkit.engine.train`, :mod:`bnnkit.engine.evaluate`,
:mod:`bnnkit.engine.features` and the lower layers. Nothing in the engine imports it.

``bnnkit.engine.protocol`` was a module in bnnkit 0.1: its names still resolve here, with a
:class:`DeprecationWarning`, until the next release (import them from :mod:`.cells` or
:mod:`.run`).
"""

from __future__ import annotations

from typing import Any

#: bnnkit 0.1's ``bnnkit.engine.protocol`` names and the module each lives in now
_OLD_NAMES = {
    **dict.fromkeys(
        (
            "PROTOCOLS",
            "PROTOCOL_FILE",
            "DEFAULT_PROTOCOLS_ROOT",
            "DEFAULT_OOD_SCORE",
            "Cell",
            "select_generators",
            "new_protocol_dir",
            "plan_cells",
            "cell_done",
            "run_cell",
        ),
        "cells",
    ),  # fmt: skip
    "ProtocolResult": "run",
    "run_protocol": "run",
}


def __getattr__(name: str) -> Any:
    if name in _OLD_NAMES:
        from bnnkit.engine import moved_warning
        from bnnkit.engine.protocol import cells, run

        module = cells if _OLD_NAMES[name] == "cells" else run
        moved_warning(f"{__name__}.{name}", f"{module.__name__}.{name}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
