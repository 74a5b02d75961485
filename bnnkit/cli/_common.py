"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import click
from rich.console import Console


@cache
def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def print_table(out: Console, table, cap: int = 220) -> None:
    """Print a rich table at its natural width (up to ``cap`` columns) even when the console is
    narrower (80 columns, or a pipe): a long line wraps in the terminal, but no column is
    squeezed to nothing or truncated (file paths, run names, numbers)."""
    from rich.measure import Measurement

    natural = Measurement.get(out, out.options.update_width(cap), table).maximum
    width = out.width
    out.width = max(width, min(natural, cap))  # print(width=) cannot exceed the console's
    try:
        out.print(table)
    finally:
        out.width = width


@cache
def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def path_option(flag: str, default: str, help: str):
    """A ``--FLAG PATH`` option with its default shown (``--runs-dir``, ``--cache-dir``, ...)."""
    return click.option(
        flag, default=default, show_default=True, type=click.Path(path_type=Path), help=help
    )


def choice_option(flag: str, choices: list[str], help: str | None = None, dest: str | None = None):
    """``--FLAG`` taking one of ``choices``, the first one the default."""
    names = (flag, dest) if dest else (flag,)
    return click.option(
        *names, type=click.Choice(choices), default=choices[0], show_default=True, help=help
    )


def format_option(choices: list[str], help: str | None = None, dest: str = "out_format"):
    """``--format`` with a fixed set of output formats, the first one the default."""
    return choice_option("--format", choices, help, dest)


def abstain_on_option(help: str):
    """``--abstain-on NAME``: the score of an abstention threshold (any score plugin); None
    when not given (the command's default: :data:`DEFAULT_ABSTAIN_SCORE`)."""
    from bnnkit.metrics.schema import DEFAULT_ABSTAIN_SCORE, UNFITTED_ABSTAIN_SCORE

    default = (
        f"  [default: {DEFAULT_ABSTAIN_SCORE}, pre-registered on benchmarks/unseen.py; "
        f"{UNFITTED_ABSTAIN_SCORE} with --tiles]"
    )
    return click.option("--abstain-on", default=None, metavar="NAME", help=help + default)


def overrides_option(metavar: str, help: str):
    """``--set KEY=VALUE`` (repeatable), collected into ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar=metavar, help=help)


def device_option(f):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (the CUDA GPU with most free memory, else MPS, else CPU), cpu, cuda:N, mps.",
    )(f)


def fmt(value: Any, digits: int = 3) -> str:
    """A number as the terminal tables print it (``-`` when missing)."""
    from bnnkit.report.tables import fmt_value

    return fmt_value(value, digits)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
