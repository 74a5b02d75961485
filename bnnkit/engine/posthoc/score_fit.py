"""Fitting the OOD scores of a run (which scores run: :mod:`bnnkit.engine.posthoc.score_set`).

- Scores with ``fit_on = "train"`` (Mahalanobis, kNN, ...) are fitted once per run on the
  training images' (never the calibration images') pooled features and head outputs
  (:func:`fit_train_scores`): from the run's frozen-feature cache when it has one, else one
  extraction pass over a balanced subset of the training split (at most ``fit_limit`` images,
  default :data:`FIT_LIMIT`). Each fit is saved in the run (safetensors,
  :func:`bnnkit.scores.store.save_fit`) under a fingerprint of the weights, the temperature,
  the training files and the limit; later evaluations load it, and a stale or missing one is
  refit.
- Scores with ``fit_on = "seen"`` (``fused``) read only other scores' values (and, for
  ``fused`` with ``weights = "errors"``, the predictive): evaluate fits them on the clean
  calibration images (:mod:`bnnkit.data.splits`), the images the abstention threshold is
  calibrated on, after streaming (:func:`fit_seen_scores`); a run without a calibration split
  fits them on the seen validation images. The unseen generators never fit anything.
- ``bnnkit predict`` loads the fits its abstention score needs
  (:func:`bnnkit.engine.posthoc.score_set.load_scores`) with the fingerprints ``threshold.json``
  recorded, and refuses a run without them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnnkit.data.dataset import ImageDataset, build_transform, draft_size
from bnnkit.data.debias import debias_of
from bnnkit.data.genimage import Sample
from bnnkit.data.index import DEFAULT_CACHE_DIR
from bnnkit.data.splits import train_calibration_split
from bnnkit.engine.features.cache import cached_features, run_feature_cache
from bnnkit.engine.features.loop import extract_features, head_outputs, make_loader, worker_count
from bnnkit.errors import UsageError
from bnnkit.metrics.records import Predictions
from bnnkit.run.threshold import model_fingerprint

__all__ = [
    "FIT_LIMIT",
    "add_seen_values",
    "balanced_rows",
    "fit_seen_scores",
    "fit_sources",
    "fit_train_scores",
    "seen_dependent",
    "seen_fit_halves",
    "train_fingerprint",
]

#: training images a fitted score is fitted on at most (balanced over generator and class)
FIT_LIMIT = 2000


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def balanced_rows(labels: Tensor, groups: Tensor, limit: int, seed: int) -> Tensor:
    """At most ``limit`` row numbers, balanced over the (group, label) cells: a seeded
    round-robin over the shuffled cells, so every cell gives the same number of rows as long as
    it has them. Sorted; every row when ``limit`` is 0 or at least the number of rows."""
    n = int(labels.numel())
    if limit <= 0 or limit >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    key = groups.long() * 2 + labels.long()
    cells = [torch.nonzero(key == c).flatten() for c in torch.unique(key)]
    cells = [c[torch.randperm(c.numel(), generator=g)] for c in cells]
    depth = torch.zeros(len(cells), dtype=torch.long)
    picked: list[int] = []
    while len(picked) < limit:
        for i, cell in enumerate(cells):
            if depth[i] < cell.numel() and len(picked) < limit:
                picked.append(int(cell[depth[i]]))
                depth[i] += 1
    return torch.tensor(sorted(picked), dtype=torch.long)


def _train_items(recipe: Any) -> list[Sample]:
    """The images the run trained on (its training split less the calibration split)."""
    d = recipe.data
    items, _ = train_calibration_split(recipe, DEFAULT_CACHE_DIR)
    if not items:
        raise UsageError(
            f"no training images under '{d.root}': fitted scores are fitted on the run's "
            "training images",
            hint="pass --data-root with the run's data, or choose scores that need no fit",
        )
    return items


def train_fingerprint(run_dir: Path, recipe: Any, method: Any, fit_limit: int, k: int) -> str:
    """What a ``fit_on = "train"`` fit depends on: the weights, the temperature (the logits it
    may read are tempered), the posterior it samples (the inference method and its options,
    evaluation-time ``--set inference.KEY=VALUE`` overrides included, and K samples: e.g.
    ``vim`` reads the mean logits), the recipe's choice of training images (generators, limit,
    balance, seed, calibration share; not the data root, so a run evaluated on a copy of its
    data keeps its fit) and ``fit_limit``."""
    from bnnkit.engine.features.loop import TEMPERATURE_ATTR

    d = recipe.data
    return _digest(
        {
            "model_sha256": model_fingerprint(run_dir),
            "temperature": getattr(method, TEMPERATURE_ATTR, None),
            "posterior": [recipe.inference.name, recipe.inference.options(), int(k)],
            "train": [list(d.train_generators), d.train_limit, d.balance, recipe.seed],
            "calibration": d.calibration,  # the share of the training folders held out
            "transform": [d.image_size, d.preprocess, d.jpeg_draft],
            **({"debias": list(debias_of(recipe))} if debias_of(recipe) else {}),
            "fit_limit": int(fit_limit),
        }
    )


def _training_inputs(recipe, detector, method, meta, device, fit_limit, k, progress):
    """``(ScoreInputs on the CPU, labels, source)`` of at most ``fit_limit`` training images."""
    from bnnkit.scores.base import ScoreInputs

    d = recipe.data
    items = _train_items(recipe)
    gens = list(d.train_generators)
    transform = build_transform(
        d.image_size, d.preprocess, train=False, norm=detector.normalisation
    )
    draft = draft_size(d.preprocess, d.image_size, d.jpeg_draft)
    workers = worker_count(d.num_workers, device)
    cache = run_feature_cache(recipe, meta)
    if cache is not None:  # the features training cached: no backbone pass
        dataset = ImageDataset(items, transform, gens, draft=draft, debias=debias_of(recipe))
        feats = cached_features(
            detector, dataset, device, recipe, "train", cache, progress, workers=workers
        )
        rows = balanced_rows(feats.labels, feats.generators, fit_limit, recipe.seed)
        x, labels, source = feats.features[rows], feats.labels[rows], "feature cache"
    else:
        labels_all = torch.tensor([s.label for s in items])
        groups = torch.tensor([gens.index(s.generator) for s in items])
        pick = balanced_rows(labels_all, groups, fit_limit, recipe.seed).tolist()
        dataset = ImageDataset(
            [items[i] for i in pick], transform, gens, draft=draft, debias=debias_of(recipe)
        )
        loader = make_loader(dataset, recipe.eval.batch_size, seed=recipe.seed,
                             workers=workers, device=device)  # fmt: skip
        advance = None
        if progress is not None:
            task = progress.add_task("fit scores: training features", total=len(dataset))
            advance = lambda n: progress.advance(task, n)  # noqa: E731
        feats = extract_features(detector, loader, device, advance)
        x, labels, source = feats.features, feats.labels, "images"
    if not len(labels):
        raise UsageError(f"no readable training images under '{d.root}' to fit the scores on")
    torch.manual_seed(recipe.seed)
    logits, probs = [], []
    with torch.no_grad():
        method.head.eval()
        for s in range(0, len(labels), recipe.eval.batch_size):
            lo, pr = head_outputs(method, x[s : s + recipe.eval.batch_size].to(device), k)
            logits.append(lo.float().cpu())
            probs.append(pr.float().cpu())
    inputs = ScoreInputs(x.float().cpu(), torch.cat(logits, dim=1), torch.cat(probs, dim=1))
    return inputs, labels, source


def fit_train_scores(
    scores: dict[str, Any],
    *,
    run_dir: Path,
    recipe: Any,
    detector: Any,
    method: Any,
    meta: dict[str, Any],
    device: torch.device,
    k: int,
    fit_limit: int = FIT_LIMIT,
    progress: Any = None,
) -> dict[str, Any]:
    """Load the run's fit of every ``fit_on = "train"`` score of ``scores`` (replaced in place
    by the loaded object), fitting and saving those that are missing or stale (one feature pass
    for all of them). Returns what happened: ``fingerprint``, ``loaded`` and ``fitted`` names,
    ``n`` and ``source`` of the training features (when fitted), ``seconds``."""
    from bnnkit.scores.store import load_fit, save_fit

    todo = [n for n, s in scores.items() if s.fit_on == "train"]
    info: dict[str, Any] = {"fingerprint": None, "loaded": [], "fitted": [], "seconds": 0.0}
    if not todo:
        return info
    t0 = time.perf_counter()
    fingerprint = train_fingerprint(run_dir, recipe, method, fit_limit, k)
    info["fingerprint"] = fingerprint
    missing = []
    for name in todo:
        got = load_fit(run_dir, name, scores[name].config, fingerprint)
        if got is None:
            missing.append(name)
        else:
            scores[name] = got
            info["loaded"].append(name)
    if missing:
        inputs, labels, source = _training_inputs(
            recipe, detector, method, meta, device, fit_limit, k, progress
        )
        for name in missing:
            scores[name].fit(inputs, labels)
            save_fit(run_dir, name, scores[name], fingerprint, n=int(labels.numel()))
        info.update(fitted=missing, n=int(labels.numel()), source=source)
    info["seconds"] = time.perf_counter() - t0
    return info


def _value_inputs(values: dict[str, Tensor], p_fake: Tensor | None = None) -> Any:
    """Score inputs that hold only other scores' values (what a ``"seen"`` score reads), and,
    given ``p_fake``, the posterior predictive as ``probs[1, N, 2]`` (what ``fused`` with
    ``weights = "errors"`` reads to find the misclassified images)."""
    from bnnkit.scores.base import ScoreInputs

    n = next(iter(values.values())).numel() if values else 0
    probs = torch.zeros(1, n, 0)
    if p_fake is not None:
        p = p_fake.detach().cpu().double().reshape(-1)
        probs = torch.stack([1.0 - p, p], dim=-1)[None]
    return ScoreInputs(torch.zeros(n, 0), torch.zeros(1, n, 0), probs, values)


def fit_seen_scores(
    scores: dict[str, Any], fit_on: Predictions, n_seen: int, run_dir: Path, key: str
) -> dict[str, Any]:
    """Fit every ``fit_on = "seen"`` score on the seen-generator rows of ``fit_on`` (the
    clean calibration images; for a run without a calibration split, the clean validation
    images): the values of the scores it reads, the predictive ``p(fake)`` and the labels.
    Saved under a fingerprint of the evaluation ``key``; returns ``{fingerprint, fitted, n}``."""
    from bnnkit.scores.store import save_fit

    todo = [n for n, s in scores.items() if s.fit_on == "seen"]
    seen = fit_on.generators < n_seen
    fingerprint = _digest({"evaluation": key, "scores": {n: s.config for n, s in scores.items()}})
    for name in todo:  # in dependency order: a seen score may read another one
        values = {n: fit_on.score(n)[seen] for n in scores[name].needs}
        scores[name].fit(_value_inputs(values, fit_on.p_fake[seen]), fit_on.labels[seen])
        save_fit(run_dir, name, scores[name], fingerprint, n=int(seen.sum()))
        add_seen_values({name: scores[name]}, fit_on)
    return {"fingerprint": fingerprint if todo else None, "fitted": todo, "n": int(seen.sum())}


def seen_fit_halves(record: Predictions, n_seen: int) -> tuple[Predictions, Predictions]:
    """The calibration record split in two for scores fitted on seen images (``fused``): the
    first half fits the score, the second sets its threshold, so the threshold is calibrated on
    values the fit never saw (in-sample, a rank-normalised score's values on its own reference
    images are spread more evenly than on new images, and the threshold keeps too few seen
    images). The seen rows, grouped by (generator, label) cell, go alternately to each half, so
    each cell is split evenly and cells of one image alternate between the halves."""
    seen = torch.nonzero(record.generators < n_seen).flatten()
    key = record.generators[seen].long() * 2 + record.labels[seen].long()
    order = seen[torch.sort(key, stable=True).indices]  # grouped by cell, then by position
    return record.select(order[0::2].sort().values), record.select(order[1::2].sort().values)


def seen_dependent(scores: dict[str, Any]) -> set[str]:
    """The names of the scores that are, or read, a ``fit_on = "seen"`` score."""
    out: set[str] = set()

    def depends(name: str) -> bool:
        score = scores[name]
        return score.fit_on == "seen" or any(depends(n) for n in score.needs if n in scores)

    for name in scores:
        if depends(name):
            out.add(name)
    return out


def fit_sources(entries: dict[str, Any], calibrated_on: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's ``scores`` entries with ``fitted_on``: ``calibrated_on`` (the calibration
    images, or a run's seen val images without them) for ``fit_on = "seen"``; the training
    split (less the calibration images) for ``fit_on = "train"``."""
    for entry in entries.values():
        if entry["fit_on"] == "seen":
            entry["fitted_on"] = dict(calibrated_on)
        elif entry["fit_on"] == "train":
            entry["fitted_on"] = {"split": "train"}
    return entries


def add_seen_values(scores: dict[str, Any], record: Predictions) -> None:
    """Add the values of the ``fit_on = "seen"`` scores of ``scores`` to ``record`` (computed
    from the values it holds of the scores they read)."""
    from bnnkit.scores.store import compute_scores

    for name, score in scores.items():
        if score.fit_on != "seen" or name in record.scores:
            continue
        values = {n: record.score(n) for n in score.needs}
        record.scores.update(compute_scores({name: score}, _value_inputs(values)))
