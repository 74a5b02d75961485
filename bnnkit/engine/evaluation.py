"""``bnnkit evaluate``: per-generator metrics, uncertainty, and the unseen-generator (OOD) block.

``metrics.json`` (schema_version 1) holds only numbers that depend on the run and the data, so two
same-seed runs on the CPU give identical files; timings go to ``timing.json``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bnnkit.data.dataset import ImageDataset, build_transform
from bnnkit.data.genimage import check_generator_name, index_split
from bnnkit.engine.build import load_run
from bnnkit.engine.checkpoint import atomic_write_text
from bnnkit.engine.loop import extract_features, make_loader, mc_predictive, worker_count
from bnnkit.errors import UsageError
from bnnkit.metrics.classification import classification_report
from bnnkit.metrics.ood import ood_report

SCHEMA_VERSION = 1
UNCERTAINTY_KEYS = ("total", "aleatoric", "epistemic")


def _clean(value: Any) -> Any:
    """NaN/inf -> None so metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _mean(t: torch.Tensor) -> float:
    return float(t.mean()) if t.numel() else float("nan")


def resolve_ood(recipe, ood: list[str] | None) -> list[str]:
    names = [check_generator_name(g) for g in (ood or recipe.data.holdout)]
    seen = set(recipe.data.train_generators)
    trained = [g for g in names if g in seen]
    if trained:
        raise UsageError(
            f"--ood {', '.join(trained)}: this run was trained on {', '.join(trained)}, so it is "
            "not an unseen generator",
            hint=f"unseen here: {', '.join(sorted(set(recipe.data.holdout) - seen)) or 'none'}",
        )
    return list(dict.fromkeys(names))


def evaluate_run(
    run_dir: Path,
    *,
    ood: list[str] | None = None,
    samples: int | None = None,
    device: torch.device,
    console: Console | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    recipe, detector, method, meta = load_run(run_dir, device)
    if data_root:
        recipe.data.root = data_root
    ood_gens = resolve_ood(recipe, ood)
    seen = list(recipe.data.train_generators)
    generators = seen + ood_gens
    k = samples or recipe.eval.samples
    d = recipe.data
    items = index_split(
        d.root, generators, "val", limit=d.val_limit, balance=d.balance, seed=recipe.seed
    )
    dataset = ImageDataset(
        items, build_transform(d.image_size, d.preprocess, train=False), generators
    )
    loader = make_loader(
        dataset,
        recipe.eval.batch_size,
        shuffle=False,
        seed=recipe.seed,
        workers=worker_count(d.num_workers, device),
        device=device,
    )
    t0 = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=console is None,
    ) as progress:
        task = progress.add_task("evaluate: features", total=len(dataset))
        feats = extract_features(detector, loader, device, lambda n: progress.advance(task, n))
    t1 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    pred = mc_predictive(method, feats.features, k, device)
    t2 = time.perf_counter()

    y, g = feats.labels, feats.generators
    unc = {"total": pred.total, "aleatoric": pred.aleatoric, "epistemic": pred.epistemic}

    def block(mask: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = classification_report(pred.p_fake[mask], y[mask])
        for key in UNCERTAINTY_KEYS:
            out[f"{key}_uncertainty"] = _mean(unc[key][mask])
        return out

    per_generator = {}
    for i, name in enumerate(generators):
        entry = block(g == i)
        entry["seen"] = name in seen
        per_generator[name] = entry
    seen_mask = g < len(seen)
    ood_block = {}
    for j, name in enumerate(ood_gens):
        gen_mask = g == len(seen) + j
        unseen_fakes = gen_mask & (y == 1)
        pool = seen_mask | unseen_fakes
        is_ood = unseen_fakes[pool]
        ood_block[name] = {
            "accuracy": per_generator[name]["accuracy"],
            "fake_detection_rate": _mean((pred.p_fake[unseen_fakes] >= 0.5).float()),
            "mean_epistemic_unseen_fakes": _mean(pred.epistemic[unseen_fakes]),
            "mean_epistemic_seen": _mean(pred.epistemic[seen_mask]),
            "epistemic": ood_report(pred.epistemic[pool], is_ood),
            "total": ood_report(pred.total[pool], is_ood),
        }
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "run": run_dir.name,
        "recipe": recipe.name,
        "method": recipe.inference.name,
        "samples": k,
        "seed": recipe.seed,
        "split": "val",
        "seen_generators": seen,
        "ood_generators": ood_gens,
        "seen": block(seen_mask),
        "per_generator": per_generator,
        "ood": ood_block,
        "broken_files": [{"path": b.path, "reason": b.reason} for b in feats.broken],
    }
    metrics = _clean(metrics)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    n = max(int(y.numel()), 1)
    timing = {
        "images": int(y.numel()),
        "samples": k,
        "features_seconds": t1 - t0,
        "sampling_seconds": t2 - t1,
        "predict_seconds_per_image": (t2 - t0) / n,
        "train_seconds": meta.get("train_seconds"),
        "device": str(device),
    }
    atomic_write_text(run_dir / "timing.json", json.dumps(timing, indent=2))
    return metrics
