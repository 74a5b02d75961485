"""Portable model folders: a finished run as a self-contained folder in the Hugging Face
model-repository shape (``bnnkit export RUN DIR``), which is itself a valid run directory.

The folder holds::

    model.safetensors   the run's model file, byte for byte (whatever the checkpoint stores: the
                        whole detector, or only what trains plus a reference in checkpoint.json)
    state.safetensors   the method's extra tensors only (no optimiser or RNG state)
    checkpoint.json     the run's checkpoint record, pointing at the two files above, without the
                        training-only parts (history, broken files, the local feature cache)
    recipe.toml         the resolved recipe, as the run stores it
    config.json         the same as JSON, with the bnnkit version, the plugins, normalisation,
                        feature dim and method facts (:data:`CONFIG_FILE`)
    threshold.json      the calibrated abstention threshold (when the run was evaluated)
    temperature.json    the post-hoc temperature (when the run was calibrated)
    scores/<name>.*     the score fits threshold.json names (its abstention score needs them)
    metrics.json        the run's evaluation (when evaluated): the model card quotes it
    README.md           the model card (:mod:`bnnkit.run.model_card`)

Because the model file is copied unchanged, its sha256 is the run's, so ``threshold.json`` and
``temperature.json`` (which record it) stay valid. Left out as training-only: optimiser and RNG
state, ``history.csv``, ``env.json`` (its plugin versions are in config.json), TensorBoard
events, the previous checkpoint, an ensemble's member runs (the ensemble's own checkpoint holds
every member), predictions, plots and the report. ``bnnkit predict``, ``evaluate`` and
``bnnkit.Run.load`` read the folder like any run; ``evaluate`` writes its outputs into it.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnkit._version import __version__
from bnnkit.errors import CheckpointWarning, UsageError
from bnnkit.run.dirs import resolve_run
from bnnkit.run.fileio import atomic_write_text, file_sha256
from bnnkit.run.layout import (
    CHECKPOINT_FILE,
    ENV_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    TEMPERATURE_FILE,
    THRESHOLD_FILE,
)

__all__ = [
    "CONFIG_FILE",
    "EXPORT_FORMAT",
    "MODEL_CARD_FILE",
    "MODEL_FILE",
    "STATE_FILE",
    "ExportResult",
    "export_run",
    "is_export",
]

#: the Hugging Face names of the exported files
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
CONFIG_FILE = "config.json"
MODEL_CARD_FILE = "README.md"
#: the version of the exported folder's layout (config.json's ``export_format``)
EXPORT_FORMAT = 1
SCORES_DIR = "scores"  # bnnkit.scores.store.SCORES_DIR (that module imports the plugin machinery)
#: checkpoint.json keys that only training reads (or that name paths of the training machine)
TRAINING_ONLY_META = ("history", "broken", "feature_cache", "member_train_seconds")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote: the folder, its files (relative) and what was left out."""

    path: Path
    files: list[str]
    evaluated: bool
    notes: list[str]


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``bnnkit export`` (config.json and a checkpoint)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / CHECKPOINT_FILE).is_file()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _method_state(root: Path, meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """Write the method's tensors of the checkpoint's state file to ``out`` (under their names
    there); their skeleton (the state without optimiser and RNG state)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from bnnkit.run.checkpoint import _tensor_refs

    skeleton = {"method": (meta.get("state") or {}).get("method", {})}
    with safe_open(str(root / meta["files"]["state"]), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in sorted(_tensor_refs(skeleton))}
    save_file(tensors, str(out), metadata={"format": "pt"})
    return skeleton


def _score_fits(run: Path, threshold: dict[str, Any] | None) -> list[Path]:
    """The fit files under ``run/scores/`` of the abstention score and the scores it reads
    (``threshold.json``'s ``score_options`` names them all), made for the fingerprints it names.
    Other fits (e.g. a kNN score's copy of training features) stay behind."""
    threshold = threshold or {}
    wanted = set((threshold.get("score_fit") or {}).values())
    names = {threshold.get("score"), *(threshold.get("score_options") or {})}
    found = []
    for name in sorted(n for n in names if isinstance(n, str)):
        info, tensors = run / SCORES_DIR / f"{name}.json", run / SCORES_DIR / f"{name}.safetensors"
        if tensors.is_file() and (_read_json(info) or {}).get("fingerprint") in wanted:
            found += [info, tensors]
    return found


def _config(
    recipe: dict[str, Any], meta: dict[str, Any], env: dict[str, Any] | None, source: str
) -> dict[str, Any]:
    plugins = dict((env or {}).get("plugins") or {})
    frontend = (recipe.get("model") or {}).get("frontend")
    if isinstance(frontend, dict) and "frontend" not in plugins:
        plugins["frontend"] = {"name": frontend.get("name")}
    return {
        "library_name": "bnnkit",
        "export_format": EXPORT_FORMAT,
        "bnnkit_version": __version__,
        "trained_with": {"bnnkit": meta.get("bnnkit") or (env or {}).get("bnnkit")},
        "source_run": source,
        "recipe": recipe,
        "plugins": plugins,
        "method": meta.get("method") or (recipe.get("inference") or {}).get("name"),
        "method_meta": meta.get("method_meta", {}),
        "normalisation": meta.get("normalisation"),
        "feature_dim": meta.get("feature_dim"),
        "num_train": meta.get("num_train"),
        # lora/partial runs: the model file holds what trains; the frozen base is rebuilt
        "base": meta.get("base"),
        "files": {"model": MODEL_FILE, "state": STATE_FILE, "recipe": RECIPE_FILE},
    }


def export_run(run: str | Path, dest: str | Path, *, force: bool = False) -> ExportResult:
    """Write the finished ``run`` as a portable folder ``dest`` (see the module docstring).
    ``dest`` must not exist or be empty; ``force`` replaces an earlier export there. The folder is
    written beside ``dest`` and renamed into place, so a failure leaves nothing half-written."""
    from bnnkit.run.checkpoint import find_checkpoint
    from bnnkit.run.model_card import base_source, model_card

    run = resolve_run(run)
    dest = Path(dest)
    if dest.resolve() == run.resolve():
        raise UsageError(f"cannot export {run} into itself")
    occupied = dest.exists() and not (dest.is_dir() and not any(dest.iterdir()))
    if occupied and not (force and is_export(dest)):
        raise UsageError(
            f"'{dest}' exists and is not empty"
            + (" (and is not an exported folder: --force replaces only those)" if force else ""),
            hint="choose another DIR" + ("" if force else ", or replace an export with --force"),
        )
    found = find_checkpoint(run, warn=False)
    if not found.meta.get("complete"):
        raise UsageError(
            f"{run} has not finished training; only a finished run can be exported",
            hint=f"finish it with: bnnkit train --resume {run}",
        )
    notes: list[str] = []
    if found.fallback:
        warnings.warn(f"{run}: exporting the previous checkpoint ({found.fallback})",
                      CheckpointWarning, stacklevel=2)  # fmt: skip
    recipe_text = (run / RECIPE_FILE).read_text(encoding="utf-8")
    sha = file_sha256(found.root / found.files["model"])
    metrics, env = _read_json(run / METRICS_FILE), _read_json(run / ENV_FILE)
    fitted = {}  # threshold.json / temperature.json when made for these weights
    for name in (THRESHOLD_FILE, TEMPERATURE_FILE):
        record = _read_json(run / name)
        if record is not None and record.get("model_sha256") != sha:
            notes.append(f"{name} was made for other weights than the run's; left out")
        elif record is not None:
            fitted[name] = record
    threshold, temperature = fitted.get(THRESHOLD_FILE), fitted.get(TEMPERATURE_FILE)
    if metrics is not None and threshold is None:  # written together by one evaluate
        notes.append(f"{METRICS_FILE} cannot be tied to these weights (its {THRESHOLD_FILE} is "
                     "missing or for other weights); left out")  # fmt: skip
        metrics = None

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shutil.copyfile(found.root / found.files["model"], tmp / MODEL_FILE)
        meta = {k: v for k, v in found.meta.items() if k not in TRAINING_ONLY_META}
        meta["state"] = _method_state(found.root, found.meta, tmp / STATE_FILE)
        meta["files"] = {"model": MODEL_FILE, "state": STATE_FILE}
        meta["exported"] = {"from": run.name, "bnnkit": __version__}
        atomic_write_text(tmp / CHECKPOINT_FILE, json.dumps(meta, indent=2, sort_keys=True))
        atomic_write_text(tmp / RECIPE_FILE, recipe_text)
        for name in [*fitted, *([METRICS_FILE] if metrics is not None else [])]:
            shutil.copyfile(run / name, tmp / name)
        fits = _score_fits(run, threshold)
        for f in fits:
            (tmp / SCORES_DIR).mkdir(exist_ok=True)
            shutil.copyfile(f, tmp / SCORES_DIR / f.name)
        if threshold and threshold.get("score_fit") and not fits:
            notes.append("threshold.json names score fits that the run no longer has; predict "
                         "will ask for `bnnkit evaluate DIR` first")  # fmt: skip
        config = _config(tomllib.loads(recipe_text), found.meta, env, run.name)
        config["model_sha256"] = sha
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
        card = model_card(config, metrics, threshold, temperature)
        atomic_write_text(tmp / MODEL_CARD_FILE, card)
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    base = found.meta.get("base")
    if isinstance(base, dict):  # lora/partial: the model file holds only what trains
        bundled = "" if not isinstance(base.get("pretrained"), str) else " (not in the folder)"
        notes.append(f"model.safetensors holds only the {base.get('mode')} weights; the base "
                     f"is rebuilt from {base_source(base)}{bundled} where it is used")  # fmt: skip
    if metrics is None:
        notes.append("the run was not evaluated: the model card has no metrics and predict "
                     "gives no 'uncertain' verdicts (run `bnnkit evaluate` first)")  # fmt: skip
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    return ExportResult(dest, files, metrics is not None, notes)
