"""Build scores by name, save and load their fits in a run, compute several scores at once.

A fitted score lives in the run directory as two files::

    scores/<name>.safetensors   Score.state_dict() (tensors only; never a pickle)
    scores/<name>.json          {"format", "name", "class", "options", "fingerprint", "fit_on",
                                 "n", "meta", "state_sha256"}

``fingerprint`` is a string the caller passes (evaluate passes the model fingerprint), so a fit
made for other weights is *stale* and refitted rather than used. Both files are written
atomically, the JSON last; the JSON records the SHA-256 of the tensor file, so a write that was
interrupted between the two reads as stale, never as a mismatched fit.

The API (what evaluate and predict call)::

    DEFAULT_SCORES: tuple[str, ...]            # the scores bnnkit evaluate reports by default
    ALIASES: dict[str, str]                    # old names: 'total' -> 'entropy', ...
    resolve_names(names, registry=None) -> list[str]
    build_score(name, options=None, registry=None) -> Score
    save_fit(run_dir, name, score, fingerprint, *, n=None) -> Path
    load_fit(run_dir, name, options=None, fingerprint=None, registry=None) -> Score | None
    stale_reason(run_dir, name, options=None, fingerprint=None, registry=None) -> str | None
    require_fit(run_dir, name, options=None, fingerprint=None, registry=None) -> Score
    compute_scores(scores, inputs, registry=None) -> dict[str, Tensor]

``options=None`` means "the options the saved fit was made with" for :func:`load_fit` and
the declaration's defaults for :func:`build_score`; given options must equal the saved ones
(after defaults are filled in) or the fit is stale. A score without a fit (``fit_on = None``)
needs no file: :func:`load_fit` returns it built.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnnkit.errors import PluginError
from bnnkit.run.fileio import atomic_write_bytes, atomic_write_json
from bnnkit.scores.base import Score, ScoreInputs, ScoreNotFitted, StaleFit

__all__ = [
    "ALIASES",
    "DEFAULT_SCORES",
    "SCORES_DIR",
    "build_score",
    "compute_scores",
    "fit_paths",
    "load_fit",
    "require_fit",
    "resolve_names",
    "save_fit",
    "stale_reason",
]

#: the folder of a run that holds the fitted scores
SCORES_DIR = "scores"
FORMAT = 1
#: names of the uncertainty scores before they were plugins (old runs, old flags)
ALIASES: dict[str, str] = {"total": "entropy", "epistemic": "mutual_info"}
#: what ``bnnkit evaluate`` reports without ``--score``: the three posterior scores, a logit
#: score, three feature-space scores (cheap on a CPU; ``rel_mahalanobis`` is the default
#: abstention score) and their fusion
DEFAULT_SCORES: tuple[str, ...] = (
    "max_prob",
    "entropy",
    "mutual_info",
    "energy",
    "mahalanobis",
    "rel_mahalanobis",
    "knn",
    "fused",
)


def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    from bnnkit.plugins import get_registry

    return get_registry()


def resolve_names(names: Iterable[str], registry: Any = None) -> list[str]:
    """Registered score names, aliases replaced, duplicates dropped (first kept); an unknown
    name is a :class:`~bnnkit.errors.PluginError` with a did-you-mean suggestion."""
    reg = _registry(registry)
    out: list[str] = []
    for raw in names:
        name = ALIASES.get(raw, raw)
        reg.get("score", name)  # raises PluginError: unknown score 'x'; did you mean ...
        if name not in out:
            out.append(name)
    return out


def build_score(name: str, options: Mapping[str, Any] | None = None, registry: Any = None) -> Score:
    """A new, unfitted instance of score ``name`` (aliases accepted) with ``options``."""
    entry = _registry(registry).get("score", ALIASES.get(name, name))
    return entry.obj(**dict(options or {}))


def fit_paths(run_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(scores/<name>.safetensors, scores/<name>.json)`` of a run."""
    folder = Path(run_dir) / SCORES_DIR
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def _class_path(score: Score | type[Score]) -> str:
    cls = score if isinstance(score, type) else type(score)
    return f"{cls.__module__}.{cls.__qualname__}"


def save_fit(
    run_dir: str | Path, name: str, score: Score, fingerprint: str, *, n: int | None = None
) -> Path:
    """Write a fitted ``score``'s state and meta under ``run_dir/scores/``; returns the JSON's
    path. ``n`` (images it was fitted on) defaults to ``score.meta()["n"]``."""
    from safetensors.torch import save

    score.check_fitted()
    state = {k: v.detach().cpu().contiguous() for k, v in score.state_dict().items()}
    data = save(state)
    meta = score.meta()
    tensors, info = fit_paths(run_dir, name)
    tensors.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(tensors, data)
    payload = {
        "format": FORMAT,
        "name": name,
        "class": _class_path(score),
        "options": score.config,
        "fingerprint": fingerprint,
        "fit_on": score.fit_on,
        "n": n if n is not None else meta.get("n"),
        "meta": meta,
        "state_sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_json(info, payload, indent=2, sort_keys=True)
    return info


def _check(
    run_dir: str | Path,
    name: str,
    options: Mapping[str, Any] | None,
    fingerprint: str | None,
    registry: Any,
) -> tuple[Score | None, str | None]:
    """``(loaded score, None)`` or ``(None, why not)``."""
    name = ALIASES.get(name, name)
    entry = _registry(registry).get("score", name)
    if entry.obj.fit_on is None:
        return entry.obj(**dict(options or {})), None
    tensors, info = fit_paths(run_dir, name)
    if not info.is_file() or not tensors.is_file():
        return None, f"no fit of score '{name}' in {tensors.parent}"
    try:
        saved = json.loads(info.read_text(encoding="utf-8"))
        data = tensors.read_bytes()
    except (OSError, ValueError) as exc:
        return None, f"the fit of score '{name}' is unreadable ({exc})"
    if saved.get("format") != FORMAT or hashlib.sha256(data).hexdigest() != saved.get(
        "state_sha256"
    ):
        return None, f"the fit of score '{name}' is incomplete or of another format"
    if saved.get("class") != _class_path(entry.obj):
        return None, f"score '{name}' was fitted by {saved.get('class')}, now {entry.package}'s"
    if fingerprint is not None and saved.get("fingerprint") != fingerprint:
        return None, f"score '{name}' was fitted for another model (the run's weights changed)"
    score = entry.obj(**dict(saved["options"] if options is None else options))
    if score.config != saved.get("options"):
        return None, f"score '{name}' was fitted with other options ({saved.get('options')})"
    from safetensors.torch import load

    try:
        score.load_state_dict(load(data), saved.get("meta", {}))
    except StaleFit as exc:
        return None, f"the fit of score '{name}' is stale: {exc.message}"
    return score, None


def load_fit(
    run_dir: str | Path,
    name: str,
    options: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    registry: Any = None,
) -> Score | None:
    """The saved fit of ``name`` loaded into a new instance, or ``None`` when there is none or
    it is stale (another fingerprint, options, plugin class, or an interrupted write)."""
    return _check(run_dir, name, options, fingerprint, registry)[0]


def stale_reason(
    run_dir: str | Path,
    name: str,
    options: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    registry: Any = None,
) -> str | None:
    """Why :func:`load_fit` would return ``None`` (a sentence), or ``None`` when it would not."""
    return _check(run_dir, name, options, fingerprint, registry)[1]


def require_fit(
    run_dir: str | Path,
    name: str,
    options: Mapping[str, Any] | None = None,
    fingerprint: str | None = None,
    registry: Any = None,
) -> Score:
    """:func:`load_fit`, or :class:`ScoreNotFitted` saying why and how to fit it (predict)."""
    score, why = _check(run_dir, name, options, fingerprint, registry)
    if score is None:
        raise ScoreNotFitted(
            f"{why}; score '{ALIASES.get(name, name)}' must be fitted before it is used",
            hint=f"run `bnnkit evaluate {run_dir} --score {ALIASES.get(name, name)}` first "
            "(it fits the score on the run's training images and saves the fit in the run)",
        )
    return score


def _order(
    scores: Mapping[str, Score], available: Iterable[str], registry: Any
) -> list[tuple[str, Score | None]]:
    """Every score after the scores it needs; a needed score neither given nor ``available``
    is built, an available one is listed with ``None`` (its value is used as it is)."""
    todo: dict[str, Score | None] = dict(scores)
    have = set(available)
    done: dict[str, Score | None] = {}
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise PluginError(
                f"scores need each other in a cycle: {' -> '.join([*visiting, name])}"
            )
        if name not in todo:
            todo[name] = None if name in have else build_score(name, registry=registry)
        score = todo[name]
        visiting.append(name)
        for need in score.needs if score is not None else ():
            visit(ALIASES.get(need, need))
        visiting.pop()
        done[name] = score

    for name in scores:
        visit(name)
    return list(done.items())


def compute_scores(
    scores: Mapping[str, Score], inputs: ScoreInputs, registry: Any = None
) -> dict[str, Tensor]:
    """``{name: [B] float64}`` for every score in ``scores`` and every score they need.

    A score's ``needs`` are computed first and passed in its ``inputs.scores``; values already
    in ``inputs.scores`` are used as they are for needed scores not in ``scores``; a needed score
    in neither is built with its default options (a fitted one then raises
    :class:`ScoreNotFitted`: pass it fitted). ``inputs`` is not modified. An empty batch gives
    empty values (after checking that fitted scores are fitted).
    """
    values: dict[str, Tensor] = dict(inputs.scores)
    out: dict[str, Tensor] = {}
    for name, score in _order(scores, values, registry):
        if score is None:
            out[name] = values[name]
            continue
        if len(inputs) == 0:  # an empty batch: pytorch-ood and scikit-learn refuse those
            score.check_fitted()
            values[name] = out[name] = torch.zeros(0, dtype=torch.float64)
            continue
        needed = {n: values[ALIASES.get(n, n)] for n in score.needs}
        value = score(ScoreInputs(inputs.features, inputs.logits, inputs.probs, needed))
        values[name] = out[name] = value
    return out
