"""The cross-benchmark tables of an evaluation with ``--data`` (``metrics.json``'s
``benchmarks`` and ``summary``): one row per benchmark (accuracy, R.Acc, F.Acc, AUROC of all its
images, and the share of its errors the abstention threshold catches), then the mean and the
minimum over the benchmarks; and report.md's section with each benchmark's per-generator
tables (:mod:`bnnkit.report.tables_generators`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bnnkit.report.tables import Column, Label, Table, render_markdown

__all__ = [
    "BENCHMARK_COLUMNS",
    "BENCH_CAPTION",
    "benchmark_row",
    "benchmark_section",
    "benchmark_table",
]

#: the cross-benchmark summaries: (column stem, key in ``metrics.json``'s ``summary``, header)
_SUMMARIES = (("acc", "accuracy", "acc"), ("auroc", "auroc", "AUROC"))
_AGGREGATES = ("mean", "min")
#: ``bnnkit compare``'s columns (key, header, digits) of a run evaluated with ``--data``:
#: ``bench_acc_mean``, ``bench_acc_min``, ``bench_auroc_mean``, ``bench_auroc_min``
BENCHMARK_COLUMNS: list[tuple[str, str, int]] = [
    (f"bench_{stem}_{agg}", f"bench. {agg} {header}", 3)
    for stem, _, header in _SUMMARIES
    for agg in _AGGREGATES
]
BENCH_CAPTION = (
    " Bench. mean / min: over the benchmarks of `bnnkit evaluate --data` (all images of each "
    "pooled), their mean and their minimum."
)


def benchmark_row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``bnnkit compare``'s cross-benchmark values of a run (None without ``--data``)."""
    summary = metrics.get("summary") or {}
    return {
        "benchmarks": list(metrics.get("benchmarks") or {}),
        **{
            f"bench_{stem}_{agg}": (summary.get(key) or {}).get(agg)
            for stem, key, _ in _SUMMARIES
            for agg in _AGGREGATES
        },
    }


_COLUMNS = [
    ("n", "n", 0, "num"),
    ("acc", "accuracy", 3, "num"),
    ("R.Acc", "real_accuracy", 3, "num"),
    ("F.Acc", "fake_accuracy", 3, "num"),
    ("AUROC", "auroc", 3, "num"),
    ("errors caught", "caught", 1, "pct"),
]


def _row(b: Mapping[str, Any]) -> dict[str, Any]:
    caught = (b.get("abstention_all") or {}).get("errors_caught_rate")
    return {**b["all"], "caught": caught, "unseen": b.get("ood_generators") or []}


def benchmark_table(m: Mapping[str, Any]) -> Table:
    """One row per benchmark, then the ``mean`` and ``min`` rows of ``summary``."""
    benches: Mapping[str, Any] = m["benchmarks"]
    s = m["summary"]
    rows: list[tuple[Label, dict[str, Any]]] = [
        (Label(name, unseen=not b.get("seen_generators")), _row(b)) for name, b in benches.items()
    ]
    caught = [r[1]["caught"] for r in rows if isinstance(r[1]["caught"], float)]
    agg = {k: s[k] for k in ("accuracy", "auroc", "real_accuracy", "fake_accuracy") if k in s}
    rows.append((Label("mean", strong=True), {
        **{k: v["mean"] for k, v in agg.items()},
        "caught": sum(caught) / len(caught) if caught else None,
    }))  # fmt: skip
    rows.append((Label("min", strong=True), {
        **{k: v["min"] for k, v in agg.items()},
        "caught": min(caught) if caught else None,
    }))  # fmt: skip
    columns = [Column("benchmark", lambda r: r[0], left=True)]
    columns += [
        Column(h, lambda r, k=key: r[1].get(k), digits, kind, short=h.split()[-1])
        for h, key, digits, kind in _COLUMNS
    ]
    worst = s.get("accuracy", {}).get("min_benchmark")
    return Table(
        columns,
        rows,
        title=f"{m['run']}: {len(benches)} benchmarks, {m['method']}, K={m['samples']}",
        caption="All images of each benchmark pooled; * every generator unseen in training. "
        "R.Acc / F.Acc: accuracy on reals / fakes. Errors caught: the share of the benchmark's "
        f"errors abstention (score {m['abstention']['score']}, threshold from the run's "
        f"calibration split) catches. min: the lowest over the benchmarks (accuracy: {worst}).",
        sections=(len(benches),),
    )


def benchmark_section(m: Mapping[str, Any]) -> list[str]:
    """report.md's ``Benchmarks`` section: the cross-benchmark table, then per benchmark its
    root, layout, seen / unseen generators and per-generator detection table."""
    from bnnkit.report.tables_generators import detection_table

    lines = [
        "",
        "## Benchmarks",
        "",
        "Evaluated with `--data`: every generator of each benchmark root on its validation "
        "split; those the run trained on count as seen. The tables below this section pool "
        "every benchmark's images, generators named `benchmark/generator`. Thresholds and "
        "fitted scores come from the run's calibration split, never from a benchmark.",
        "",
        render_markdown(benchmark_table(m)),
    ]
    for name, b in m["benchmarks"].items():
        view = {**m, **b, "run": m["run"]}
        lines += [
            "",
            f"### Benchmark {name}",
            "",
            f"`{b['root']}` ({b['layout']} layout), {b['n_images']} images; seen: "
            f"{', '.join(b['seen_generators']) or 'none'}; unseen: "
            f"{', '.join(b['ood_generators']) or 'none'}.",
            "",
            render_markdown(detection_table(view)),
        ]
    return lines
