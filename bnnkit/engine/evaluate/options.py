"""``bnnkit evaluate``'s options checked against the run: the unseen generators (``--ood``),
the evaluation-time options of the run's inference method (``--set inference.KEY=VALUE``) and
the scores' options (``--set score.NAME.KEY=VALUE``)."""

from __future__ import annotations

from typing import Any

from bnnkit.data.genimage import check_generator_name
from bnnkit.errors import UsageError
from bnnkit.overrides import parse_value

__all__ = ["evaluation_debias", "inference_overrides", "resolve_ood", "score_overrides"]


def evaluation_debias(recipe, debias: list[str] | None) -> None:
    """``bnnkit evaluate --debias``: evaluate under these ``data.debias`` controls whatever the
    run was trained with (``["none"]``: the raw data; ``None``: the run's own), set on
    ``recipe`` so that the evaluation, calibration and score-fit images all follow it."""
    if debias is not None:
        from bnnkit.data.debias import normalise_debias

        recipe.data.debias = normalise_debias(v for v in debias if v != "none")


def resolve_ood(recipe, ood: list[str] | None) -> list[str]:
    names = list(ood or recipe.data.holdout)
    if _genimage_names(recipe.data):  # other layouts: checked against the data when read
        names = [check_generator_name(g) for g in names]
    seen = set(recipe.data.train_generators)
    trained = [g for g in names if g in seen]
    if trained:
        raise UsageError(
            f"--ood {', '.join(trained)}: this run was trained on {', '.join(trained)}, so it is "
            "not an unseen generator",
            hint=f"unseen here: {', '.join(sorted(set(recipe.data.holdout) - seen)) or 'none'}",
        )
    return list(dict.fromkeys(names))


def _genimage_names(data: Any) -> bool:
    """Whether ``data``'s generators are GenImage's short names (its layout, or a root that
    cannot be read yet: then the names are checked as before layouts existed)."""
    from bnnkit.data.layouts import resolve_layout

    try:
        return resolve_layout(data.root, getattr(data, "layout", "auto")) == "genimage"
    except UsageError:
        return True


def inference_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``inference.KEY=VALUE`` items (``bnnkit evaluate --set``) as ``{KEY: value}``: options of
    the run's inference method that apply at evaluation time (e.g. ``prior_precision`` of
    kflaplace). Anything else, or the method's name, is refused; so, when the run loads, is an
    option a run was built with (a training-free ``wepe``/``rigid`` run's ``sigma``, ``seed``,
    ``quantile``, ...: :meth:`~bnnkit.methods.training_free.TrainingFreeMethod.load_extra_meta`)."""
    out: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        head, _, name = key.strip().partition(".")
        if not sep or head != "inference" or not name or "." in name or name == "name":
            raise UsageError(
                f"--set {item!r}: evaluate takes only inference.KEY=VALUE (an option of the "
                "run's inference method)",
                hint="e.g. --set inference.prior_precision=10 for a kflaplace run",
            )
        out[name] = parse_value(value.strip())
    return out


def score_overrides(overrides: list[str] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Split ``--set`` items: ``score.NAME.KEY=VALUE`` (an option of score NAME, VALUE parsed as
    TOML, e.g. ``score.knn.k=10``) as ``{NAME: {KEY: value}}``, and the other items, unchanged.
    The score's own declaration checks the values when it is built."""
    options: dict[str, dict[str, Any]] = {}
    rest: list[str] = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if parts[0] != "score":
            rest.append(item)
            continue
        if not sep or len(parts) != 3 or not all(parts):
            raise UsageError(
                f"--set {item!r}: a score option is score.NAME.KEY=VALUE",
                hint="e.g. --set score.knn.k=10 (`bnnkit plugins --kind score` lists options)",
            )
        options.setdefault(parts[1], {})[parts[2]] = parse_value(value.strip())
    return options, rest


def abstention_levels(
    recipe, coverage: float | None, guarantee: float | None, fit_limit: int
) -> tuple[float, float | None]:
    """``(coverage, guarantee)`` of an evaluation: ``--guarantee`` (or ``eval.guarantee``)
    sets the coverage to its level and asks for the split-conformal threshold
    (:mod:`bnnkit.metrics.conformal`); otherwise ``--coverage`` (or ``eval.coverage``)."""
    guarantee = recipe.eval.guarantee if guarantee is None else float(guarantee)
    if guarantee is not None and not 0.0 < guarantee < 1.0:
        raise UsageError(f"--guarantee {guarantee}: must be in (0, 1), e.g. 0.9")
    coverage = recipe.eval.coverage if coverage is None else float(coverage)
    if not 0.0 < coverage <= 1.0:
        raise UsageError(f"--coverage {coverage}: must be in (0, 1], e.g. 0.95")
    if fit_limit < 0:
        raise UsageError(f"--fit-limit {fit_limit}: must be >= 0 (0 = every training image)")
    return (guarantee, guarantee) if guarantee is not None else (coverage, None)


def warn(text: str, console: Any = None) -> None:
    """A warning for the Python API (``warnings``) and, with a console, on the terminal."""
    import warnings

    warnings.warn(text, stacklevel=3)
    if console is not None:
        console.print(f"[yellow]warning:[/] {text}")


def calibration_images(recipe, console: Any = None) -> list:
    """The run's calibration images; none, with the in-sample warning, for a run without."""
    from bnnkit.data.index import DEFAULT_CACHE_DIR
    from bnnkit.data.splits import calibration_items, in_sample_warning

    if recipe.data.calibration:
        return calibration_items(recipe, DEFAULT_CACHE_DIR)
    warn(in_sample_warning("the abstention thresholds and seen-fitted scores are"), console)
    return []
