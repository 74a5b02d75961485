"""Where a run's data is: the hint when ``evaluate`` or ``calibrate`` cannot find it.

A run records its data root as the recipe gave it (``data.root`` in ``RUN/recipe.toml``), often
relative to the directory ``bnnkit train`` ran in; run from elsewhere, that path points
nowhere. :func:`data_root_hint` turns the data layer's "get GenImage" hint into one that names
the recorded root, a folder where it does exist (beside the run's ``runs/`` folder), and
``--data-root``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bnnkit.data.genimage import MISSING_ROOT_HINT
from bnnkit.errors import UsageError
from bnnkit.run.layout import RunLayout

__all__ = ["data_root_hint", "missing_root_hint"]


def _recorded_root(run_dir: Path) -> str | None:
    try:
        raw = tomllib.loads(RunLayout(run_dir).recipe.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    root = raw.get("data", {}).get("root")
    return root if isinstance(root, str) else None


def missing_root_hint(run_dir: Path, given: str | None = None) -> str:
    """The hint for a data root that is missing: the run's recorded ``data.root`` (and where it
    was looked for), a folder where it exists if there is one, ``--data-root``, then how to get
    the data."""
    recorded = _recorded_root(run_dir)
    if recorded is None:
        return f"pass --data-root DIR with the run's data; or {MISSING_ROOT_HINT}"
    where = Path(recorded)
    said = f"this run records data.root = '{recorded}'"
    if not where.is_absolute():
        said += f" (relative to the directory bnnkit runs in, here {Path.cwd()})"
        candidates = [Path.cwd() / where, Path(run_dir).resolve().parent.parent / where]
    else:
        candidates = [where]
    if given is not None:
        said = f"--data-root '{given}' has no GenImage generator folders; {said}"
    found = next((c for c in candidates if c.is_dir()), None)
    if found is not None and str(found) != given:
        fix = f"pass --data-root {found}"
    else:
        fix = "pass --data-root DIR, the folder that holds the run's generator folders"
    return f"{said}: {fix}; without the data: {MISSING_ROOT_HINT}"


@contextmanager
def data_root_hint(run_dir: Path, given: str | None = None) -> Iterator[None]:
    """Within it, a missing data root (a :class:`UsageError` with the data layer's
    :data:`~bnnkit.data.genimage.MISSING_ROOT_HINT`) is re-raised with
    :func:`missing_root_hint` for the run at ``run_dir`` (``given``: ``--data-root``, if any)."""
    try:
        yield
    except UsageError as exc:
        if exc.hint != MISSING_ROOT_HINT:
            raise
        raise UsageError(exc.message, hint=missing_root_hint(run_dir, given)) from None
