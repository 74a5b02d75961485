"""Parameter-efficient fine-tuning costs (issue 20, item 7): a LoRA and a partial fine-tuning
step against a full fine-tuning step of the same backbone.

Each mode (``finetune``, ``lora``, ``partial``) runs in its own process: the detector is built by
bnnkit from a recipe (``model.backbone.pretrained = false``, a linear head, MAP) with
``train.backbone`` set to the mode, the optimiser is the trainer's (AdamW; the head's group plus
the backbone parameters that learn, :func:`bnnkit.model.adapt.trainable`), and a step is
forward + cross-entropy + backward + optimiser step on a random batch. Measured per mode:

- ``step_seconds``: the fastest of ``--steps`` steps after ``--warmup`` steps (the least
  disturbed one: other processes share the CPU; the median is reported too), the ratios use it;
  measured in one process holding all three detectors, their steps taken in turn, so that load
  from elsewhere slows each mode alike;
- ``trainable_state_bytes``: parameters that learn + their gradients + the optimiser's state
  (AdamW: two moments), summed over the actual tensors after the last step;
- ``peak_rss_bytes``: the peak resident memory (``os.wait4``) of a process that builds the mode
  and takes one step: weights, activations kept for backward, the interpreter and torch.

Prints ONE JSON object with the ratios to ``finetune`` and ``meets_targets``:

    python benchmarks/lora.py                       # ViT-B/16 at 224, batch 4 (minutes on a CPU)
    python benchmarks/lora.py --backbone test_vit --image-size 32 --steps 2 --warmup 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("finetune", "lora", "partial")
TARGETS = {
    "lora_time_over_full": 0.6,
    "lora_state_over_full": 0.5,
    "partial_time_over_full": 0.6,
    "partial_state_over_full": 0.5,
}


def log(message: str) -> None:
    print(f"[lora] {message}", file=sys.stderr, flush=True)


def _setup(mode: str, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(detector, optimiser, step) of one mode, built as the trainer builds them."""
    import torch
    import torch.nn.functional as F

    from bnnkit.engine.build import build
    from bnnkit.model.adapt import trainable
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import validate

    torch.manual_seed(0)
    backbone: dict[str, Any] = {"name": args.backbone, "pretrained": False}
    if args.backbone.startswith("test_vit"):
        backbone["img_size"] = args.image_size
    raw = {
        "data": {"image_size": args.image_size},
        "model": {"backbone": backbone, "head": {"name": "linear"}},
        "inference": {"name": "map"},
        "train": {"backbone": mode, "partial_blocks": args.partial_blocks,
                  "lora": {"rank": args.rank, "alpha": 2.0 * args.rank}},
    }  # fmt: skip
    detector, method = build(validate(raw, get_registry()), num_train=1000)
    detector.train()
    body = trainable(
        [*detector.frontend.parameters(), *detector.backbone.parameters(),
         *detector.attention.parameters()], detector,
    )  # fmt: skip
    optimizer = method.configure_optimizer(
        [{"params": list(detector.head.parameters())}, {"params": body}],
        optimizer="adamw", lr=1e-4, weight_decay=0.0,
    )  # fmt: skip
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 2, (args.batch,))

    def step() -> float:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(detector(x), y).backward()
        optimizer.step()
        return time.perf_counter() - t0

    return detector, optimizer, step


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One mode in this process (its peak RSS is the parent's to read): sizes after one step."""
    import torch

    detector, optimizer, step = _setup(args.mode, args)
    step()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    grads = [p.grad for p in params if p.grad is not None]
    nbytes = sum(t.numel() * t.element_size() for t in [*params, *grads, *state])
    return {
        "mode": args.mode,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in detector.parameters()),
        "trainable_state_bytes": nbytes,
    }


def interleaved(args: argparse.Namespace) -> dict[str, Any]:
    """Every mode in one process, their steps taken in turn (finetune, lora, partial, finetune,
    ...), so that what else runs on a shared CPU slows each mode alike."""
    import torch

    steps = {mode: _setup(mode, args)[2] for mode in MODES}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(args.warmup + args.steps):
        for mode in MODES:
            t = steps[mode]()
            if i >= args.warmup:
                times[mode].append(t)
    return {
        mode: {"step_seconds": min(t), "step_seconds_median": statistics.median(t),
               "step_seconds_all": t, "threads": torch.get_num_threads()}
        for mode, t in times.items()
    }  # fmt: skip


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """``measure`` (``mode``; ``"interleaved"``: :func:`interleaved`) in a child process, plus its
    peak RSS."""
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--backbone", args.backbone,
           "--image-size", str(args.image_size), "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--rank", str(args.rank),
           "--partial-blocks", str(args.partial_blocks)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{mode} failed (exit {os.waitstatus_to_exitcode(status)})")
    result = json.loads(out)
    result["peak_rss_bytes"] = usage.ru_maxrss * 1024  # kilobytes on Linux
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--partial-blocks", type=int, default=2)
    ap.add_argument("--mode", choices=[*MODES, "interleaved"], default="finetune")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(interleaved(args) if args.mode == "interleaved" else measure(args)))
        return
    modes = {}
    for mode in MODES:
        log(f"{mode} (memory): {args.backbone} at {args.image_size}, batch {args.batch}")
        modes[mode] = run_mode(mode, args)
    log(f"step times, the modes in turn: {args.warmup} + {args.steps} steps each")
    timed = run_mode("interleaved", args)
    for mode in MODES:
        modes[mode].update(timed[mode])
    full = modes["finetune"]
    ratios = {}
    for mode in ("lora", "partial"):
        m = modes[mode]
        ratios[f"{mode}_time_over_full"] = m["step_seconds"] / full["step_seconds"]
        ratios[f"{mode}_state_over_full"] = (
            m["trainable_state_bytes"] / full["trainable_state_bytes"]
        )
        ratios[f"{mode}_peak_rss_over_full"] = m["peak_rss_bytes"] / full["peak_rss_bytes"]
        median = m["step_seconds_median"] / full["step_seconds_median"]
        ratios[f"{mode}_median_time_over_full"] = median
    import torch

    out = {
        "benchmark": "lora",
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "mode")},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "note": "shared CPU: timings are noisy"},
        "modes": modes,
        "ratios": ratios,
        "targets": {k: f"<= {v}" for k, v in TARGETS.items()},
        "meets_targets": {k: ratios[k] <= v for k, v in TARGETS.items()},
    }  # fmt: skip
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
