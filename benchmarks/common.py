"""What every benchmark script prints the same way: the environment it ran in and its report."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """torch's version and thread count, Python's version and the CPU count."""
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def emit(report: dict[str, Any], out: Path | None) -> None:
    """Print ``report`` as indented JSON and, with ``out``, write it there too."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
