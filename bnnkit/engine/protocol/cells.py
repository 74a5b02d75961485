"""``bnnkit protocol``: GenImage's tables as sets of ordinary runs ("cells"), one table out.

A protocol names, for each recipe, the cells to run: which generators a run trains on and which
unseen ones it is evaluated on (``evaluate --ood``):

- ``sdv4``: the paper's standard (GenImage Table 3): train on sdv4, test on all eight;
- ``cross``: train on each generator, test on each (the 8 x 8 matrix);
- ``loo``: leave one out: train on seven, test on the eighth, for each.

Each cell is a run directory under ``OUT/cells/<recipe>/<cell>/`` made by
:func:`~bnnkit.engine.train.run.train_run` and evaluated by
:func:`~bnnkit.engine.evaluate.run.evaluate_run_dir` (what :func:`bnnkit.api.train` and
:meth:`bnnkit.api.Run.evaluate` call), so it can be opened, evaluated again or
predicted with like any run. A cell is *done* when its run is complete and its ``metrics.json``
matches the cell (same resolved recipe, same seen and unseen generators); done cells are
skipped, an interrupted one resumes from its checkpoint (``train --resume``), so stopping a
protocol and starting it again with the same ``--out`` finishes the remaining cells only. Every
cell trains with one shared feature cache (``cache_dir``), so ``train.backbone = "frozen"``
cells that share a backbone reuse the features of each generator folder.

With ``debias`` (``bnnkit protocol sdv4 --debias jpeg96``) every cell is also evaluated under
those ``data.debias`` controls (:mod:`bnnkit.data.debias`): the same trained run, evaluated first
controlled (kept as ``RUN/metrics-debias-<controls>.json``, :func:`controlled_metrics`) and then
on the raw data (``RUN/metrics.json``, the main table), so the two tables differ only in the
evaluation data. To train the cells under the controls too, add ``--set data.debias=[...]``.

:func:`run_cell` is the unit of work: picklable, by paths only, so a launcher can run it in
this process, in worker processes or as a SLURM job (:mod:`bnnkit.engine.protocol.launch`).
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnkit.data.debias import normalise_debias
from bnnkit.data.genimage import check_generator_name
from bnnkit.errors import UsageError
from bnnkit.metrics.protocol import DEFAULT_ABSTAIN_SCORE
from bnnkit.report.protocol import PAPER_ORDER
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
    #: ``data.debias`` controls of the cell's second, controlled evaluation (empty: none)
    debias: tuple[str, ...] = ()


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


def protocol_generators(
    names: Sequence[str] | None, recipes: Sequence[str], overrides: Sequence[str] = ()
) -> list[str]:
    """The protocol's generators: :func:`select_generators` for GenImage data; for another
    layout (the first recipe's ``data.root``/``data.layout``), ``--generators`` as given, or
    every generator the data has."""
    from bnnkit.data.layouts import list_generators, resolve_layout
    from bnnkit.recipe import load_recipe

    if recipes:
        data = load_recipe(_recipe_ref(recipes[0]), list(overrides)).data
        try:
            kind = resolve_layout(data.root, data.layout)
        except UsageError:
            kind = "genimage"  # no data there yet: GenImage's names, checked
        if kind != "genimage":
            chosen = [n.strip() for n in names or () if n.strip()]
            return list(dict.fromkeys(chosen)) or list(list_generators(data.root, kind))
    return select_generators(names)


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
    debias: Sequence[str] = (),
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
    gens = protocol_generators(generators, recipes, overrides)
    debias = tuple(normalise_debias(debias))
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
                        str(cache), abstain_on, device, plots, tuple(chosen), debias)  # fmt: skip
            cells.append(cell)
        if name in blocks:
            raise UsageError(f"--recipe {recipe}: a recipe named {name!r} is given twice")
        blocks.add(name)
    return cells


def _set(key: str, generators: list[str]) -> str:
    return f"{key}={json.dumps(generators)}"


# -- one cell -------------------------------------------------------------------------------------
def resolved_cell(cell: Cell) -> dict[str, Any]:
    from bnnkit.recipe import dump_recipe, load_recipe

    return tomllib.loads(dump_recipe(load_recipe(cell.recipe, list(cell.overrides))))


def cell_run_dir(cell: Cell) -> Path | None:
    """The newest run in the cell's folder trained with the cell's resolved recipe."""
    folder = Path(cell.folder)
    if not folder.is_dir():
        return None
    wanted = resolved_cell(cell)
    runs = sorted((p for p in folder.iterdir() if RunLayout(p).recipe.is_file()), reverse=True)
    for run in runs:
        if tomllib.loads(RunLayout(run).recipe.read_text(encoding="utf-8")) == wanted:
            return run
    return None


def controlled_metrics(run: Path, debias: Sequence[str]) -> Path:
    """Where a cell keeps the ``metrics.json`` of its evaluation under ``debias``."""
    return Path(run) / f"metrics-debias-{'+'.join(debias)}.json"


def _metrics_match(cell: Cell, run: Path) -> bool:
    # without --debias the run is evaluated as trained (its own data.debias, not checked)
    files: list[tuple[Path, list[str] | None]] = [(RunLayout(run).metrics, None)]
    if cell.debias:
        files[0] = (RunLayout(run).metrics, [])
        files.append((controlled_metrics(run, cell.debias), list(cell.debias)))
    for f, debias in files:
        if not f.is_file():
            return False
        m = json.loads(f.read_text(encoding="utf-8"))
        wanted = {cell.abstain_on, *cell.scores}
        if not (
            m.get("seen_generators") == list(cell.train)
            and sorted(m.get("ood_generators") or []) == sorted(cell.unseen)
            and wanted <= set((m.get("abstention") or {}).get("by_score") or {})
            and (debias is None or (m.get("debias") or {}).get("controls", []) == debias)
        ):
            return False
    return True


def cell_done(cell: Cell) -> bool:
    run = cell_run_dir(cell)
    return run is not None and is_complete(run) and _metrics_match(cell, run)


def run_cell(cell: Cell) -> dict[str, Any]:
    """Bring one cell to done: train (or resume) its run, evaluate it; skip what is done.
    Returns ``{"run", "metrics", "status", "seconds"}``. Picklable: a job needs only ``cell``."""
    from bnnkit.engine.evaluate.run import evaluate_run_dir
    from bnnkit.engine.train.run import train_run

    t0 = time.perf_counter()
    run_dir, status = cell_run_dir(cell), "skipped"
    if run_dir is not None and not RunLayout(run_dir).checkpoint.is_file():
        shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to resume
        run_dir = None
    opts = {"cache_dir": cell.cache_dir, "device": cell.device}
    if run_dir is None:
        run_dir, _ = train_run(cell.recipe, cell.overrides, runs_dir=cell.folder, **opts)
        status = "trained"
    elif not is_complete(run_dir):
        run_dir, status = train_run(resume=run_dir, runs_dir=cell.folder, **opts)[0], "resumed"
    if status != "skipped" or not _metrics_match(cell, run_dir):
        # a frozen run's evaluation reads the feature cache its training filled (the shared one)
        options = {"device": cell.device, "abstain_on": cell.abstain_on, "plots": cell.plots,
                   "scores": list(cell.scores) or None}  # fmt: skip
        if cell.debias:  # controlled first, then raw: metrics.json, report.md are the raw ones
            evaluate_run_dir(run_dir, list(cell.unseen), debias=list(cell.debias), **options)
            RunLayout(run_dir).metrics.replace(controlled_metrics(run_dir, cell.debias))
            options["debias"] = ["none"]
        evaluate_run_dir(run_dir, list(cell.unseen), **options)
        status = "evaluated" if status == "skipped" else status
    layout = RunLayout(run_dir)
    return {
        "run": str(run_dir),
        "metrics": str(layout.metrics),
        "status": status,
        "seconds": time.perf_counter() - t0,
    }
