"""Ratio benchmarks for bnnkit: what a Bayesian head costs over its deterministic twin.

Every figure is measured in this one process, side by side (the two sides of a ratio alternate
within each repeat, order rotated, so drift of the machine hits both), as the median of repeated
runs after warm-up, with ``time.perf_counter`` and torch's thread count left as it is. Prints ONE
JSON object on stdout (progress goes to stderr). See ``benchmarks/README.md`` for what each ratio
means and the targets.

    python benchmarks/run.py                 # the full benchmark: resnet50 at 224 px on the CPU
    python benchmarks/run.py --quick         # tiny sizes: a smoke test (seconds)
    python benchmarks/run.py --repeats 9 --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads: every model is pretrained=False

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader, Dataset, TensorDataset  # noqa: E402

from bnnkit.engine.build import build  # noqa: E402
from bnnkit.engine.features.loop import (  # noqa: E402
    extract_features,
    make_loader,
    predict_features,
    stream_predictive,
    worker_count,
)
from bnnkit.methods.base import InferenceMethod  # noqa: E402
from bnnkit.model.detector import Detector  # noqa: E402
from bnnkit.plugins import get_registry  # noqa: E402
from bnnkit.recipe import validate  # noqa: E402

K = 100
TARGETS = {
    "predict_k100_over_k1": "<= 1.15",
    "naive_k100_over_ours": ">= 50",
    "bayes_step_over_map_step": "<= 1.10",
    "toolkit_eval_over_bare_timm": "<= 1.15",
}
# Bayesian heads measured for prediction and for the training step, with the method that owns
# each; a head or method whose plugin is not installed (or failed to load) is reported as null.
PREDICT_HEADS = {"bbb": "bbb", "lrt": "lrt", "dropout": "mcdropout"}
STEP_HEADS = {"bbb": "bbb", "lrt": "lrt"}


@dataclass(frozen=True)
class Settings:
    backbone: str
    image_size: int
    predict_batch: int
    step_batch: int
    eval_images: int
    eval_batch: int
    repeats: int
    warmup: int
    sweep_features: int
    sweep_epochs: int
    sweep_batch: int
    sweep_repeats: int
    sweep_source_per_class: int
    sweep_source_size: int
    device: str


def settings_for(quick: bool, repeats: int | None, device: str) -> Settings:
    if quick:
        return Settings(
            backbone="test_resnet", image_size=32, predict_batch=4, step_batch=4,
            eval_images=8, eval_batch=4, repeats=repeats or 2, warmup=1,
            sweep_features=512, sweep_epochs=1, sweep_batch=32, sweep_repeats=1,
            sweep_source_per_class=1, sweep_source_size=32, device=device,
        )  # fmt: skip
    reps = repeats or 7
    return Settings(
        backbone="resnet50", image_size=224, predict_batch=16, step_batch=8,
        eval_images=64, eval_batch=32, repeats=reps, warmup=1,
        sweep_features=10_000, sweep_epochs=3, sweep_batch=32, sweep_repeats=min(reps, 3),
        sweep_source_per_class=16, sweep_source_size=64, device=device,
    )  # fmt: skip


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, interleaved: every repeat runs each once, the order
    rotated by one per repeat. ``warmup`` untimed rounds first."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def med(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over repeats of a[i] / b[i]: each pair ran back to back in the same repeat, so a
    load change on the machine between repeats cancels out of the ratio."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


# -- building detectors through the toolkit ----------------------------------------------------
def recipe_for(s: Settings, method: str, head: str | None, image_size: int | None = None):
    raw: dict[str, Any] = {
        "name": f"bench-{method}",
        "data": {"image_size": image_size or s.image_size},
        "model": {"backbone": {"name": s.backbone, "pretrained": False}},
        "inference": {"name": method},
    }
    if head is not None:
        raw["model"]["head"] = {"name": head}
    return validate(raw, get_registry(), source=f"benchmark recipe ({method}/{head})")


def available(kind: str, name: str) -> bool:
    return name in get_registry().entries[kind]


def build_pair(s: Settings, method: str, head: str, num_train: int, device: torch.device):
    """``(detector, method)`` exactly as ``bnnkit train`` builds them, same init for every pair
    (the seed is reset, so every backbone starts from the same random weights)."""
    torch.manual_seed(0)
    detector, m = build(recipe_for(s, method, head), num_train=num_train)
    detector.to(device)
    m.to(device)
    return detector, m


def images(s: Settings, n: int, device: torch.device, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, s.image_size, s.image_size, generator=g).to(device)


# -- 1 + 2: prediction --------------------------------------------------------------------------
def bench_predict(s: Settings, device: torch.device) -> dict[str, Any]:
    """K=1 deterministic prediction (linear head, one pass) vs K=100 MC prediction (backbone once,
    head sampled 100x through ``predict_features``) vs the naive way (K full passes, one head sample
    each: one such pass is timed per repeat and scaled to K). Each head is its own side-by-side
    group {k1, k100, naive pass}, so the runs a ratio compares are adjacent in time."""
    x = images(s, s.predict_batch, device)
    det_map, _ = build_pair(s, "map", "linear", 1000, device)
    det_map.eval()

    @torch.no_grad()
    def k1() -> Tensor:
        return torch.softmax(det_map(x), dim=-1)

    over_k1: dict[str, float | None] = {}
    naive: dict[str, float | None] = {}
    seconds: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for head, method in PREDICT_HEADS.items():
        if not (available("head", head) and available("method", method)):
            skipped[head] = f"head '{head}' or method '{method}' not installed"
            over_k1[head] = naive[head] = None
            continue
        det, m = build_pair(s, method, head, 1000, device)
        det.eval()

        def ours(det: Detector = det, m: InferenceMethod = m) -> object:
            with torch.no_grad():
                return predict_features(m, det.features(x), K, device)

        def naive_pass(det: Detector = det, m: InferenceMethod = m) -> Tensor:
            # The reference code's way, one of its K passes: the whole network, one head sample.
            with torch.no_grad():
                return m.sample(det.features(x), 1)[0]

        log(f"predict {head}: k1, k{K}, naive pass x {s.repeats} repeats ({s.backbone}, batch "
            f"{s.predict_batch}, {s.image_size} px)")  # fmt: skip
        times = time_side_by_side(
            {"k1": k1, "ours": ours, "naive": naive_pass}, s.repeats, s.warmup, device
        )
        over_k1[head] = paired_ratio(times["ours"], times["k1"])
        naive[head] = K * paired_ratio(times["naive"], times["ours"])
        # What the head alone costs (features precomputed): the ratio's floor above 1.
        with torch.no_grad():
            feats = det.features(x)
        head_only = time_side_by_side(
            {"ours": lambda m=m, f=feats: predict_features(m, f, K, device)}, 20, 2, device
        )
        seconds[head] = {
            "k1": med(times["k1"]),
            f"k{K}": med(times["ours"]),
            "naive_one_pass": med(times["naive"]),
            f"naive_k{K}_extrapolated": K * med(times["naive"]),
            f"head_only_k{K}": med(head_only["ours"]),
        }
    return {"over_k1": over_k1, "naive": naive, "seconds": seconds, "skipped": skipped}


# -- 3: training step ---------------------------------------------------------------------------
def bench_step(s: Settings, device: torch.device) -> dict[str, Any]:
    """One full training step as the trainer's joint fine-tune phase does it: features through
    backbone, attention and pool, the method's loss, backward, optimiser step, ``after_step``.
    Each head gets its own detector from the same initial weights and its own AdamW."""
    n_train = 1000
    x = images(s, s.step_batch, device, seed=1)
    y = (torch.arange(s.step_batch) % 2).to(device)
    idx = torch.arange(s.step_batch, device=device)
    variants = {"linear": "map", **STEP_HEADS}
    fns: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    for head, method in variants.items():
        if not (available("head", head) and available("method", method)):
            skipped[head] = f"head '{head}' or method '{method}' not installed"
            continue
        det, m = build_pair(s, method, head, n_train, device)
        det.train()
        opt = m.configure_optimizer(
            [
                {"params": list(det.head.parameters())},
                {"params": [*det.backbone.parameters(), *det.attention.parameters()]},
            ],
            optimizer="adamw",
            lr=1e-4,
            weight_decay=0.0,
        )
        counter = [0]

        def step(det=det, m=m, opt=opt, counter=counter) -> float:
            parts = m.training_loss(det.features(x), y, idx)
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            opt.step()
            counter[0] += 1
            m.after_step(counter[0])
            return float(parts.loss.detach())

        fns[head] = step
    log(f"train step: {list(fns)} x {s.repeats} repeats (batch {s.step_batch})")
    times = time_side_by_side(fns, s.repeats, s.warmup, device)
    ratios: dict[str, float | None] = {}
    for head in STEP_HEADS:
        ratios[head] = None if head in skipped else paired_ratio(times[head], times["linear"])
    seconds = {head: med(t) for head, t in times.items()}
    return {"ratios": ratios, "seconds": seconds, "skipped": skipped}


# -- 4: evaluation overhead ---------------------------------------------------------------------
class DecodedImages(Dataset):
    """Already-decoded images in the item format of ``ImageDataset`` (image, label, gen, idx)."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        return self.images[index], index % 2, 0, index


def bench_eval(s: Settings, device: torch.device) -> dict[str, Any]:
    """bnnkit's evaluate path (``stream_predictive`` over its own loader and collate: per batch
    one backbone pass, K=100 samples of the bbb head and the uncertainty decomposition) vs a bare
    loop of ``timm.create_model`` forward passes, both over the same pre-decoded images with the
    same batch size and worker count."""
    import timm

    data = images(s, s.eval_images, torch.device("cpu"), seed=2)
    workers = worker_count("auto", device)
    det, m = build_pair(s, "bbb", "bbb", 1000, device)
    det.eval()
    toolkit_loader = make_loader(
        DecodedImages(data), s.eval_batch, shuffle=False, seed=0, workers=workers, device=device
    )
    torch.manual_seed(0)
    bare = timm.create_model(s.backbone, pretrained=False, num_classes=2).to(device).eval()
    bare_loader = DataLoader(
        TensorDataset(data),
        batch_size=s.eval_batch,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )

    def toolkit() -> object:
        return stream_predictive(det, m, toolkit_loader, K, device)

    @torch.no_grad()
    def bare_timm() -> list[Tensor]:
        return [torch.softmax(bare(xb.to(device, non_blocking=True)), -1).cpu()
                for (xb,) in bare_loader]  # fmt: skip

    log(f"evaluate: {s.eval_images} images x {s.repeats} repeats (batch {s.eval_batch})")
    times = time_side_by_side({"toolkit": toolkit, "bare": bare_timm}, s.repeats, s.warmup, device)
    t_tool, t_bare = med(times["toolkit"]), med(times["bare"])
    return {
        "ratio": paired_ratio(times["toolkit"], times["bare"]),
        "seconds": {"toolkit": t_tool, "bare_timm": t_bare},
        "images_per_second": {
            "toolkit": s.eval_images / t_tool,
            "bare_timm": s.eval_images / t_bare,
        },
    }


# -- 5: frozen sweep ----------------------------------------------------------------------------
def sweep_features(s: Settings, device: torch.device) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Pooled features of a small synthetic GenImage set (bnnkit's own data path and backbone),
    tiled with Gaussian noise up to ``sweep_features`` rows: a stand-in for a cache of that many
    images with the backbone's real feature width."""
    from bnnkit.data.dataset import ImageDataset, build_transform
    from bnnkit.data.layout import GENERATORS
    from bnnkit.data.layouts import index_split
    from bnnkit.data.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="bnnkit-bench-") as tmp:
        root = Path(tmp)
        synthesize(
            root, train_per_class=s.sweep_source_per_class, val_per_class=0,
            size=s.sweep_source_size,
        )  # fmt: skip
        gens = list(GENERATORS)
        samples = index_split(root, gens, "train", limit=0, balance=True, seed=0, layout="genimage")
        ds = ImageDataset(samples, build_transform(s.sweep_source_size, "crop", False), gens)
        torch.manual_seed(0)
        det, _ = build(recipe_for(s, "map", "linear", s.sweep_source_size), num_train=len(ds))
        det.to(device)
        loader = make_loader(ds, 32, shuffle=False, seed=0, workers=0, device=device)
        t0 = time.perf_counter()
        feats = extract_features(det, loader, device)
        t_extract = time.perf_counter() - t0
    base, base_y = feats.features, feats.labels
    g = torch.Generator().manual_seed(0)
    rows = torch.arange(s.sweep_features) % base.shape[0]
    noise = (
        0.1 * base.std(0, keepdim=True) * torch.randn(s.sweep_features, base.shape[1], generator=g)
    )
    info = {
        "source_images": int(base.shape[0]),
        "source_extract_seconds": t_extract,
        "feature_dim": int(base.shape[1]),
    }
    return base[rows] + noise, base_y[rows], info


def train_head(m: InferenceMethod, feats: Tensor, y: Tensor, s: Settings, device) -> float:
    """The trainer's head-only phase on cached features (``Trainer._epochs`` minus progress,
    validation and checkpoints), then ``after_training``; returns seconds."""
    t0 = time.perf_counter()
    params = list(m.head.parameters())
    opt = m.configure_optimizer([{"params": params}], optimizer="adamw", lr=1e-3, weight_decay=0.0)
    loader = DataLoader(
        TensorDataset(feats, y, torch.arange(feats.shape[0])),
        batch_size=s.sweep_batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    step = 0
    m.head.train()
    for epoch in range(1, s.sweep_epochs + 1):
        for xb, yb, ib in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            parts = m.training_loss(xb, yb, ib.to(device))
            opt.zero_grad(set_to_none=True)
            parts.loss.backward()
            opt.step()
            step += 1
            m.after_step(step)
            parts.loss.item()  # the trainer reads the loss every step for its running mean
        m.after_epoch(epoch)
    if m.needs_train_features:
        m.after_training(feats.to(device), y.to(device))
    else:
        m.after_training(None, None)
    _sync(device)
    return time.perf_counter() - t0


def bench_sweep(s: Settings, device: torch.device) -> dict[str, Any]:
    feats, y, info = sweep_features(s, device)
    registry = get_registry()
    methods: dict[str, str] = {}
    seen_classes: dict[int, str] = {}
    for name in registry.names("method"):
        obj = registry.entries["method"][name].obj
        if id(obj) in seen_classes:  # an alias (vi -> bbb): same class, trained once
            continue
        if not getattr(obj, "trains", True):  # training-free (wepe, rigid): no head to train
            continue
        seen_classes[id(obj)] = name
        methods[name] = name
    log(f"frozen sweep: {len(methods)} methods ({', '.join(methods)}) on "
        f"{feats.shape[0]} x {feats.shape[1]} features, {s.sweep_epochs} epochs, "
        f"{s.sweep_repeats} repeat(s)")  # fmt: skip
    per_method: dict[str, float | None] = {}
    fastest: dict[str, float] = {}  # min over runs: less sensitive to other load on the cores
    errors: dict[str, str] = {}
    for name in methods:
        runs = []
        try:
            for _ in range(s.sweep_repeats):
                torch.manual_seed(0)
                _, m = build(
                    recipe_for(s, name, None, s.sweep_source_size), num_train=feats.shape[0]
                )
                m.head.to(device)
                m.to(device)
                runs.append(train_head(m, feats, y, s, device))
        except Exception as exc:  # a broken third-party method must not sink the whole sweep
            errors[name] = f"{type(exc).__name__}: {exc}"
            per_method[name] = None
            log(f"  {name}: FAILED {errors[name]}")
            continue
        per_method[name] = med(runs)
        fastest[name] = min(runs)
        log(f"  {name}: {per_method[name]:.2f} s")
    total = sum(v for v in per_method.values() if v is not None)
    return {
        "per_method": per_method,
        "total": total,
        "per_method_min": fastest,
        "errors": errors,
        "epochs": s.sweep_epochs,
        "batch_size": s.sweep_batch,
        **info,
    }


# -- main ---------------------------------------------------------------------------------------
def _meets(value: float | None, target: str) -> bool | None:
    if value is None:
        return None
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def _load_average() -> list[float] | None:
    """1/5/15-minute load: other processes on the cores make every timing noisier."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median taken)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--device", default="cpu", help="cpu (the issue's setting), cuda, ...")
    parser.add_argument(
        "--only",
        default="predict,step,eval,sweep",
        help="comma-separated subset of: predict, step, eval, sweep",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    device = torch.device(args.device)
    s = settings_for(args.quick, args.repeats, args.device)
    only = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = only - {"predict", "step", "eval", "sweep"}
    if unknown:
        parser.error(f"--only: unknown part(s) {sorted(unknown)}")
    registry = get_registry()
    load_start = _load_average()
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "predict_k100_over_k1": None,
        "naive_k100_over_ours": None,
        "naive_passes_timed": s.repeats,
        "bayes_step_over_map_step": None,
        "toolkit_eval_over_bare_timm": None,
        "frozen_sweep_seconds": None,
    }
    details: dict[str, Any] = {}
    if "predict" in only:
        p = bench_predict(s, device)
        result["predict_k100_over_k1"] = p["over_k1"]
        result["naive_k100_over_ours"] = p["naive"]
        details["predict"] = p
    if "step" in only:
        st = bench_step(s, device)
        result["bayes_step_over_map_step"] = st["ratios"]
        details["step"] = st
    if "eval" in only:
        ev = bench_eval(s, device)
        result["toolkit_eval_over_bare_timm"] = ev["ratio"]
        details["eval"] = ev
    if "sweep" in only:
        sw = bench_sweep(s, device)
        result["frozen_sweep_seconds"] = {"per_method": sw["per_method"], "total": sw["total"]}
        details["sweep"] = sw
    meets: dict[str, Any] = {}
    for key, target in TARGETS.items():
        value = result[key]
        meets[key] = (
            {k: _meets(v, target) for k, v in value.items()}
            if isinstance(value, dict)
            else _meets(value, target)
        )
    result.update(
        {
            "targets": TARGETS,
            "meets_targets": meets,
            "details": details,
            "settings": {**s.__dict__, "k": K, "mode": "quick" if args.quick else "full"},
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "broken_plugins": [b.plugin for b in registry.broken],
                "load_average_start": load_start,
                "load_average_end": _load_average(),
            },
            "benchmark_seconds": time.perf_counter() - t_start,
        }
    )
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main()
