"""Run ``bnnkit train`` (argv[2:]) under torchrun, recording into ``argv[1]/rank{RANK}.pt`` how
many training steps went through DistributedDataParallel and the detector's final parameters;
started by tests/test_distributed.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from bnnkit.engine.train.trainer import Trainer

record: dict[str, object] = {"ddp_forwards": 0}
_forward, _finish = DistributedDataParallel.forward, Trainer._finish


def _counting_forward(self, *args, **kwargs):
    record["ddp_forwards"] = int(record["ddp_forwards"]) + 1
    return _forward(self, *args, **kwargs)


def _recording_finish(self, detector, *args, **kwargs):
    result = _finish(self, detector, *args, **kwargs)
    record["params"] = torch.nn.utils.parameters_to_vector(detector.parameters()).detach().clone()
    return result


DistributedDataParallel.forward = _counting_forward  # type: ignore[method-assign]
Trainer._finish = _recording_finish  # type: ignore[method-assign]

if __name__ == "__main__":
    from bnnkit.cli import main

    try:
        main.main(args=sys.argv[2:], standalone_mode=False)
    finally:  # argv[1]: the folder for this rank's record
        torch.save(record, Path(sys.argv[1]) / f"rank{os.environ.get('RANK', '0')}.pt")
