"""The ``bnnkit`` command line. One command group per module in this package.

Heavy imports (torch, timm) happen inside commands, so ``bnnkit --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from bnnkit._version import __version__
from bnnkit.errors import BnnkitError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class BnnkitGroup(click.Group):
    """Turns :class:`BnnkitError` into one readable message and its exit code (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BnnkitError as exc:
            from bnnkit.cli._common import err_console

            err_console().print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
            if exc.hint:
                err_console().print(f"[yellow]hint:[/] {exc.hint}", soft_wrap=True)
            sys.exit(exc.exit_code)


@click.group(cls=BnnkitGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="bnnkit")
def main() -> None:
    """Bayesian detectors of AI-generated images on GenImage.

    A detector is a timm backbone, an attention block, pooling and a Bayesian head; an
    approximate-inference method learns the head's posterior. Every prediction comes with a
    calibrated p(fake) and an uncertainty split into aleatoric and epistemic parts, so images
    from a generator never seen in training can be flagged.

    \b
    Typical session:
      bnnkit data synth data/synth           # synthetic GenImage-shaped data (seconds)
      bnnkit train recipes/quickstart.toml   # -> runs/quickstart-<timestamp>/
      bnnkit evaluate --ood midjourney       # latest run; midjourney as the unseen generator
      bnnkit predict runs/<run> photo.png folder/ --format json
    """


def _register() -> None:
    """Every public module of this package defines one command (or group) named ``command``."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            main.add_command(importlib.import_module(f"{__name__}.{info.name}").command)


_register()
