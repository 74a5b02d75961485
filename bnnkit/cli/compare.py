"""``bnnkit compare``: one table across evaluated runs, one row per run."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click

from bnnkit.cli._common import console, fmt, format_option, print_json

# metrics.json versions whose keys this reads: seen.{accuracy,nll,ece}, ood.<generator>.accuracy,
# ood.<generator>.epistemic.auroc, method, samples (unchanged from 1 to 2)
SCHEMA_VERSIONS = (1, 2)


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
            "epistemic_auroc": (o.get("epistemic") or {}).get("auroc"),
        }
        for name, o in ood.items()
    }
    seen = metrics.get("seen") or {}
    per_image = timing.get("predict_seconds_per_image")
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "method": metrics.get("method") or checkpoint.get("method"),
        "backbone": ((recipe.get("model") or {}).get("backbone") or {}).get("name"),
        "samples": metrics.get("samples"),
        "id_accuracy": seen.get("accuracy"),
        "nll": seen.get("nll"),
        "ece": seen.get("ece"),
        "unseen_accuracy": _mean([u["accuracy"] for u in unseen.values()]),
        "epistemic_auroc": _mean([u["epistemic_auroc"] for u in unseen.values()]),
        "train_seconds": checkpoint.get("train_seconds"),
        "predict_ms_per_image": None if per_image is None else 1000.0 * per_image,
        "seen_generators": metrics.get("seen_generators", []),
        "unseen_generators": unseen,
    }


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
    from bnnkit.report.tables import compare_table, render_markdown

    return render_markdown(compare_table(rows))


def print_table(rows: list[dict[str, Any]]) -> None:
    from bnnkit.report.tables import compare_table, render_rich

    unseen = sorted({g for r in rows for g in r["unseen_generators"]})
    title = f"{len(rows)} run(s); unseen: {', '.join(unseen) or 'none'}"
    drop = []
    # a value every run shares goes to the title, so the table fits a terminal
    for key, label in (("backbone", "backbone"), ("samples", "K")):
        values = {r[key] for r in rows}
        if len(rows) > 1 and len(values) == 1:
            title += f"; {label} {fmt(values.pop())}"
            drop.append(key)
    console().print(render_rich(compare_table(rows, title, drop)))


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option(
    ["table", "markdown", "json"],
    "table (rich), markdown (a pipe table for a report or an issue), json (the raw rows).",
)
def command(runs: tuple[Path, ...], out_format: str) -> None:
    """Compare evaluated RUNs side by side, one row per run.

    Columns: method, backbone, posterior samples K, ID accuracy, NLL and ECE (generators seen in
    training), accuracy on the unseen generator(s), epistemic OOD AUROC (unseen fakes vs
    seen-generator images), train time and predict time per image. Values come from each run's
    metrics.json and timing.json (written by `bnnkit evaluate`) and checkpoint.json.

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
        print_table(rows)
