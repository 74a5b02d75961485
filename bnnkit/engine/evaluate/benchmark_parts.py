"""The pieces of :mod:`bnnkit.engine.evaluate.benchmarks` (``bnnkit evaluate --data``): the
``NAME=ROOT[:LAYOUT]`` specs, each benchmark's generators and images, the per-benchmark metric
blocks, the cross-benchmark summary, and the ``predictions.csv`` / ``timing.json`` parts."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bnnkit.data.index import DEFAULT_CACHE_DIR
from bnnkit.data.layouts import LAYOUTS, list_generators, resolve_layout
from bnnkit.data.splits import CALIBRATION_SPLIT, val_items
from bnnkit.engine.evaluate.write import CLEAN
from bnnkit.engine.features.loop import StreamStats
from bnnkit.errors import UsageError
from bnnkit.metrics.protocol import abstention_metrics, condition_metrics, group_report
from bnnkit.metrics.records import Predictions
from bnnkit.report.predictions import predictions_csv

__all__ = [
    "Benchmark",
    "block",
    "benchmark_csv",
    "merged_stats",
    "parse_benchmarks",
    "remap",
    "resolve_benchmark",
    "streamed_counts",
    "summary",
]


@dataclass(frozen=True)
class Benchmark:
    """One ``--data NAME=ROOT[:LAYOUT]``."""

    name: str
    root: str
    layout: str = "auto"


def parse_benchmarks(specs: list[str] | tuple[str, ...]) -> list[Benchmark]:
    """``NAME=ROOT`` or ``NAME=ROOT:LAYOUT`` (LAYOUT one of auto, genimage, binary, manifest;
    a root that itself ends in ``:word`` keeps it when the word is no layout)."""
    out: list[Benchmark] = []
    for spec in specs:
        name, eq, root = spec.partition("=")
        name = name.strip()
        if not eq or not name or not root or "/" in name:
            raise UsageError(
                f"--data {spec!r}: expected NAME=ROOT or NAME=ROOT:LAYOUT",
                hint="e.g. --data genimage=/data/GenImage --data chameleon=/data/Chameleon:binary",
            )
        layout = "auto"
        head, colon, tail = root.rpartition(":")
        if colon and tail in LAYOUTS and head:
            root, layout = head, tail
        if any(b.name == name for b in out):
            raise UsageError(f"--data: benchmark name '{name}' given twice")
        out.append(Benchmark(name, root, layout))
    return out


@dataclass
class ResolvedBenchmark:
    """A benchmark resolved: its layout, generators (seen first) and images."""

    spec: Benchmark
    layout: str
    seen: list[str]
    unseen: list[str]
    items: list[Any]

    @property
    def generators(self) -> list[str]:
        return self.seen + self.unseen

    def pooled(self, gen: str) -> str:
        return f"{self.spec.name}/{gen}"


def resolve_benchmark(b: Benchmark, recipe, train: list[str]) -> ResolvedBenchmark:
    if not Path(b.root).exists():  # its own message (not the run's data root's hint)
        raise UsageError(
            f"--data {b.name}={b.root}: the benchmark's data root does not exist",
            hint="NAME=ROOT[:LAYOUT] with ROOT a folder (binary, genimage) or a manifest",
        )
    kind = resolve_layout(b.root, b.layout)
    found = sorted(list_generators(b.root, kind))
    if not found:
        raise UsageError(f"--data {b.name}={b.root}: no generators found ({kind} layout)")
    seen = [g for g in train if g in found]
    unseen = [g for g in found if g not in train]
    items = val_items(recipe, seen + unseen, DEFAULT_CACHE_DIR, root=b.root, layout=kind)
    if not items:
        raise UsageError(f"--data {b.name}={b.root}: no validation images found")
    named = [replace(s, generator=f"{b.name}/{s.generator}") for s in items]  # one stream list
    return ResolvedBenchmark(b, kind, seen, unseen, named)


def remap(record: Predictions, lut: torch.Tensor) -> Predictions:
    """The images of ``record`` whose generator ``lut`` maps (to >= 0), with the new indices."""
    new = lut[record.generators]
    out = record.select(new >= 0)
    out.generators = new[new >= 0]
    return out


def block(record, gens, n_seen, requested, thresholds, abstain_on, coverage, options, crossfit):
    """Every metric of one record (a benchmark's or the pooled one) under one condition."""
    return {
        **condition_metrics(record, gens, n_seen, requested),
        "all": group_report(record),
        "abstention": abstention_metrics(
            record, gens, n_seen, thresholds, abstain_on, coverage, crossfit, options
        ),
        # every image of it as one group: what the threshold catches of all its errors
        "abstention_all": abstention_metrics(
            record, gens, 0, {abstain_on: thresholds[abstain_on]}, abstain_on, coverage
        )["by_score"][abstain_on]["unseen_combined"],
    }


def summary(benchmarks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and minimum over the benchmarks of their pooled (``all``) accuracy and AUROC (a
    benchmark where one is undefined, e.g. one class only, is left out of that one)."""
    out: dict[str, Any] = {"n_benchmarks": len(benchmarks)}
    for key in ("accuracy", "auroc", "real_accuracy", "fake_accuracy"):
        vals = {n: b["all"].get(key) for n, b in benchmarks.items()}
        vals = {n: v for n, v in vals.items() if v is not None and math.isfinite(v)}
        worst = min(vals, key=lambda n: vals[n]) if vals else None
        out[key] = {
            "mean": sum(vals.values()) / len(vals) if vals else float("nan"),
            "min": vals[worst] if worst else float("nan"),
            "min_benchmark": worst,
            "n": len(vals),
        }
    return out


def merged_stats(parts: list[StreamStats]) -> StreamStats:
    """The benchmarks' streams as one clean condition (``timing.json``'s top-level seconds)."""
    return StreamStats(
        broken=[x for p in parts for x in p.broken],
        features_seconds=sum(p.features_seconds for p in parts),
        sampling_seconds=sum(p.sampling_seconds for p in parts),
        scores_seconds=sum(p.scores_seconds for p in parts),
    )


def streamed_counts(records, calibration: Predictions, stats) -> dict[str, int]:
    """Images each stream sent through the backbone (or read from a frozen run's feature cache),
    unreadable ones included: the calibration images, each benchmark's, and their ``total``;
    with ``--data`` every image once."""
    out = {CALIBRATION_SPLIT: len(calibration) + len(stats[CALIBRATION_SPLIT].broken)}
    for name, r in records.items():
        out[f"benchmark:{name}"] = len(r) + len(stats[f"benchmark:{name}"].broken)
    out["total"] = sum(out.values())
    return out


def benchmark_csv(benches: list[ResolvedBenchmark], records: dict[str, Predictions]) -> str:
    """``predictions.csv`` with a first column ``benchmark``; each path relative to its
    benchmark's root, each generator as that benchmark names it."""
    lines: list[str] = []
    for b in benches:
        paths = [s.path for s in b.items]
        text = predictions_csv(
            {CLEAN: records[b.spec.name]}, paths, b.generators, len(b.seen), b.spec.root
        ).splitlines()
        if not lines:
            lines.append("benchmark," + text[0])
        lines += [f"{b.spec.name},{row}" for row in text[1:]]
    return "\n".join(lines) + "\n"
