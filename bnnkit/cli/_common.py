"""Small helpers shared by the command modules."""

from __future__ import annotations

import json
import math
from functools import cache
from typing import Any

import click
from rich.console import Console


@cache
def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    return Console(stderr=True, highlight=False)


def device_option(f):
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (the CUDA GPU with most free memory, else MPS, else CPU), cpu, cuda:N, mps.",
    )(f)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def compact_table(title: str | None = None, caption: str | None = None):
    """The tables of evaluate/compare: no side borders, one space between columns, so numbers
    fit an 80-column terminal without truncation."""
    from rich import box
    from rich.table import Table

    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        caption=caption,
        caption_justify="left",
    )


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
