"""Input checking shared by the metric modules: every metric takes a per-item value and a
per-item label of the same length, flattened, detached and cast to a fixed dtype."""

from __future__ import annotations

import torch
from torch import Tensor


def paired(
    values: Tensor, labels: Tensor, *, label_dtype: torch.dtype, names: tuple[str, str]
) -> tuple[Tensor, Tensor]:
    """``(values as float64, labels as label_dtype)``, both flat; sizes must agree (``names``
    are what the error message calls them)."""
    v = torch.as_tensor(values).detach().reshape(-1).to(torch.float64)
    y = torch.as_tensor(labels).detach().reshape(-1).to(label_dtype)
    if v.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in size: {v.numel()} vs {y.numel()}")
    return v, y
