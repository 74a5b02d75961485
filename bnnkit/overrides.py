"""``--set KEY=VALUE`` overrides: values parsed as TOML, applied to a raw recipe by key path.

Used by ``bnnkit train | protocol`` (any recipe key) and ``bnnkit evaluate`` (``inference.*``).
"""

from __future__ import annotations

import tomllib
from typing import Any

from bnnkit.errors import RecipeError

__all__ = ["apply_overrides", "parse_value"]


def parse_value(text: str) -> Any:
    """A ``--set`` value parsed as TOML (``3``, ``1e-3``, ``true``, ``["a","b"]``, ``"x"``);
    anything that is not valid TOML is taken as a bare string (``data.root=data/synth``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a raw recipe dict (in place; returned for chaining)."""
    problems = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {key}: '{part}' is a value, not a table")
                break
            node = child
        else:
            node[parts[-1]] = parse_value(value.strip())
    if problems:
        raise RecipeError(problems, source="--set")
    return raw
