"""``bnnkit evaluate``: GenImage's protocol plus the uncertainty metrics a paper reports.

One call evaluates a run on the validation split of the generators it was trained on ("seen")
and of the unseen ones (``--ood``, default the recipe's ``data.holdout``), first on clean images
and then under each requested degradation (``--degrade``, see :mod:`bnnkit.data.degrade`). The
backbone runs once per image and condition; the K posterior samples are drawn over the head only.

Written to the run directory:

- ``metrics.json`` (``schema_version`` 2, every key documented in ``docs/metrics-schema.md``):
  only numbers that depend on the run, the data and the options, so two same-seed runs give
  identical files. Timings go to ``timing.json``.
- ``threshold.json``: the abstention threshold calibrated on seen-generator validation images for
  the target coverage; ``bnnkit predict`` reads it to answer ``uncertain``.
- ``predictions.csv``: per image and condition, p(fake) and the total / aleatoric / epistemic
  uncertainty (nats), so any table can be recomputed.
- ``plots/*.png`` and ``report.md`` (see :mod:`bnnkit.report`).

Abstention uses the **total** predictive uncertainty (entropy of the mean predictive) by default,
``--abstain-on epistemic`` switches to the mutual information. Why total: abstaining is meant to
avoid wrong verdicts, and the total entropy ranks likely errors on seen data best (it contains the
epistemic part, total = aleatoric + epistemic); it is also defined for every method, whereas a
deterministic method (MAP) has epistemic = 0 for every image, which would make the threshold
abstain on nothing. ``metrics.json`` reports both scores side by side (``abstention.by_score``),
so the choice can be checked on the unseen generators' errors.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from bnnkit.data.dataset import ImageDataset, build_transform
from bnnkit.data.degrade import Degradation
from bnnkit.data.genimage import Sample, check_generator_name, index_split
from bnnkit.engine.build import load_run
from bnnkit.engine.checkpoint import atomic_write_text, model_path
from bnnkit.engine.loop import make_loader, stream_predictive, worker_count
from bnnkit.errors import UsageError
from bnnkit.metrics.classification import classification_report
from bnnkit.metrics.ood import ood_report
from bnnkit.metrics.selective import (
    accuracy_at_coverage,
    aurc,
    aurc_optimal,
    threshold_for_coverage,
)

SCHEMA_VERSION = 2
THRESHOLD_SCHEMA_VERSION = 1
THRESHOLD_FILE = "threshold.json"
PREDICTIONS_FILE = "predictions.csv"
UNCERTAINTY_KEYS = ("total", "aleatoric", "epistemic")
#: OOD scores: 1 - max-probability, predictive entropy (total), mutual information (epistemic).
OOD_SCORES = ("max_prob", "total", "epistemic")
#: Scores an abstention threshold can be calibrated on (max_prob ranks like total for 2 classes).
ABSTAIN_SCORES = ("total", "epistemic")
DEFAULT_ABSTAIN_SCORE = "total"
CLEAN = "clean"


def _clean(value: Any) -> Any:
    """NaN/inf -> None so metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _mean(t: Tensor) -> float:
    return float(t.double().mean()) if t.numel() else float("nan")


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


# --------------------------------------------------------------------------------------------
# Per-image results and the metrics computed from them (pure functions, no I/O)


@dataclass
class ConditionData:
    """Per-image results of one condition (clean or a degradation), in loader order.

    ``generators`` indexes the evaluation's generator list, whose first ``n_seen`` entries are
    the seen generators; ``indices`` index the evaluated samples (files).
    """

    p_fake: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    labels: Tensor
    generators: Tensor
    indices: Tensor

    @property
    def correct(self) -> Tensor:
        return (self.p_fake >= 0.5).long() == self.labels

    def score(self, name: str) -> Tensor:
        """An uncertainty score per image (higher = less certain), as float64."""
        if name == "max_prob":  # 1 - max_c mean p_c: what metrics.uncertainty.max_prob_score gives
            p = self.p_fake.double()
            return 1.0 - torch.maximum(p, 1.0 - p)
        if name in UNCERTAINTY_KEYS:
            return getattr(self, name).double()
        raise ValueError(f"unknown uncertainty score {name!r}")


def _group_report(data: ConditionData, mask: Tensor) -> dict[str, Any]:
    out: dict[str, Any] = classification_report(data.p_fake[mask], data.labels[mask])
    for key in UNCERTAINTY_KEYS:
        out[f"{key}_uncertainty"] = _mean(getattr(data, key)[mask])
    return out


def _ood_entry(data: ConditionData, seen_mask: Tensor, ood_mask: Tensor) -> dict[str, Any]:
    """Seen-generator images (ID) against fakes of unseen generator(s) (OOD), for every score.

    Reals in an unseen generator's folder are ImageNet photos like the seen ones, so only its
    fakes count as out-of-distribution.
    """
    pool = seen_mask | ood_mask
    is_ood = ood_mask[pool]
    entry: dict[str, Any] = {"n_id": int(seen_mask.sum()), "n_ood": int(ood_mask.sum())}
    for name in OOD_SCORES:
        rep = ood_report(data.score(name)[pool], is_ood)
        entry[name] = {k: rep[k] for k in ("auroc", "aupr", "fpr95")}
    return entry


def selective_report(uncertainty: Tensor, correct: Tensor) -> dict[str, Any]:
    """Risk-coverage summary: AURC, the AURC of a perfect ranking (errors last), accuracy at
    100%, 90% and 80% coverage (most certain images kept)."""
    return {
        "n": int(correct.numel()),
        "aurc": aurc(uncertainty, correct),
        "aurc_optimal": aurc_optimal(correct),
        "accuracy": _mean(correct.double()),
        "accuracy_at_90": accuracy_at_coverage(uncertainty, correct, 0.9),
        "accuracy_at_80": accuracy_at_coverage(uncertainty, correct, 0.8),
    }


def condition_metrics(data: ConditionData, generators: list[str], n_seen: int) -> dict[str, Any]:
    """Every metric of one condition: per generator, seen/unseen pooled, GenImage average
    accuracy, OOD detection per unseen generator and pooled, selective prediction on seen."""
    g, y = data.generators, data.labels
    seen_mask = g < n_seen
    unseen_mask = ~seen_mask
    per_generator: dict[str, Any] = {}
    for i, name in enumerate(generators):
        entry = _group_report(data, g == i)
        entry["seen"] = i < n_seen
        per_generator[name] = entry
    ood: dict[str, Any] = {}
    for j, name in enumerate(generators[n_seen:], start=n_seen):
        fakes = (g == j) & (y == 1)
        entry = {
            "accuracy": per_generator[name]["accuracy"],
            "fake_detection_rate": _mean((data.p_fake[fakes] >= 0.5).double()),
            "mean_epistemic_unseen_fakes": _mean(data.epistemic[fakes]),
            "mean_epistemic_seen": _mean(data.epistemic[seen_mask]),
        }
        entry.update(_ood_entry(data, seen_mask, fakes))
        ood[name] = entry
    has_unseen = len(generators) > n_seen

    def avg(names: list[str]) -> float:
        accs = [per_generator[n]["accuracy"] for n in names]
        accs = [a for a in accs if a is not None and math.isfinite(a)]
        return sum(accs) / len(accs) if accs else float("nan")

    correct = data.correct
    return {
        "seen": _group_report(data, seen_mask),
        "unseen": _group_report(data, unseen_mask) if has_unseen else None,
        "per_generator": per_generator,
        "average_accuracy": {
            "all": avg(generators),
            "seen": avg(generators[:n_seen]),
            "unseen": avg(generators[n_seen:]) if has_unseen else float("nan"),
        },
        "ood": ood,
        "ood_combined": _ood_entry(data, seen_mask, unseen_mask & (y == 1)) if has_unseen else None,
        "selective": {
            s: selective_report(data.score(s)[seen_mask], correct[seen_mask])
            for s in ABSTAIN_SCORES
        },
    }


def calibrate_thresholds(
    data: ConditionData, n_seen: int, coverage: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Per abstention score: the threshold that keeps ``coverage`` of the seen-generator images
    (:func:`~bnnkit.metrics.selective.threshold_for_coverage`, abstain when ``u > t``), and a
    2-fold cross-fit estimate of the coverage it reaches on *new* seen images (calibrate on the
    even-positioned images, measure on the odd ones and vice versa). The in-sample coverage is
    at least ``coverage`` by construction; the cross-fit one tells whether it generalises."""
    seen = data.generators < n_seen
    thresholds, crossfit = {}, {}
    for name in ABSTAIN_SCORES:
        u = data.score(name)[seen]
        thresholds[name] = threshold_for_coverage(u, coverage)
        folds = [u[0::2], u[1::2]]
        if min(f.numel() for f in folds) == 0:
            crossfit[name] = float("nan")
            continue
        kept = sum(
            int((folds[1 - i] <= threshold_for_coverage(folds[i], coverage)).sum()) for i in (0, 1)
        )
        crossfit[name] = kept / u.numel()
    return thresholds, crossfit


def _abstain_stats(u: Tensor, correct: Tensor, threshold: float) -> dict[str, Any]:
    keep = u <= threshold
    errors = ~correct
    n_err = int(errors.sum())
    caught = int((errors & ~keep).sum())
    return {
        "n": int(u.numel()),
        "coverage": _mean(keep.double()),
        "accuracy_kept": _mean(correct[keep].double()),
        "accuracy_all": _mean(correct.double()),
        "errors": n_err,
        "errors_caught": caught,
        "errors_caught_rate": caught / n_err if n_err else float("nan"),
        "correct_abstained": int((correct & ~keep).sum()),
    }


def abstention_metrics(
    data: ConditionData,
    generators: list[str],
    n_seen: int,
    thresholds: dict[str, float],
    score: str,
    coverage: float,
    crossfit: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What abstaining at ``u > threshold`` does on seen images and on each unseen generator:
    coverage, accuracy on the kept images, and how many of the errors it catches."""
    g, correct = data.generators, data.correct
    by_score: dict[str, Any] = {}
    for name, t in thresholds.items():
        u = data.score(name)
        entry: dict[str, Any] = {"threshold": t}
        if crossfit is not None:
            entry["coverage_crossfit"] = crossfit[name]
        entry["seen"] = _abstain_stats(u[g < n_seen], correct[g < n_seen], t)
        entry["unseen"] = {
            gen: _abstain_stats(u[g == j], correct[g == j], t)
            for j, gen in enumerate(generators[n_seen:], start=n_seen)
        }
        unseen = g >= n_seen
        entry["unseen_combined"] = (
            _abstain_stats(u[unseen], correct[unseen], t) if len(generators) > n_seen else None
        )
        by_score[name] = entry
    return {"score": score, "coverage_target": coverage, "by_score": by_score}


# --------------------------------------------------------------------------------------------
# Running the detector over one condition


@dataclass(frozen=True)
class _Chain:
    """A degradation on the decoded PIL image, then the evaluation transform (picklable)."""

    first: Degradation
    then: Any

    def __call__(self, image):
        return self.then(self.first(image))


def _run_condition(
    detector,
    method,
    items: list[Sample],
    generators: list[str],
    transform,
    recipe,
    device,
    k: int,
    progress,
    label: str,
) -> tuple[ConditionData, list, float, float]:
    dataset = ImageDataset(items, transform, generators)
    loader = make_loader(
        dataset,
        recipe.eval.batch_size,
        shuffle=False,
        seed=recipe.seed,
        workers=worker_count(recipe.data.num_workers, device),
        device=device,
    )
    task = progress.add_task(f"evaluate: {label}", total=len(dataset))
    torch.manual_seed(recipe.seed)  # same draws for every condition and every run
    out = stream_predictive(
        detector, method, loader, k, device, lambda n: progress.advance(task, n)
    )
    pred = out.pred
    data = ConditionData(
        pred.p_fake,
        pred.total,
        pred.aleatoric,
        pred.epistemic,
        out.labels,
        out.generators,
        out.indices,
    )
    return data, out.broken, out.features_seconds, out.sampling_seconds


def model_fingerprint(run_dir: Path) -> str:
    """sha256 of the run's weights: ``threshold.json`` is only valid for these weights."""
    digest = hashlib.sha256()
    with open(model_path(run_dir), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_threshold(run_dir: Path) -> dict[str, Any] | None:
    """The run's calibrated abstention threshold, or None if there is none (or it is stale:
    calibrated for other weights than the run's current ``model.safetensors``)."""
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}", hint="re-run `bnnkit evaluate`") from None
    if data.get("schema_version") != THRESHOLD_SCHEMA_VERSION or data.get("score") not in (
        ABSTAIN_SCORES
    ):
        raise UsageError(f"{path}: unsupported threshold file", hint="re-run `bnnkit evaluate`")
    if data.get("model_sha256") != model_fingerprint(run_dir):
        return None
    return data


def _relative(path: Path, root: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return os.path.relpath(path, root).replace(os.sep, "/")


def _predictions_csv(
    conditions: dict[str, ConditionData],
    items: list[Sample],
    generators: list[str],
    n_seen: int,
    root: str,
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["condition", "generator", "seen", "label", "path", "p_fake", *UNCERTAINTY_KEYS]
    )
    for cond, data in conditions.items():
        for row in range(data.labels.numel()):
            gi = int(data.generators[row])
            writer.writerow(
                [
                    cond,
                    generators[gi],
                    int(gi < n_seen),
                    int(data.labels[row]),
                    _relative(items[int(data.indices[row])].path, root),
                    *(f"{float(getattr(data, k)[row]):.9g}" for k in ("p_fake", *UNCERTAINTY_KEYS)),
                ]
            )
    return buf.getvalue()


# --------------------------------------------------------------------------------------------


def evaluate_run(
    run_dir: Path,
    *,
    ood: list[str] | None = None,
    samples: int | None = None,
    device: torch.device,
    console: Console | None = None,
    data_root: str | None = None,
    degradations: list[Degradation] | None = None,
    coverage: float | None = None,
    abstain_on: str = DEFAULT_ABSTAIN_SCORE,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluate a run, write ``metrics.json``, ``timing.json``, ``threshold.json``,
    ``predictions.csv``, ``plots/*.png`` (unless ``plots=False``) and ``report.md``; return the
    metrics dict (what ``metrics.json`` holds)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from bnnkit.plugins import get_registry

    if abstain_on not in ABSTAIN_SCORES:
        raise UsageError(f"--abstain-on {abstain_on!r}: choose one of {', '.join(ABSTAIN_SCORES)}")
    run_dir = Path(run_dir)
    recipe, detector, method, meta = load_run(run_dir, device)
    if data_root:
        recipe.data.root = data_root
    coverage = recipe.eval.coverage if coverage is None else float(coverage)
    if not 0.0 < coverage <= 1.0:
        raise UsageError(f"--coverage {coverage}: must be in (0, 1], e.g. 0.95")
    ood_gens = resolve_ood(recipe, ood)
    seen = list(recipe.data.train_generators)
    generators = seen + ood_gens
    n_seen = len(seen)
    k = samples or recipe.eval.samples
    degradations = list(degradations or [])
    d = recipe.data
    items = index_split(
        d.root, generators, "val", limit=d.val_limit, balance=d.balance, seed=recipe.seed
    )
    base_transform = build_transform(
        d.image_size, d.preprocess, train=False, norm=detector.normalisation
    )

    conditions: dict[str, ConditionData] = {}
    timing: dict[str, Any] = {"conditions": {}}
    broken: list = []
    t_start = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=console is None,
    ) as progress:
        for deg in [None, *degradations]:
            name = CLEAN if deg is None else deg.name
            transform = base_transform if deg is None else _Chain(deg, base_transform)
            data, bad, t_feat, t_samp = _run_condition(
                detector, method, items, generators, transform, recipe, device, k, progress, name
            )
            if deg is None:
                broken = bad
            conditions[name] = data
            timing["conditions"][name] = {"features_seconds": t_feat, "sampling_seconds": t_samp}

    clean = conditions[CLEAN]
    if not bool((clean.generators < n_seen).any()):
        raise UsageError(
            f"no readable validation images of the seen generators under '{d.root}'",
            hint="check the data with `bnnkit data check`",
        )
    thresholds, crossfit = calibrate_thresholds(clean, n_seen, coverage)
    registry = get_registry()
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": run_dir.name,
        "recipe": recipe.name,
        "method": recipe.inference.name,
        "head": recipe.head_name(registry),
        "backbone": recipe.model.backbone.name,
        "attention": recipe.model.attention.name,
        "samples": k,
        "seed": recipe.seed,
        "split": "val",
        "image_size": d.image_size,
        "preprocess": d.preprocess,
        "seen_generators": seen,
        "ood_generators": ood_gens,
        "coverage_target": coverage,
        **condition_metrics(clean, generators, n_seen),
        "abstention": {
            **abstention_metrics(
                clean, generators, n_seen, thresholds, abstain_on, coverage, crossfit
            ),
            "calibration": {
                "split": "val",
                "generators": seen,
                "n": int((clean.generators < n_seen).sum()),
                "file": THRESHOLD_FILE,
            },
        },
        "degradations": {},
        "broken_files": [{"path": b.path, "reason": b.reason} for b in broken],
    }
    for deg in degradations:
        data = conditions[deg.name]
        metrics["degradations"][deg.name] = {
            "kind": deg.kind,
            "value": deg.value,
            "description": deg.describe(),
            **condition_metrics(data, generators, n_seen),
            "abstention": abstention_metrics(
                data, generators, n_seen, thresholds, abstain_on, coverage
            ),
        }
    metrics = _clean(metrics)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))

    threshold = {
        "schema_version": THRESHOLD_SCHEMA_VERSION,
        "score": abstain_on,
        "threshold": thresholds[abstain_on],
        "coverage_target": coverage,
        "coverage_seen": metrics["abstention"]["by_score"][abstain_on]["seen"]["coverage"],
        "coverage_crossfit": crossfit[abstain_on],
        "thresholds": thresholds,
        "samples": k,
        "method": recipe.inference.name,
        "calibrated_on": {
            "split": "val",
            "generators": seen,
            "n": int((clean.generators < n_seen).sum()),
        },
        "model_sha256": model_fingerprint(run_dir),
        "rule": f"verdict 'uncertain' when {abstain_on} uncertainty (nats) > threshold",
    }
    atomic_write_text(run_dir / THRESHOLD_FILE, json.dumps(_clean(threshold), indent=2))
    atomic_write_text(
        run_dir / PREDICTIONS_FILE,
        _predictions_csv(conditions, items, generators, n_seen, d.root),
    )

    t_report = time.perf_counter()
    from bnnkit.report import PerImage, write_report

    per_image = PerImage.from_tensors(clean, generators, n_seen)
    write_report(run_dir, metrics, per_image, plots=plots)
    t_end = time.perf_counter()

    n = max(int(clean.labels.numel()), 1)
    timing.update(
        {
            "images": int(clean.labels.numel()),
            "samples": k,
            "features_seconds": timing["conditions"][CLEAN]["features_seconds"],
            "sampling_seconds": timing["conditions"][CLEAN]["sampling_seconds"],
            "predict_seconds_per_image": sum(timing["conditions"][CLEAN].values()) / n,
            "report_seconds": t_end - t_report,
            "total_seconds": t_end - t_start,
            "train_seconds": meta.get("train_seconds"),
            "device": str(device),
        }
    )
    atomic_write_text(run_dir / "timing.json", json.dumps(_clean(timing), indent=2))
    return metrics
