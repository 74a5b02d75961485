"""Write docs/cli.md: the ``--help`` text of every bnnkit command, walked from ``bnnkit.cli.main``.

Usage: ``python docs/gen_cli.py`` (rewrites docs/cli.md), ``python docs/gen_cli.py --check``
(exit 1 when docs/cli.md is stale). ``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

OUT = Path(__file__).resolve().parent / "cli.md"
WIDTH = 100  # fixed, so the text does not depend on the terminal it was generated in

HEADER = """\
# bnnkit command-line reference

Generated from each command's `--help` by `python docs/gen_cli.py`; do not edit by hand
(`tests/test_docs.py` fails when this file is stale). Every command also accepts `-h`.
"""


def _walk(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=name, parent=ctx, **sub.context_settings)
            yield from _walk(sub, sub_ctx)


def render() -> str:
    """The whole of docs/cli.md as text."""
    from bnnkit.cli import main

    settings = {**main.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    root = click.Context(main, info_name="bnnkit", **settings)
    parts = [HEADER]
    commands = list(_walk(main, root))
    for _, ctx in commands:
        path = ctx.command_path
        anchor = path.replace(" ", "-")
        parts.append(f"- [`{path}`](#{anchor})")
    for command, ctx in commands:
        help_text = command.get_help(ctx).rstrip()
        parts.append(f"\n## {ctx.command_path}\n\n```text\n{help_text}\n```")
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale; regenerate it with: python docs/gen_cli.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
