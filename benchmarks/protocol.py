"""What the cross-generator matrix costs with a frozen backbone, against one feature extraction.

Measured in this one process, on one synthetic GenImage tree: (1) one pass of the backbone over
every image the matrix uses (the train and val splits of all eight generators), timed alone;
(2) ``bnnkit protocol cross`` with ``train.backbone = "frozen"`` (eight cells: train on each
generator, evaluate on all eight), from an empty feature cache. The issue's target is
``cross_over_extraction <= 2``: the cells reuse one extraction per generator folder and split.
Prints ONE JSON object on stdout (progress on stderr).

Why 128 px by default: each cell also pays a fixed ~1.2 s on 2 CPU cores that does not depend on
the backbone (checkpoints written with fsync, metrics and abstention tables for every score,
the score fits, predictions.csv, the report), so at 64 px, where resnet18 takes ~4 s for all
1536 images, the ratio is ~3.4 however cheap the reuse; at 128 px it is ~1.7, and it falls
further at GenImage's 224 px and with bigger backbones.

    python benchmarks/protocol.py                    # resnet18 at 128 px, 64 images per class
    python benchmarks/protocol.py --quick            # test_resnet at 32 px (seconds)
    python benchmarks/protocol.py --backbone resnet50 --size 224 --per-class 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads: every model is pretrained=False

import torch  # noqa: E402

from bnnkit.api import run_protocol  # noqa: E402
from bnnkit.data.dataset import ImageDataset, build_transform  # noqa: E402
from bnnkit.data.layouts import index_split  # noqa: E402
from bnnkit.data.synth import synthesize  # noqa: E402
from bnnkit.engine.build import build  # noqa: E402
from bnnkit.engine.features.loop import extract_features, make_loader, worker_count  # noqa: E402
from bnnkit.recipe import load_recipe  # noqa: E402
from bnnkit.report.protocol import PAPER_ORDER  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, environment  # noqa: E402

TARGET = "<= 2"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def extraction_seconds(recipe: str, overrides: list[str], device: torch.device) -> float:
    """One backbone pass over the train and val images of all eight generators, as the
    evaluation transform prepares them (the recipe's detector, its batch size and workers)."""
    r = load_recipe(recipe, overrides)
    torch.manual_seed(r.seed)
    detector, _ = build(r, num_train=1)
    detector.to(device)
    d, gens = r.data, list(PAPER_ORDER)
    sel = {"balance": d.balance, "seed": r.seed, "layout": d.layout}
    items = index_split(d.root, gens, "train", limit=d.train_limit, **sel)
    items += index_split(d.root, gens, "val", limit=d.val_limit, **sel)
    tf = build_transform(d.image_size, d.preprocess, train=False, norm=detector.normalisation)
    loader = make_loader(
        ImageDataset(items, tf, gens), r.eval.batch_size, seed=r.seed,
        workers=worker_count(d.num_workers, device), device=device,
    )  # fmt: skip
    t0 = time.perf_counter()
    feats = extract_features(detector, loader, device)
    seconds = time.perf_counter() - t0
    log(f"extraction: {len(feats.labels)} images in {seconds:.2f} s")
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="test_resnet, 32 px, 8 images per class")
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--backbone", default=None, help="timm name (default resnet18)")
    ap.add_argument("--size", type=int, default=None, help="image size (default 128)")
    ap.add_argument("--per-class", type=int, default=None, help="train images per class")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    backbone = args.backbone or ("test_resnet" if args.quick else "resnet18")
    size = args.size or (32 if args.quick else 128)
    per_class = args.per_class or (8 if args.quick else 64)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="bnnkit-bench-protocol-") as tmp:
        root = Path(tmp) / "data"
        synthesize(root, train_per_class=per_class, val_per_class=max(4, per_class // 2),
                   size=max(size, 32))  # fmt: skip
        overrides = [
            f"data.root={json.dumps(str(root))}",
            f"data.image_size={size}",
            f"model.backbone.name={json.dumps(backbone)}",
            "model.backbone.pretrained=false",
            'train.backbone="frozen"',
            "train.epochs=2",
            "eval.samples=16",
        ]
        extraction = extraction_seconds(args.recipe, overrides, device)
        t0 = time.perf_counter()
        result = run_protocol(
            "cross", args.recipe, overrides, out=Path(tmp) / "protocol", device=str(device),
            on_cell=lambda c, i: log(f"cell {c.key}: {i['status']} in {i.get('seconds', 0):.2f} s"),
        )  # fmt: skip
        cross = time.perf_counter() - t0
        cells = len(result.record["cells"])
    report = {
        "benchmark": "protocol cross, frozen backbone",
        "settings": {"recipe": args.recipe, "backbone": backbone, "image_size": size,
                     "train_per_class": per_class, "cells": cells, "device": str(device)},
        "extraction_seconds": extraction,
        "cross_seconds": cross,
        "cross_over_extraction": cross / extraction,
        "target": TARGET,
        "environment": environment(),
    }  # fmt: skip
    emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
