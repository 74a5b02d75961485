"""``bnnkit compare``: one table across evaluated runs, one row per run."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click

from bnnkit.cli._common import console, fmt, format_option, print_json, print_table

# metrics.json versions whose keys this reads: seen.{accuracy,nll,ece}, ood.<generator>.accuracy,
# the mutual information's OOD AUROC (ood.<generator>.epistemic.auroc in 1 and 2,
# ood.<generator>.scores.mutual_info.auroc in 3), the abstention score and its catch rate
# (abstention.by_score.<score>.unseen_combined.errors_caught_rate, 2 and 3), method, samples
SCHEMA_VERSIONS = (1, 2, 3)


def _read_json(path: Path) -> dict[str, Any]:
    from bnnkit.errors import UsageError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def run_row(run_dir: Path) -> dict[str, Any]:
    """One row of the comparison from a run's metrics.json, timing.json, recipe.toml and
    checkpoint.json (read as plain files: comparing needs no plugin to be installed)."""
    from bnnkit.errors import UsageError
    from bnnkit.metrics.schema import abstention_score, canonical_score, ood_score
    from bnnkit.report.benchmarks import benchmark_row
    from bnnkit.report.compare import protocol_cell
    from bnnkit.run import RunLayout

    layout = RunLayout(run_dir)
    metrics = _read_json(layout.metrics)
    if metrics.get("schema_version") not in SCHEMA_VERSIONS:
        raise UsageError(
            f"{layout.metrics}: unsupported schema_version {metrics.get('schema_version')!r}",
            hint=f"re-evaluate it: bnnkit evaluate {run_dir}",
        )
    timing = _read_json(layout.timing)
    checkpoint = _read_json(layout.checkpoint)
    try:
        recipe = tomllib.loads(layout.recipe.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        recipe = {}
    ood = metrics.get("ood") or {}
    unseen = {
        name: {
            "accuracy": o.get("accuracy"),
            "epistemic_auroc": ood_score(o, "mutual_info").get("auroc"),
        }
        for name, o in ood.items()
    }
    seen = metrics.get("seen") or {}
    per_generator = metrics.get("per_generator") or {}
    per_image = timing.get("predict_seconds_per_image")
    abstention = metrics.get("abstention") or {}
    score = abstention.get("score")
    caught = abstention_score(abstention).get("unseen_combined") or {}
    score_aurocs = [ood_score(o, score).get("auroc") for o in ood.values()] if score else []
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "cell": protocol_cell(run_dir),
        "method": metrics.get("method") or checkpoint.get("method"),
        "backbone": ((recipe.get("model") or {}).get("backbone") or {}).get("name"),
        "samples": metrics.get("samples"),
        "id_accuracy": seen.get("accuracy"),
        "id_real_accuracy": seen.get("real_accuracy"),
        "id_fake_accuracy": seen.get("fake_accuracy"),
        "nll": seen.get("nll"),
        "ece": seen.get("ece"),
        "unseen_accuracy": _mean([u["accuracy"] for u in unseen.values()]),
        "unseen_fake_accuracy": _mean(
            [(per_generator.get(g) or {}).get("fake_accuracy") for g in unseen]
        ),
        "epistemic_auroc": _mean([u["epistemic_auroc"] for u in unseen.values()]),
        "abstain_score": canonical_score(score) if score else None,
        "abstain_auroc": _mean(score_aurocs),
        "caught_rate": caught.get("errors_caught_rate"),
        "caught": [caught.get("errors_caught"), caught.get("errors")] if caught else None,
        "train_seconds": checkpoint.get("train_seconds"),
        "predict_ms_per_image": None if per_image is None else 1000.0 * per_image,
        "predict_timed": _timed(timing, recipe, checkpoint),
        "seen_generators": metrics.get("seen_generators", []),
        "unseen_generators": unseen,
        **benchmark_row(metrics),  # with --data: the cross-benchmark mean and minimum
    }


def _timed(timing: dict[str, Any], recipe: dict[str, Any], checkpoint: dict[str, Any]) -> str:
    """What ``predict_seconds_per_image`` timed: a frozen run whose training recorded a
    feature cache is evaluated from it (the head's samples only), unless timing.json says."""
    from bnnkit.report.compare import TIMED_BACKBONE, TIMED_CACHED

    if "predict_timed" in timing:
        return str(timing["predict_timed"])
    frozen = (recipe.get("train") or {}).get("backbone") == "frozen"
    return TIMED_CACHED if frozen and checkpoint.get("feature_cache") else TIMED_BACKBONE


def collect(runs: list[Path]) -> list[dict[str, Any]]:
    """Rows for the given run directories (duplicates dropped); every run must be evaluated."""
    from bnnkit.errors import UsageError
    from bnnkit.run import METRICS_FILE, TIMING_FILE, resolve_run

    dirs = list(dict.fromkeys(resolve_run(r) for r in runs))
    needed = (METRICS_FILE, TIMING_FILE)
    missing = [d for d in dirs if not all((d / f).is_file() for f in needed)]
    if missing:
        names = ", ".join(str(d) for d in missing)
        noun = "run has" if len(missing) == 1 else "runs have"
        raise UsageError(
            f"{len(missing)} {noun} not been evaluated "
            f"(no {METRICS_FILE} / {TIMING_FILE}): {names}",
            hint="; ".join(f"bnnkit evaluate {d}" for d in missing),
        )
    return [run_row(d) for d in dirs]


def markdown(rows: list[dict[str, Any]]) -> str:
    from bnnkit.report.compare import compare_table
    from bnnkit.report.tables import render_markdown

    return render_markdown(compare_table(rows))


def show_table(rows: list[dict[str, Any]]) -> None:
    from bnnkit.report.compare import compare_table
    from bnnkit.report.tables import render_rich

    sets = {", ".join(sorted(r["unseen_generators"])) or "none" for r in rows}
    title = f"{len(rows)} run(s)"
    drop = []
    if len(sets) == 1:  # every row held out the same generators: said once
        title += f"; unseen: {sets.pop()}"
        drop.append("unseen")
    # a value every run shares goes to the title, so the table fits a terminal
    for key, label in (("backbone", "backbone"), ("samples", "K"), ("abstain_score", "abstain on")):
        values = {r[key] for r in rows}
        if (len(rows) > 1 or key == "abstain_score") and len(values) == 1:
            title += f"; {label} {fmt(values.pop())}"
            drop.append(key)
    print_table(console(), render_rich(compare_table(rows, title, drop)))


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option(
    ["table", "markdown", "json"],
    "table (rich), markdown (a pipe table for a report or an issue), json (the raw rows).",
)
def command(runs: tuple[Path, ...], out_format: str) -> None:
    """Compare evaluated RUNs side by side, one row per run.

    Columns: method, backbone, posterior samples K, the run's unseen generators (in the title
    when every run shares them), ID accuracy, R.Acc / F.Acc (on reals / fakes), NLL and ECE
    (generators seen in training), accuracy and F.Acc on the unseen generator(s), epistemic
    OOD AUROC (unseen fakes vs seen-generator images), the score the run abstains on and the
    fraction of the unseen generators' errors its threshold catches, train time and predict
    time per image (marked ‡ where it timed the head only, from a frozen backbone's feature
    cache). A protocol cell's run is named
    <recipe>/<cell>. Values come from each run's metrics.json (schema 1 to 3) and timing.json
    (written by `bnnkit evaluate`) and checkpoint.json.

    \b
    Examples:
      bnnkit compare runs/resnet50_map-* runs/resnet50_bbb-* runs/resnet50_kflaplace-*
      bnnkit compare runs/* --format markdown >> report.md
    """
    rows = collect(list(runs))
    if out_format == "json":
        print_json(rows)
    elif out_format == "markdown":
        click.echo(markdown(rows))
    else:
        show_table(rows)
