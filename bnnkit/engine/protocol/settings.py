"""Refusing to mix two protocols in one folder: a protocol's ``--out`` that already holds cells
or a ``protocol.json`` made with other settings (protocol, generators, recipes, ``--set``,
scores, or a cell's resolved recipe) is refused unless ``force``, naming the keys that differ.

Without this check a second run with, say, ``--set train.epochs=3`` would train a second run
in every cell folder beside the first and silently replace ``table.md`` and ``protocol.json``.
Settings that do not change a number (device, launcher, jobs, cache folder, plots) may change.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bnnkit.errors import UsageError
from bnnkit.run.layout import RunLayout

__all__ = ["SETTINGS_KEYS", "check_same_settings", "differing_keys", "protocol_settings"]

#: the keys of ``protocol.json`` that decide the cells and the table
SETTINGS_KEYS = ("protocol", "generators", "recipes", "overrides", "score", "abstain_on", "scores")


def protocol_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a ``protocol.json`` record; recipes as the cells name them (a recipe
    file by its absolute path), so a relative path given from another folder is the same."""
    cells = record.get("cells") or []
    recipes = list(dict.fromkeys(c["recipe"] for c in cells)) if cells else record.get("recipes")
    out = {k: record.get(k) for k in SETTINGS_KEYS}
    out["recipes"] = recipes
    return out


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key (old -> new)`` for each (dotted) key whose value differs, in sorted order."""
    a, b = _flat(old), _flat(new)
    return [
        f"{k} ({json.dumps(a.get(k))} -> {json.dumps(b.get(k))})"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _cell_recipe_diff(folder: Path, wanted: dict[str, Any]) -> list[str]:
    """The recipe keys by which the newest run in a cell folder differs from ``wanted``, or
    ``[]`` when the folder has no run or one run with exactly that recipe."""
    runs = sorted(folder.iterdir(), reverse=True) if folder.is_dir() else []
    recipes = [RunLayout(r).recipe for r in runs if RunLayout(r).recipe.is_file()]
    if not recipes:
        return []
    found = [tomllib.loads(r.read_text(encoding="utf-8")) for r in recipes]
    if any(f == wanted for f in found):
        return []
    return differing_keys(found[0], wanted)


def check_same_settings(
    out: Path,
    record: Mapping[str, Any],
    cells: Sequence[Any],
    resolved: Callable[[Any], dict[str, Any]],
    *,
    protocol_file: str,
) -> None:
    """Raise :class:`~bnnkit.errors.UsageError` (exit 2) when ``out`` holds a protocol made
    with settings other than ``record``'s, or a cell folder whose runs were all trained with
    another recipe than the cell's (``resolved(cell)``)."""
    problems: list[str] = []
    previous = out / protocol_file
    if previous.is_file():
        try:
            old = protocol_settings(json.loads(previous.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            old = None
        if old is not None:
            problems += differing_keys(old, protocol_settings(record))
    for cell in cells:  # each differing recipe key once
        for d in _cell_recipe_diff(Path(cell.folder), resolved(cell)):
            if f"recipe {d}" not in problems:
                problems.append(f"recipe {d}")
    if problems:
        shown = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
        raise UsageError(
            f"{out} holds a protocol made with other settings: {shown}",
            hint="give a new --out, or --force to train new runs beside the old ones and "
            "replace the tables",
        )
