"""The model card (``README.md``) of an exported run (:mod:`bnnkit.run.export`).

Every number comes from the run's own files (``metrics.json``, ``threshold.json``,
``temperature.json``); a run that was not evaluated, or whose evaluation was of other weights,
says so instead of showing numbers.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["base_source", "model_card"]

LICENSE_NOTE = (
    "The weights were trained on the images listed under *Training data*; whether they may be "
    "shared or used, and under which licence, depends on that training data's terms (GenImage, "
    "ImageNet and the generators' licences for the real benchmark). `license: other` until the "
    "publisher states one."
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _pct(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{100 * value:.1f} %"


def base_source(base: dict[str, Any]) -> str:
    """Where a lora/partial checkpoint's frozen base comes from (its ``base`` record)."""
    src = base.get("pretrained")
    if isinstance(src, str):
        return f"the file {src}"
    return (
        "the backbone's hub weights" if src else f"timm's init under seed {base.get('init_seed')}"
    )


def _front_matter(config: dict[str, Any]) -> list[str]:
    recipe = config["recipe"]
    backbone = ((recipe.get("model") or {}).get("backbone") or {}).get("name")
    tags = ["bnnkit", "ai-generated-image-detection", "bayesian-deep-learning",
            "uncertainty-estimation", "safetensors"]  # fmt: skip
    tags += [t for t in (f"method-{config.get('method')}", backbone) if t and "None" not in t]
    return [
        "---",
        "library_name: bnnkit",
        "pipeline_tag: image-classification",
        "license: other",
        "license_name: depends-on-training-data",
        "tags:",
        *[f"- {json.dumps(t)}" for t in tags],
        "---",
        "",
    ]


def _detector(config: dict[str, Any]) -> list[str]:
    recipe = config["recipe"]
    model, data = recipe.get("model") or {}, recipe.get("data") or {}

    def name(part: str) -> str:
        return _num((model.get(part) or {}).get("name"))

    norm = config.get("normalisation") or {}
    rows = [
        ("frontend", name("frontend")),
        ("backbone", name("backbone")),
        ("attention", name("attention")),
        ("head", name("head")),
        ("inference method", _num(config.get("method"))),
        ("backbone training", _num((recipe.get("train") or {}).get("backbone"))),
        ("input", f"{_num(data.get('image_size'))} px, {_num(data.get('preprocess', 'crop'))}"),
        ("normalisation", f"mean {norm.get('mean')}, std {norm.get('std')}"),
        ("feature dim", _num(config.get("feature_dim"))),
        ("posterior samples K", _num((recipe.get("eval") or {}).get("samples"))),
        ("seed", _num(recipe.get("seed"))),
    ]
    base = config.get("base")
    if isinstance(base, dict):
        held = f"only the {base.get('mode')} tensors; the base is rebuilt from "
        rows.append(("weights in this folder", held + f"{base_source(base)} (digest checked)"))
    return [
        "## Detector",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Training data",
        "",
        f"- generators trained on: {', '.join(data.get('train_generators') or []) or '–'}",
        f"- held out (never trained on): {', '.join(data.get('holdout') or []) or '–'}",
        f"- training images: {_num(config.get('num_train'))} (after the calibration split)",
        f"- calibration split: data.calibration = {_num(data.get('calibration'))} of each "
        "training generator's training images, never trained on",
        "",
    ]


def _evaluation(metrics: dict[str, Any], threshold: dict[str, Any] | None) -> list[str]:
    seen, unseen = metrics.get("seen") or {}, metrics.get("unseen") or {}
    ood = ", ".join(metrics.get("ood_generators") or []) or "none"
    cal = (metrics.get("abstention") or {}).get("calibration") or {}
    in_sample = cal.get("split") == metrics.get("split", "val")
    never = (
        "never trained on; the thresholds were calibrated on its seen images: in-sample"
        if in_sample
        else "never trained or calibrated on"
    )
    lines = [
        "## Evaluation",
        "",
        f"On the `{metrics.get('split', 'val')}` split ({never}), "
        f"K = {_num(metrics.get('samples'))} posterior samples; unseen generators: {ood}.",
        "",
        "| images | n | accuracy | AUROC | R.Acc | F.Acc | ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, group in (("seen generators", seen), ("unseen generators", unseen)):
        if group:
            lines.append(
                f"| {label} | {_num(group.get('n'))} | {_pct(group.get('accuracy'))} | "
                f"{_num(group.get('auroc'))} | {_pct(group.get('real_accuracy'))} | "
                f"{_pct(group.get('fake_accuracy'))} | {_num(group.get('ece'))} |"
            )
    abst = metrics.get("abstention") or {}
    score = abst.get("score")
    block = (abst.get("by_score") or {}).get(score) or {}
    kept, caught = block.get("seen") or {}, block.get("unseen_combined") or {}
    lines += [
        "",
        "## Abstention",
        "",
        f"`bnnkit predict` answers *uncertain* when the score `{score}` is above "
        f"{_num(block.get('threshold'), 4)} (`threshold.json`), set for a target coverage of "
        f"{_pct(abst.get('coverage_target'))} of seen images on the `{cal.get('split', '–')}` "
        f"split ({_num(cal.get('n'))} images of "
        f"{', '.join(cal.get('generators') or []) or '–'}).",
        "",
        f"- seen images kept: {_pct(kept.get('coverage'))} "
        f"(cross-fit estimate {_pct(block.get('coverage_crossfit'))}); accuracy on kept "
        f"{_pct(kept.get('accuracy_kept'))}",
        f"- unseen generators' errors caught: {_pct(caught.get('errors_caught_rate'))} "
        f"({_num(caught.get('errors_caught'))} of {_num(caught.get('errors'))})"
        if caught
        else "- no unseen generator was evaluated",
        "",
    ]
    if threshold is None:
        lines += ["(The run's threshold.json is missing or stale: predict will not abstain.)", ""]
    return lines


def _calibration(metrics: dict[str, Any] | None, temperature: dict[str, Any] | None) -> list[str]:
    lines = ["## Calibration", ""]
    if not temperature:
        return [*lines, "No post-hoc temperature (`bnnkit calibrate` was not run).", ""]
    on = temperature.get("fitted_on") or {}
    fit = temperature.get("fit") or {}
    lines.append(
        f"Temperature T = {_num(temperature.get('temperature'), 4)} (`temperature.json`), "
        f"fitted on the {on.get('split', '–')} split: {_num(on.get('n'))} images of "
        f"{', '.join(on.get('generators') or []) or '–'} (fraction {_num(on.get('fraction'))}); "
        f"NLL {_num(fit.get('nll_before'), 4)} → {_num(fit.get('nll_after'), 4)}, "
        f"ECE {_num(fit.get('ece_before'), 4)} → {_num(fit.get('ece_after'), 4)} on that set."
    )
    if temperature.get("at_bound"):
        lines.append(
            f"T is at the edge of the range searched ({temperature.get('bounds')}): the fit "
            "did not settle inside it."
        )
    if metrics is not None and not metrics.get("temperature"):
        lines.append("The evaluation above was made before this temperature was fitted.")
    return [*lines, ""]


def model_card(
    config: dict[str, Any],
    metrics: dict[str, Any] | None,
    threshold: dict[str, Any] | None,
    temperature: dict[str, Any] | None,
) -> str:
    """The README.md of an exported run. ``metrics``/``threshold``/``temperature``: the run's
    files (None: absent, or made for other weights than the exported ones)."""
    recipe = config["recipe"]
    lines = _front_matter(config)
    lines += [
        f"# {recipe.get('name', 'bnnkit detector')}: a Bayesian AI-generated-image detector",
        "",
        recipe.get("description") or "",
        "",
        f"Exported by bnnkit {config['bnnkit_version']} from the run `{config['source_run']}`. "
        "The folder is a bnnkit run directory: predict, evaluate and load it as one.",
        "",
        "```bash",
        "bnnkit pull OWNER/REPO detector/   # or use this folder directly",
        "bnnkit predict detector/ photo.png --format json",
        "```",
        "",
        "```python",
        "import bnnkit",
        "",
        'print(bnnkit.Run.load("detector").predict(["photo.png"]))',
        "```",
        "",
        *_detector(config),
    ]
    if metrics is None:
        lines += ["## Evaluation", "", "Not evaluated: this run has no metrics "
                  "(`bnnkit evaluate` was not run before export), and no abstention threshold.",
                  ""]  # fmt: skip
    else:
        lines += _evaluation(metrics, threshold)
    lines += _calibration(metrics, temperature)
    lines += ["## Licence", "", LICENSE_NOTE, ""]
    return "\n".join(lines)
