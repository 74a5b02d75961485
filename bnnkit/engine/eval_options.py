"""``bnnkit evaluate``'s options checked against the run: the unseen generators (``--ood``) and
the evaluation-time options of the run's inference method (``--set inference.KEY=VALUE``)."""

from __future__ import annotations

from typing import Any

from bnnkit.data.genimage import check_generator_name
from bnnkit.errors import UsageError
from bnnkit.overrides import parse_value

__all__ = ["inference_overrides", "resolve_ood"]


def resolve_ood(recipe, ood: list[str] | None) -> list[str]:
    names = [check_generator_name(g) for g in (ood or recipe.data.holdout)]
    seen = set(recipe.data.train_generators)
    trained = [g for g in names if g in seen]
    if trained:
        raise UsageError(
            f"--ood {', '.join(trained)}: this run was trained on {', '.join(trained)}, so it is "
            "not an unseen generator",
            hint=f"unseen here: {', '.join(sorted(set(recipe.data.holdout) - seen)) or 'none'}",
        )
    return list(dict.fromkeys(names))


def inference_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``inference.KEY=VALUE`` items (``bnnkit evaluate --set``) as ``{KEY: value}``: options of
    the run's inference method that apply at evaluation time (e.g. ``prior_precision`` of
    kflaplace). Anything else, or the method's name, is refused."""
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
