"""Write the options tables of docs/plugins.md from the built-in plugins' declarations.

Usage: ``python docs/gen_plugin_options.py`` (rewrites the part of docs/plugins.md between the
``plugin-options`` markers), ``--check`` (exit 1 when it is stale). ``tests/test_docs.py`` runs
the check, so an option declared in a plugin (``bnnkit/options.py``) is in the guide or the
test says so.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parent / "plugins.md"
BEGIN = "<!-- plugin-options:begin (python docs/gen_plugin_options.py; do not edit) -->"
END = "<!-- plugin-options:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(registry: object | None = None) -> str:
    """The generated block, markers included: one table per built-in plugin with options."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from bnnkit.plugins import KINDS, get_registry

    registry = registry or get_registry()
    lines = [BEGIN, ""]
    for kind in KINDS:
        seen: dict[int, str] = {}
        for name in registry.names(kind):  # type: ignore[attr-defined]
            entry = registry.entries[kind][name]  # type: ignore[attr-defined]
            if entry.package != "bnnkit" or id(entry.obj) in seen:
                continue  # third-party plugins document themselves; aliases once
            seen[id(entry.obj)] = name
            info = entry.option_info()
            if not info:
                continue
            lines += [f"**{kind} `{name}`**", "", "| option | type | default | help |"]
            lines.append("|---|---|---|---|")
            for o in info:
                row = [f"`{o.name}`", _cell(o.type), f"`{o.default!r}`", _cell(o.help)]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines.append(END)
    return "\n".join(lines)


def current(text: str) -> str | None:
    m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), text, re.S)
    return m.group(0) if m else None


def main(argv: list[str]) -> int:
    text = GUIDE.read_text(encoding="utf-8")
    block, fresh = current(text), render()
    if block is None:
        print(f"{GUIDE}: no {BEGIN!r} ... {END!r} markers", file=sys.stderr)
        return 1
    if "--check" in argv:
        return 0 if block == fresh else 1
    GUIDE.write_text(text.replace(block, fresh), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
