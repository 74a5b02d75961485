"""Augmentation cost benchmark (issue 21, item 7): the training loader's decode-inclusive cost
per image with ``[data.augment]`` against the plain training loader (crop + flip).

Writes ``--images`` synthetic images (half PNG, half JPEG quality 90, like GenImage's fakes and
reals) of ``--side`` px, then times, per image, decode + the training transform through
:class:`bnnkit.data.dataset.ImageDataset` (and, when augmenting, the per-image seeding of
:class:`bnnkit.data.augment.SeededSamples`, as training runs it), in one thread (a DataLoader
worker's share). The loaders take turns image by image over ``--rounds`` passes after a
warm-up pass; the figure is the ratio of their total times, measured in one process.

Settings: ``cnndetection`` (blur p 0.5 sigma in [0, 3], JPEG p 0.5 quality in [30, 100]; target
<= 1.3 x the plain loader) and, for information, ``all`` (those plus noise p 0.3, downscale p 0.3,
grayscale p 0.1, vertical flip).

Prints ONE JSON object (progress on stderr):

    python benchmarks/augment.py                        # 256 images of 224 px, 5 rounds
    python benchmarks/augment.py --images 8 --side 48 --rounds 1   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 1.3
SETTINGS: dict[str, dict[str, Any]] = {
    "cnndetection": {"blur_p": 0.5, "blur_sigma": [0.0, 3.0], "jpeg_p": 0.5,
                     "jpeg_quality": [30, 100]},
    "all": {"blur_p": 0.5, "jpeg_p": 0.5, "noise_p": 0.3, "resize_p": 0.3, "grayscale_p": 0.1,
            "vflip": True},
}  # fmt: skip


def log(message: str) -> None:
    print(f"[augment] {message}", file=sys.stderr, flush=True)


def write_images(root: Path, n: int, side: int) -> list[Path]:
    """``n`` textured images (noise + edges): even ones PNG, odd ones JPEG quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        y, x = np.mgrid[0:side, 0:side]
        base = (128 + 60 * np.sin(x / (3 + i % 7)) + 40 * np.cos(y / (5 + i % 5)))[..., None]
        pixels = np.clip(base + rng.normal(0, 20, (side, side, 3)), 0, 255).astype(np.uint8)
        path = root / (f"{i:04d}.png" if i % 2 == 0 else f"{i:04d}.jpg")
        Image.fromarray(pixels).save(path, **({} if i % 2 == 0 else {"quality": 90}))
        paths.append(path)
    return paths


def measure(paths: list[Path], image_size: int, rounds: int) -> dict[str, Any]:
    """Seconds per image of each loader; the loaders take turns image by image (the machine's
    load then weighs on all of them alike), ``rounds`` passes after a warm-up pass."""
    import torch

    from bnnkit.data.augment import SeededSamples
    from bnnkit.data.dataset import ImageDataset, build_transform
    from bnnkit.data.genimage import Sample
    from bnnkit.recipe_schema import AugmentConfig

    torch.set_num_threads(1)
    samples = [Sample(p, i % 2, "sdv4") for i, p in enumerate(paths)]

    def dataset(augment: AugmentConfig | None, epoch: int) -> Any:
        tf = build_transform(image_size, "crop", train=True, augment=augment)
        ds = ImageDataset(samples, tf, ["sdv4"])
        return ds if augment is None else SeededSamples(ds, 0, "joint", epoch)

    configs: dict[str, AugmentConfig | None] = {"plain": None}
    configs.update({name: AugmentConfig(**s) for name, s in SETTINGS.items()})
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds + 1):  # round 0: warm-up (file cache, first-call costs), not counted
        loaders = {name: dataset(cfg, r) for name, cfg in configs.items()}
        spent = dict.fromkeys(configs, 0.0)
        for i in range(len(samples)):
            for name, ds in loaders.items():
                t0 = time.perf_counter()
                ds[i]
                spent[name] += time.perf_counter() - t0
        if r:
            for name in configs:
                times[name].append(spent[name] / len(samples))
            log(f"round {r}/{rounds}: " + ", ".join(
                f"{n} {1e3 * t[-1]:.2f} ms" for n, t in times.items()
            ))  # fmt: skip
    total = {name: sum(t) for name, t in times.items()}
    return {
        "ms_per_image": {name: 1e3 * t / rounds for name, t in total.items()},
        "ratio": {name: total[name] / total["plain"] for name in SETTINGS},
        "rounds_ms_per_image": {name: [1e3 * x for x in t] for name, t in times.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--side", type=int, default=224, help="image side in px")
    p.add_argument("--image-size", type=int, default=224, help="data.image_size (crop)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bnnkit-augment-") as tmp:
        log(f"writing {args.images} images of {args.side} px")
        paths = write_images(Path(tmp), args.images, args.side)
        figures = measure(paths, args.image_size, max(1, args.rounds))
    ratio = figures["ratio"]["cnndetection"]
    result = {
        "benchmark": "augment",
        "images": args.images,
        "side": args.side,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "settings": SETTINGS,
        **figures,
        "target": f"cnndetection augmented / plain seconds per image <= {TARGET}",
        "meets_targets": {"augment_over_plain": ratio <= TARGET},
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "threads": 1,
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
