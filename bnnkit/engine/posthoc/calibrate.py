"""Post-hoc temperature scaling of a run's posterior predictive (``bnnkit calibrate``).

One temperature ``T > 0`` is fitted on the run's calibration images (``data.calibration``:
carved out of the training folders of ``data.train_generators``, never trained on, never
reported; :mod:`bnnkit.data.splits`) by minimising the NLL of the tempered posterior
predictive: each of the K posterior samples is tempered,
``p_k(T) = softmax(log p_k / T)`` (log p is the logits up to a constant), and the predictive is
``mean_k p_k(T)``. The backbone runs once (the frozen-feature cache for a frozen run); the K
samples' probabilities of the fit set stay in memory (K x N x 2) while ``log T`` is fitted: a
coarse grid, then a bounded scalar search (scipy) around its best point. A run without a
calibration split (made before it existed, or ``data.calibration = 0``) is fitted on the seen
generators' validation images, with a warning that its seen numbers are then in-sample.

A ``T`` at the lower bound of the search (:data:`T_BOUNDS`) is refused, nothing written: the
fit set is separated perfectly (the NLL still falls as T shrinks) and the predictive would become
overconfident everywhere, also on images it gets wrong. A ``T`` at the upper bound (the head is
near chance on the fit set; its predictions are flattened towards p = 0.5, which can only lower
the confidence) is written with ``at_bound`` set, and the CLI warns.

The fit is written to ``RUN/temperature.json`` with the weights' sha256; evaluate and predict
apply it (:func:`apply_run_temperature`, through :func:`bnnkit.engine.features.loop.head_probs`)
before the entropy decomposition, and ignore, with a warning, a file fitted for other weights.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

from bnnkit.data.dataset import ImageDataset, build_transform, draft_size
from bnnkit.data.debias import debias_of
from bnnkit.data.index import DEFAULT_CACHE_DIR
from bnnkit.data.splits import (
    CALIBRATION_SPLIT,
    calibration_items,
    calibration_record,
    in_sample_warning,
    val_items,
)
from bnnkit.engine.build import load_run
from bnnkit.engine.features.cache import cached_features, run_feature_cache
from bnnkit.engine.features.loop import (
    Features,
    extract_features,
    make_loader,
    posterior_samples,
    set_temperature,
    worker_count,
)
from bnnkit.errors import UsageError
from bnnkit.metrics.classification import ece, nll
from bnnkit.metrics.protocol import clean_json
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import TEMPERATURE_FILE, RunLayout
from bnnkit.run.threshold import model_fingerprint

TEMPERATURE_SCHEMA_VERSION = 1
#: the range ``T`` is searched in (log-uniform grid of :data:`GRID` points, then refined).
T_BOUNDS = (0.05, 20.0)
GRID = 49


def _log_probs(probs: Tensor) -> np.ndarray:
    return np.log(np.clip(probs.double().cpu().numpy(), 1e-12, None))


def tempered_p_fake(probs: Tensor, temperature: float) -> Tensor:
    """p(fake) of the predictive ``mean_k softmax(log p_k / T)`` from ``probs[K, N, 2]``."""
    z = _log_probs(probs) / temperature
    z -= z.max(-1, keepdims=True)
    q = np.exp(z)
    q /= q.sum(-1, keepdims=True)
    if q.shape[-1] > 2:  # a generator-attribution head: p(fake) = 1 - p(real)
        return torch.from_numpy(1.0 - q.mean(0)[:, 0])
    return torch.from_numpy(q.mean(0)[:, 1])


def tempered_nll(probs: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean NLL (nats) of the tempered posterior predictive (see :func:`tempered_p_fake`)."""
    return nll(tempered_p_fake(probs, temperature), labels)


def fit_temperature(probs: Tensor, labels: Tensor, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The ``T`` in ``bounds`` minimising :func:`tempered_nll` over ``probs[K, N, 2]``: the best
    of a log-uniform grid, refined by a bounded scalar search of ``log T`` between its grid
    neighbours (so a predictive whose NLL is not unimodal in T still gets the global minimum)."""
    if probs.shape[1] == 0:
        raise UsageError("no images to fit a temperature on")
    grid = np.linspace(math.log(bounds[0]), math.log(bounds[1]), GRID)
    losses = [tempered_nll(probs, labels, math.exp(g)) for g in grid]
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, GRID - 1)]
    res = minimize_scalar(
        lambda g: tempered_nll(probs, labels, math.exp(g)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-7},
    )
    best = float(res.x) if res.fun <= losses[i] else float(grid[i])
    return math.exp(best)


def _features(detector, method, recipe, meta, items, device) -> Features:
    d = recipe.data
    transform = build_transform(
        d.image_size, d.preprocess, train=False, norm=detector.normalisation
    )
    dataset = ImageDataset(
        items, transform, list(d.train_generators),
        draft=draft_size(d.preprocess, d.image_size, d.jpeg_draft), debias=debias_of(recipe),
    )  # fmt: skip
    workers = worker_count(d.num_workers, device)
    cache_dir = run_feature_cache(recipe, meta)
    if cache_dir is not None:  # a frozen run: the feature cache (evaluate's entries)
        split = CALIBRATION_SPLIT if recipe.data.calibration else "val"
        return cached_features(detector, dataset, device, recipe, split, cache_dir, workers=workers)
    loader = make_loader(dataset, recipe.eval.batch_size, seed=recipe.seed, workers=workers,
                         device=device)  # fmt: skip
    return extract_features(detector, loader, device)


@torch.no_grad()
def posterior_probs(method, feats: Features, k: int, device: torch.device, batch: int) -> Tensor:
    """``probs[K, N, 2]`` of the (untempered) head on every feature row, sampled on the batches
    evaluation samples on (rows grouped by ``index // batch``)."""
    method.head.eval()
    groups = feats.indices // batch
    bounds = torch.nonzero(groups[1:] != groups[:-1]).flatten().add(1).tolist()
    parts = [
        method.sample(feats.features[a:b].to(device), k).double().cpu()
        for a, b in zip([0, *bounds], [*bounds, len(groups)], strict=True)
        if a < b
    ]
    return torch.cat(parts, dim=1) if parts else torch.zeros(k, 0, 2, dtype=torch.float64)


def calibrate_run(
    run_dir: Path,
    *,
    samples: int | None = None,
    device: torch.device,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Fit the run's temperature on its calibration images (a run without them: its seen
    generators' validation images, with a warning) and write ``RUN/temperature.json``; return
    its content. A ``T`` at the lower bound of the search raises :class:`UsageError`, nothing
    written."""
    layout = RunLayout(run_dir)
    recipe, detector, method, meta = load_run(layout.root, device)
    set_temperature(method, None)
    d = recipe.data
    if data_root:
        d.root = data_root
    seen = list(d.train_generators)
    if d.calibration:
        items = calibration_items(recipe, DEFAULT_CACHE_DIR)
    else:
        warnings.warn(in_sample_warning("the temperature is"), stacklevel=2)
        items = val_items(recipe, seen, DEFAULT_CACHE_DIR)
    feats = _features(detector, method, recipe, meta, items, device)
    if not len(feats.labels):
        which = "calibration" if d.calibration else "validation"
        raise UsageError(
            f"no readable {which} images of the seen generators under '{d.root}'",
            hint="check the data with `bnnkit data check`",
        )
    k = posterior_samples(recipe, "evaluate", requested=samples)
    torch.manual_seed(recipe.seed)  # evaluation's seed rule: the draws evaluate makes
    probs = posterior_probs(method, feats, k, device, recipe.eval.batch_size)
    labels = feats.labels
    t = fit_temperature(probs, labels)
    before, after = tempered_p_fake(probs, 1.0), tempered_p_fake(probs, t)
    floor = tempered_nll(probs, labels, T_BOUNDS[0])  # as low as the optimum: the NLL falls to it
    _refuse_at_bound(t, nll(before, labels), nll(after, labels), floor, int(labels.numel()))
    record = {
        "schema_version": TEMPERATURE_SCHEMA_VERSION,
        "temperature": t,
        "samples": k,
        "method": recipe.inference.name,
        "fitted_on": calibration_record(recipe, int(labels.numel())),
        "fit": {
            "nll_before": nll(before, labels),
            "nll_after": nll(after, labels),
            "ece_before": ece(before, labels),
            "ece_after": ece(after, labels),
        },
        "bounds": list(T_BOUNDS),
        #: T at the upper bound: the NLL still falls beyond it (a head near chance level)
        "at_bound": at_bound(t),
        "model_sha256": model_fingerprint(layout.root),
        "rule": "each posterior sample p_k -> softmax(log p_k / temperature), then the mean",
    }
    atomic_write_text(layout.temperature, json.dumps(clean_json(record), indent=2))
    return record


def at_bound(t: float) -> bool:
    """Whether ``t`` is at a bound of :data:`T_BOUNDS` (the NLL still falls beyond it)."""
    return not T_BOUNDS[0] * 1.001 < t < T_BOUNDS[1] / 1.001


def _refuse_at_bound(t: float, before: float, after: float, floor: float, n: int) -> None:
    """A fit whose NLL at the lower bound (``floor``) is as low as at its ``t`` (the NLL falls,
    or is flat to float precision, all the way down): a :class:`UsageError` (exit code 2)."""
    if not (t < 1.0 and floor <= after + 1e-12):
        return
    raise UsageError(
        f"temperature {t:.4g} is at the lower bound of the search {list(T_BOUNDS)} on {n} "
        f"images (NLL {before:.4g} -> {after:.4g}): the fit set is separated perfectly (the NLL "
        "keeps falling as T shrinks), so a temperature would only make every prediction more "
        "confident, also the wrong ones; not applied, nothing written",
        hint="calibrate on more (or harder) images, or use the run without a temperature",
    )


def reset_temperature(run_dir: Path) -> Path | None:
    """Remove the run's ``temperature.json`` (evaluate and predict then apply none); its path,
    or ``None`` when there was none."""
    path = RunLayout(run_dir).temperature
    if not path.is_file():
        return None
    path.unlink()
    return path


def read_temperature(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The run's temperature record and a warning: ``(None, None)`` without a file,
    ``(None, why)`` for a file that is unreadable or fitted for other weights (ignored)."""
    path = RunLayout(run_dir).temperature
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        t = float(data["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path} is unreadable ({exc}); ignored. Re-run `bnnkit calibrate`."
    if data.get("schema_version") != TEMPERATURE_SCHEMA_VERSION or not t > 0:
        return None, f"{path}: unsupported temperature file; ignored. Re-run `bnnkit calibrate`."
    if data.get("model_sha256") != model_fingerprint(run_dir):
        return None, (
            f"{path} was fitted for other weights (the run was trained further); ignored, "
            "no temperature applied. Re-run `bnnkit calibrate`."
        )
    return data, None


def apply_run_temperature(run_dir: Path, method) -> tuple[dict[str, Any] | None, str | None]:
    """Set the run's valid temperature (if any) on ``method`` for every later head sample;
    return :func:`read_temperature`'s ``(record, warning)``."""
    record, warning = read_temperature(run_dir)
    set_temperature(method, record["temperature"] if record else None)
    return record, warning


def temperature_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The ``temperature`` block of ``metrics.json`` (docs/metrics-schema.md)."""
    return {
        "value": record["temperature"],
        "file": TEMPERATURE_FILE,
        "samples": record.get("samples"),
        "fitted_on": record.get("fitted_on"),
        "fit": record.get("fit"),
    }
