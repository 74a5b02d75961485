"""``bnnkit protocol``: GenImage's tables as sets of ordinary runs ("cells"), one table out.

A protocol names, for each recipe, the cells to run: which generators a run trains on and which
unseen ones it is evaluated on (``evaluate --ood``):

- ``sdv4``: the paper's standard (GenImage Table 3): train on sdv4, test on all eight;
- ``cross``: train on each generator, test on each (the 8 x 8 matrix);
- ``loo``: leave one out: train on seven, test on the eighth, for each.

Each cell is a run directory under ``OUT/cells/<recipe>/<cell>/`` made by :func:`bnnkit.api.train`
and evaluated by :meth:`bnnkit.api.Run.evaluate`, so it can be opened, evaluated again or
predicted with like any run. A cell is *done* when its run is complete and its ``metrics.json``
matches the cell (same resolved recipe, same seen and unseen generators); done cells are
skipped, an interrupted one resumes from its checkpoint (``train --resume``), so stopping a
protocol and starting it again with the same ``--out`` finishes the remaining cells only. Every
cell trains with one shared feature cache (``cache_dir``), so ``train.backbone = "frozen"``
cells that share a backbone reuse the features of each generator folder.

:func:`run_cell` is the unit of work: picklable, by paths only, so a launcher can run it in
this process, in worker processes or as a SLURM job (:mod:`bnnkit.engine.protocol_launch`).
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bnnkit.data.genimage import check_generator_name
from bnnkit.errors import BnnkitError, UsageError
from bnnkit.metrics.protocol import DEFAULT_ABSTAIN_SCORE
from bnnkit.metrics.schema import abstention_score, ood_score
from bnnkit.report.protocol import PAPER_ORDER, protocol_rows
from bnnkit.run.checkpoint import is_complete
from bnnkit.run.layout import RunLayout
from bnnkit.scores.store import resolve_names

PROTOCOLS = ("sdv4", "cross", "loo")
PROTOCOL_FILE = "protocol.json"
DEFAULT_PROTOCOLS_ROOT = "protocols"
DEFAULT_OOD_SCORE = "mutual_info"
#: recipe keys a protocol sets for each cell; a --set of them would be overridden, so refused
_CELL_KEYS = ("data.train_generators", "data.holdout")


@dataclass(frozen=True)
class Cell:
    """One run of a protocol: train ``recipe`` (+ ``overrides``) on ``train``, evaluate on
    ``train`` and the unseen ``unseen``; its run lives in ``folder``."""

    block: str  # the recipe's name: one block of rows per recipe
    key: str  # the cell's name inside its block, e.g. "train-sdv4", "without-adm"
    recipe: str  # a bundled recipe's name or an absolute path
    train: tuple[str, ...]
    unseen: tuple[str, ...]
    overrides: tuple[str, ...]  # the user's --set items, then the protocol's two
    folder: str
    cache_dir: str
    abstain_on: str = DEFAULT_ABSTAIN_SCORE
    device: str = "auto"
    plots: bool = False
    #: the scores each cell's evaluation reports (empty: evaluate's default set)
    scores: tuple[str, ...] = ()


def _cells_of(protocol: str, generators: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(key, train generators, unseen generators) of each cell of one block."""
    if protocol == "sdv4":
        if "sdv4" not in generators:
            raise UsageError("protocol sdv4 trains on sdv4: keep it in --generators")
        return [("train-sdv4", ["sdv4"], [g for g in generators if g != "sdv4"])]
    if len(generators) < 2:
        raise UsageError(f"protocol {protocol} needs at least two generators")
    if protocol == "cross":
        return [(f"train-{g}", [g], [h for h in generators if h != g]) for g in generators]
    if protocol == "loo":
        return [(f"without-{g}", [h for h in generators if h != g], [g]) for g in generators]
    raise UsageError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def select_generators(names: Sequence[str] | None) -> list[str]:
    """``--generators`` (default all eight) checked and put in the paper's column order."""
    if not names:
        return list(PAPER_ORDER)
    chosen = {check_generator_name(n.strip()) for n in names if n.strip()}
    return [g for g in PAPER_ORDER if g in chosen]


def new_protocol_dir(protocol: str, root: str | Path = DEFAULT_PROTOCOLS_ROOT) -> Path:
    """A fresh ``protocols/<protocol>-<timestamp>/`` (created atomically, like a run's)."""
    from bnnkit.run.dirs import create_run_dir

    return create_run_dir(root, protocol)


def _recipe_ref(recipe: str) -> str:
    """A recipe file as an absolute path (a job may start elsewhere); a bundled name as is."""
    path = Path(recipe)
    return str(path.resolve()) if path.is_file() else recipe


def plan_cells(
    protocol: str,
    recipes: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    *,
    generators: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    abstain_on: str = DEFAULT_ABSTAIN_SCORE,
    device: str = "auto",
    plots: bool = False,
    scores: Sequence[str] = (),
) -> list[Cell]:
    """Every cell of ``protocol`` for each recipe (validated with the overrides now, so a typo
    fails before anything runs)."""
    from bnnkit.recipe import load_recipe

    if not recipes:
        raise UsageError("give at least one --recipe", hint="e.g. --recipe quickstart")
    abstain_on, *chosen = resolve_names([abstain_on, *scores])
    for item in overrides:
        if item.partition("=")[0].strip() in _CELL_KEYS:
            raise UsageError(
                f"--set {item}: the protocol sets {' and '.join(_CELL_KEYS)} for every cell",
                hint="choose the generators with --generators",
            )
    gens = select_generators(generators)
    out = Path(out).resolve()
    cache = Path(cache_dir).resolve() if cache_dir is not None else out / "cache"
    cells: list[Cell] = []
    blocks: set[str] = set()
    for recipe in recipes:
        ref, name = _recipe_ref(recipe), ""
        for key, train, unseen in _cells_of(protocol, gens):
            sets = [*overrides, _set("data.train_generators", train), _set("data.holdout", unseen)]
            name = load_recipe(ref, sets).name  # validates every cell's recipe
            folder = str(out / "cells" / name / key)
            cell = Cell(name, key, ref, tuple(train), tuple(unseen), tuple(sets), folder,
                        str(cache), abstain_on, device, plots, tuple(chosen))  # fmt: skip
            cells.append(cell)
        if name in blocks:
            raise UsageError(f"--recipe {recipe}: a recipe named {name!r} is given twice")
        blocks.add(name)
    return cells


def _set(key: str, generators: list[str]) -> str:
    return f"{key}={json.dumps(generators)}"


# -- one cell -------------------------------------------------------------------------------------
def _resolved(cell: Cell) -> dict[str, Any]:
    from bnnkit.recipe import dump_recipe, load_recipe

    return tomllib.loads(dump_recipe(load_recipe(cell.recipe, list(cell.overrides))))


def _cell_run(cell: Cell) -> Path | None:
    """The newest run in the cell's folder trained with the cell's resolved recipe."""
    folder = Path(cell.folder)
    if not folder.is_dir():
        return None
    wanted = _resolved(cell)
    runs = sorted((p for p in folder.iterdir() if RunLayout(p).recipe.is_file()), reverse=True)
    for run in runs:
        if tomllib.loads(RunLayout(run).recipe.read_text(encoding="utf-8")) == wanted:
            return run
    return None


def _metrics_match(cell: Cell, run: Path) -> bool:
    f = RunLayout(run).metrics
    if not f.is_file():
        return False
    m = json.loads(f.read_text(encoding="utf-8"))
    wanted = {cell.abstain_on, *cell.scores}
    return (
        m.get("seen_generators") == list(cell.train)
        and sorted(m.get("ood_generators") or []) == sorted(cell.unseen)
        and wanted <= set((m.get("abstention") or {}).get("by_score") or {})
    )


def cell_done(cell: Cell) -> bool:
    run = _cell_run(cell)
    return run is not None and is_complete(run) and _metrics_match(cell, run)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Bring one cell to done: train (or resume) its run, evaluate it; skip what is done.
    Returns ``{"run", "metrics", "status", "seconds"}``. Picklable: a job needs only ``cell``."""
    from bnnkit.api import Run, train

    t0 = time.perf_counter()
    run_dir, status = _cell_run(cell), "skipped"
    if run_dir is not None and not RunLayout(run_dir).checkpoint.is_file():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume
        run_dir = None
    opts = {"cache_dir": cell.cache_dir, "device": cell.device}
    if run_dir is None:
        run = train(cell.recipe, cell.overrides, runs_dir=cell.folder, **opts)
        run_dir, status = run.path, "trained"
    elif not is_complete(run_dir):
        run_dir, status = train(resume=run_dir, **opts).path, "resumed"
    if status != "skipped" or not _metrics_match(cell, run_dir):
        # a frozen run's evaluation reads the feature cache its training filled (the shared one)
        Run(run_dir).evaluate(
            ood=list(cell.unseen), device=cell.device, abstain_on=cell.abstain_on,
            plots=cell.plots, scores=list(cell.scores) or None,
        )  # fmt: skip
        status = "evaluated" if status == "skipped" else status
    layout = RunLayout(run_dir)
    return {
        "run": str(run_dir),
        "metrics": str(layout.metrics),
        "status": status,
        "seconds": time.perf_counter() - t0,
    }


# -- the protocol -------------------------------------------------------------------------------
@dataclass
class ProtocolResult:
    """What :func:`run_protocol` wrote: the folder, the record (``protocol.json``) and rows."""

    out: Path
    record: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


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
) -> ProtocolResult:
    """Run (or finish) every cell of ``protocol`` and write ``protocol.json``, ``table.md``,
    ``table.tex``, ``table.csv`` and ``heatmap.png`` into ``out``. ``on_cell(cell, info)`` is
    called as each cell finishes (``info["status"]``: trained, resumed, evaluated, skipped).
    An ``out`` made with other settings is refused (:class:`~bnnkit.errors.UsageError`, naming
    the keys that differ) unless ``force``."""
    from bnnkit.engine.protocol_launch import launch
    from bnnkit.engine.protocol_settings import check_same_settings
    from bnnkit.report.protocol import write_protocol_tables

    (score,) = resolve_names([score])
    if scores:  # the tabled score is always evaluated
        scores = list(dict.fromkeys([*resolve_names(scores), score]))
    out = Path(out)
    cells = plan_cells(
        protocol, recipes, overrides, out, generators=generators, cache_dir=cache_dir,
        abstain_on=abstain_on, device=device, plots=plots, scores=scores or (),
    )  # fmt: skip
    abstain_on = cells[0].abstain_on
    gens = select_generators(generators)
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
        "cells": [{**_cell_entry(c), "status": "pending"} for c in cells],
    }
    if not force:
        check_same_settings(out, record, cells, _resolved, protocol_file=PROTOCOL_FILE)
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
            run = _cell_run(c)
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
    _write_record(out, record)
    return ProtocolResult(out, record, rows, files)


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
