"""Recipes shipped with bnnkit (the ``recipes/`` folder, installed as ``bnnkit_recipes``), so
``bnnkit train quickstart`` works from any directory."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

from bnnkit.errors import UsageError


def bundled() -> dict[str, str]:
    """Recipe name -> TOML text for every bundled recipe."""
    try:
        root = resources.files("bnnkit_recipes")
    except ModuleNotFoundError:
        return {}
    return {
        p.name[: -len(".toml")]: p.read_text(encoding="utf-8")
        for p in root.iterdir()
        if p.name.endswith(".toml")
    }


def resolve(recipe: str) -> tuple[str, str]:
    """``(source, toml_text)`` for a recipe given as a path or as a bundled recipe's name."""
    path = Path(recipe)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    name = path.name[:-5] if path.name.endswith(".toml") else path.name
    recipes = bundled()
    if name in recipes and (path.parent == Path(".") or path.parent.name == "recipes"):
        return f"{name} (bundled)", recipes[name]
    close = difflib.get_close_matches(name, list(recipes), n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else "see `bnnkit recipes list`"
    raise UsageError(f"recipe '{recipe}' is neither a file nor a bundled recipe; {hint}")
