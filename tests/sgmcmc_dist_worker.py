"""Run ``bnnkit train`` (argv[2:]) recording the head's parameters after every SG-MCMC step
into ``argv[1]/rank{RANK}.pt``; started by torchrun (or plainly) from
tests/test_sgmcmc_distributed.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from bnnkit.methods.sgmcmc import SGMCMCMethod

records: list[torch.Tensor] = []
_after_step = SGMCMCMethod.after_step


def _recording_after_step(self: SGMCMCMethod, step: int) -> None:
    _after_step(self, step)
    records.append(torch.nn.utils.parameters_to_vector(self.head.parameters()).detach().clone())


SGMCMCMethod.after_step = _recording_after_step  # type: ignore[method-assign]

if __name__ == "__main__":
    from bnnkit.cli import main

    out = Path(sys.argv[1])
    try:
        main.main(args=sys.argv[2:], standalone_mode=False)
    finally:
        rank = os.environ.get("RANK", "0")
        torch.save(torch.stack(records) if records else torch.zeros(0), out / f"rank{rank}.pt")
