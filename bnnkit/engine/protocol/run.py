"""``bnnkit protocol``'s driver: plan the cells (:mod:`bnnkit.engine.protocol.cells`), launch
the pending ones (:mod:`bnnkit.engine.protocol.launch`), then write ``protocol.json`` and the
tables (:mod:`bnnkit.report.protocol`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.engine.protocol.cells import (
    DEFAULT_OOD_SCORE,
    PROTOCOL_FILE,
    Cell,
    cell_done,
    cell_run_dir,
    plan_cells,
    protocol_generators,
    resolved_cell,
)
from bnnkit.errors import BnnkitError
from bnnkit.metrics.protocol import DEFAULT_ABSTAIN_SCORE
from bnnkit.metrics.schema import abstention_score, ood_score
from bnnkit.report.protocol import protocol_rows
from bnnkit.run.layout import RunLayout
from bnnkit.scores.store import resolve_names


@dataclass
class ProtocolResult:
    """What :func:`run_protocol` wrote: the folder, the record (``protocol.json``) and rows."""

    out: Path
    record: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    #: with ``debias``: the rows of the same cells evaluated under the controls (no published
    #: rows: the papers' numbers are on the raw data)
    controlled: list[dict[str, Any]] = field(default_factory=list)


def _write_record(out: Path, record: dict[str, Any]) -> None:
    from bnnkit.metrics.protocol import clean_json
    from bnnkit.run.fileio import atomic_write_text

    atomic_write_text(out / PROTOCOL_FILE, json.dumps(clean_json(record), indent=2))


def run_protocol(
    protocol: str,
    recipes: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    out: Path,
    generators: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    score: str = DEFAULT_OOD_SCORE,
    abstain_on: str = DEFAULT_ABSTAIN_SCORE,
    device: str = "auto",
    plots: bool = False,
    launcher: str = "local",
    jobs: int = 1,
    slurm: dict[str, Any] | None = None,
    scores: Sequence[str] | None = None,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    force: bool = False,
    debias: Sequence[str] = (),
) -> ProtocolResult:
    """Run (or finish) every cell of ``protocol`` and write ``protocol.json``, ``table.md``,
    ``table.tex``, ``table.csv`` and ``heatmap.png`` into ``out``. ``on_cell(cell, info)`` is
    called as each cell finishes (``info["status"]``: trained, resumed, evaluated, skipped).
    An ``out`` made with other settings is refused (:class:`~bnnkit.errors.UsageError`, naming
    the keys that differ) unless ``force``. ``debias``: each cell is also evaluated under these
    ``data.debias`` controls (``metrics.json`` then holds the raw-data evaluation); their table
    goes to ``out/debias-<controls>/`` and ``protocol.json``'s ``controlled``."""
    from bnnkit.engine.protocol.launch import launch
    from bnnkit.engine.protocol.settings import check_same_settings
    from bnnkit.report.protocol import write_protocol_tables

    (score,) = resolve_names([score])
    if scores:  # the tabled score is always evaluated
        scores = list(dict.fromkeys([*resolve_names(scores), score]))
    out = Path(out)
    cells = plan_cells(
        protocol, recipes, overrides, out, generators=generators, cache_dir=cache_dir,
        abstain_on=abstain_on, device=device, plots=plots, scores=scores or (), debias=debias,
    )  # fmt: skip
    abstain_on = cells[0].abstain_on
    gens = protocol_generators(generators, recipes, overrides)
    record: dict[str, Any] = {
        "protocol": protocol,
        "generators": gens,
        "recipes": list(recipes),
        "overrides": list(overrides),
        "score": score,
        "abstain_on": abstain_on,
        "scores": list(cells[0].scores) or "default",
        "cache_dir": cells[0].cache_dir,
        "launcher": launcher,
        **({"debias": list(cells[0].debias)} if cells[0].debias else {}),
        "cells": [{**_cell_entry(c), "status": "pending"} for c in cells],
    }
    if not force:
        check_same_settings(out, record, cells, resolved_cell, protocol_file=PROTOCOL_FILE)
    out.mkdir(parents=True, exist_ok=True)
    index = {(c.block, c.key): i for i, c in enumerate(cells)}
    t0 = time.perf_counter()

    def done(cell: Cell, info: dict[str, Any]) -> None:
        entry = record["cells"][index[(cell.block, cell.key)]]
        entry.update(info)
        _write_record(out, record)
        if on_cell is not None:
            on_cell(cell, info)

    _write_record(out, record)
    pending = [c for c in cells if not cell_done(c)]
    for c in cells:
        if c not in pending:
            run = cell_run_dir(c)
            done(c, {"run": str(run), "metrics": str(RunLayout(run).metrics), "status": "skipped"})
    try:
        launch(pending, done, launcher=launcher, jobs=jobs, folder=out / "jobs", slurm=slurm or {})
    except BnnkitError as exc:  # e.g. Ctrl-C: the cell's checkpoint is saved
        exc.hint = f"finish the protocol (done cells are kept): rerun it with --out {out}"
        raise
    metrics = [json.loads(Path(e["metrics"]).read_text(encoding="utf-8")) for e in record["cells"]]
    rows = protocol_rows(protocol, cells, metrics, gens, score=score, abstain_on=abstain_on)
    for entry, m in zip(record["cells"], metrics, strict=True):
        entry["summary"] = _summary(m, score, abstain_on)
    record["table"] = rows
    record["seconds"] = time.perf_counter() - t0
    files = write_protocol_tables(out, protocol, rows, gens, score=score, abstain_on=abstain_on)
    record["files"] = {k: p.name for k, p in files.items()}
    controlled = _controlled(out, protocol, cells, record, gens, score, abstain_on)
    _write_record(out, record)
    return ProtocolResult(out, record, rows, files, controlled)


def _controlled(out: Path, protocol: str, cells: list[Cell], record: dict[str, Any], gens,
                score: str, abstain_on: str) -> list[dict[str, Any]]:  # fmt: skip
    """The table of the cells' evaluations under ``data.debias`` (none without): rows, in
    ``record["controlled"]`` and written under ``out/debias-<controls>/``."""
    from bnnkit.engine.protocol.cells import controlled_metrics
    from bnnkit.report.protocol import write_protocol_tables

    debias = cells[0].debias
    if not debias:
        return []
    paths = [controlled_metrics(Path(e["run"]), debias) for e in record["cells"]]
    metrics = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    rows = protocol_rows(protocol, cells, metrics, gens, score=score, abstain_on=abstain_on)
    rows = [r for r in rows if r.get("source") != "published"]
    folder = out / f"debias-{'+'.join(debias)}"
    folder.mkdir(parents=True, exist_ok=True)
    files = write_protocol_tables(folder, protocol, rows, gens, score=score, abstain_on=abstain_on)
    record["controlled"] = {
        "debias": list(debias),
        "metrics": [str(p) for p in paths],
        "table": rows,
        "files": {k: str(p.relative_to(out)) for k, p in files.items()},
    }
    return rows


def _cell_entry(cell: Cell) -> dict[str, Any]:
    d = asdict(cell)
    return {k: d[k] for k in ("block", "key", "recipe", "train", "unseen", "overrides", "folder")}


def _summary(m: dict[str, Any], score: str, abstain_on: str) -> dict[str, Any]:
    """The numbers of one cell the table is made of, per generator (see metrics-schema.md)."""
    by_score = abstention_score(m["abstention"], abstain_on)  # metrics.json v3 or v2
    return {
        "accuracy": {g: e["accuracy"] for g, e in m["per_generator"].items()},
        "average_accuracy": m["average_accuracy"],
        "ood_auroc": {g: ood_score(e, score).get("auroc") for g, e in m["ood"].items()},
        "ood_auroc_combined": ood_score(m.get("ood_combined"), score).get("auroc"),
        "errors_caught": {g: e["errors_caught_rate"] for g, e in by_score["unseen"].items()},
        "errors_caught_combined": (by_score.get("unseen_combined") or {}).get("errors_caught_rate"),
        "threshold": by_score["threshold"],
    }
