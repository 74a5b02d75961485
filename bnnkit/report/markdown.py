"""``RUN/report.md``: the evaluation as tables and embedded plots, readable on its own.

Everything comes from the metrics dict (``metrics.json``, schema 2) plus the relative paths of the
plots that were written; numbers are printed with three decimals (epistemic uncertainty with
four), and a missing value (``null``: one class only, nothing evaluated) as an en dash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_report"]

DASH = "–"
SCORE_NAMES = {
    "max_prob": "max-probability (1 − max p)",
    "total": "entropy (total)",
    "epistemic": "mutual information (epistemic)",
}
PLOT_CAPTIONS = {
    "reliability": (
        "Reliability diagram",
        "Accuracy against top-label confidence in 15 equal-width bins (the bins of the ECE); "
        "bars below the diagonal are over-confident.",
    ),
    "epistemic_histogram": (
        "Epistemic uncertainty, seen vs unseen generators",
        "Mutual information of images of the seen generators and of each unseen generator's "
        "fakes; a Bayesian detector should put the unseen ones further right.",
    ),
    "risk_coverage": (
        "Risk-coverage",
        "Error rate of the images kept when abstaining on the most uncertain ones; the dotted "
        "oracle keeps every error for last.",
    ),
    "roc": ("ROC per generator", "p(fake) on each generator's fakes against its reals."),
    "training_curves": ("Training curves", "Loss and accuracy per epoch from history.csv."),
    "degradations": (
        "Degradations",
        "Accuracy and mean epistemic uncertainty, clean and under each degradation.",
    ),
}


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{100 * value:.1f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub-flavoured markdown table; the first ``left`` columns left-aligned."""
    align = [":--" if i < left else "--:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _gen_label(name: str, entry: Mapping[str, Any]) -> str:
    return name if entry.get("seen", True) else f"{name}\\*"


def _named_entries(m: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Per-generator entries, then the seen (and unseen) aggregates, with their row labels."""
    named = [(_gen_label(n, e), e) for n, e in m["per_generator"].items()]
    named.append(("**all seen**", m["seen"]))
    if m.get("unseen"):
        named.append(("**all unseen**", m["unseen"]))
    return named


def _detection_rows(m: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for label, e in _named_entries(m):
        rows.append(
            [
                label,
                _f(e["n"]),
                _f(e["accuracy"]),
                _f(e["balanced_accuracy"]),
                _f(e["auroc"]),
                _f(e["ap"]),
                _f(e["tpr_at_fpr_1"]),
                _f(e["tpr_at_fpr_5"]),
            ]
        )
    return rows


def _calibration_rows(m: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for label, e in _named_entries(m):
        rows.append(
            [
                label,
                _f(e["nll"]),
                _f(e["brier"]),
                _f(e["ece"]),
                _f(e["adaptive_ece"]),
                _f(e["total_uncertainty"]),
                _f(e["aleatoric_uncertainty"]),
                _f(e["epistemic_uncertainty"], 4),
            ]
        )
    return rows


def _ood_section(m: Mapping[str, Any]) -> list[str]:
    if not m["ood"]:
        return ["No unseen generator was evaluated (pass `--ood GENERATOR`)."]
    rows = []
    entries = list(m["ood"].items())
    if len(entries) > 1 and m.get("ood_combined"):
        entries.append(("**all unseen**", m["ood_combined"]))
    for name, e in entries:
        for score, label in SCORE_NAMES.items():
            s = e[score]
            rows.append([name, label, _f(s["auroc"]), _f(s["aupr"]), _f(s["fpr95"])])
    out = [
        "Seen-generator images (in-distribution) against the unseen generator's fakes "
        "(out-of-distribution; its reals are ImageNet photos like the seen ones). Higher "
        "uncertainty = more likely unseen. FPR95: fraction of seen images flagged when 95% of "
        "the unseen fakes are.",
        "",
        _table(["unseen generator", "score", "AUROC", "AUPR", "FPR95"], rows, left=2),
        "",
    ]
    for name, e in m["ood"].items():
        out.append(
            f"- **{name}**: accuracy {_f(e['accuracy'])}, fakes detected "
            f"{_pct(e['fake_detection_rate'])}; mean epistemic uncertainty of its fakes "
            f"{_f(e['mean_epistemic_unseen_fakes'], 4)} vs {_f(e['mean_epistemic_seen'], 4)} "
            f"on seen images ({e['n_ood']} fakes, {e['n_id']} seen images)."
        )
    return out


def _selective_section(m: Mapping[str, Any]) -> list[str]:
    def na(value: Any) -> str:  # null here: a constant score (MAP's epistemic) ranks nothing
        return "n/a" if _f(value) == DASH else _f(value)

    rows = [
        [
            SCORE_NAMES[s],
            na(e["aurc"]),
            na(e["aurc_optimal"]),
            _f(e["accuracy"]),
            na(e["accuracy_at_90"]),
            na(e["accuracy_at_80"]),
        ]
        for s, e in m["selective"].items()
    ]
    constant = any(na(e["aurc"]) == "n/a" for e in m["selective"].values())
    note = " n/a: the score is the same for every image, so it ranks nothing." if constant else ""
    return [
        "Seen-generator images, most certain kept first. AURC: area under the risk-coverage "
        "curve (lower is better; the optimal value is that of a perfect ranking at this error "
        "rate). Max-probability ranks exactly like entropy for two classes, so it is not "
        "repeated." + note,
        "",
        _table(["ranked by", "AURC", "optimal AURC", "acc@100%", "acc@90%", "acc@80%"], rows),
    ]


def _abstention_section(m: Mapping[str, Any]) -> list[str]:
    a = m["abstention"]
    score = a["score"]
    chosen = a["by_score"][score]
    cal = a.get("calibration", {})
    out = [
        f"Threshold on the **{SCORE_NAMES[score]}** uncertainty, calibrated on {cal.get('n')} "
        f"seen-generator validation images to keep {_pct(a['coverage_target'])} of them: "
        f"abstain (verdict `uncertain`) when it exceeds **{_f(chosen['threshold'], 6)}** nats. "
        f"Stored in `{cal.get('file', 'threshold.json')}` for `bnnkit predict`. The seen "
        f"coverage is in-sample; the 2-fold cross-fit estimate for new seen images is "
        f"{_pct(chosen.get('coverage_crossfit'))}.",
        "",
    ]
    rows = []
    for s, e in a["by_score"].items():
        groups = [("seen generators", e["seen"])]
        groups += [(f"{n}\\*", v) for n, v in e["unseen"].items()]
        if len(e["unseen"]) > 1 and e.get("unseen_combined"):
            groups.append(("all unseen", e["unseen_combined"]))
        for label, v in groups:
            rows.append(
                [
                    f"**{s}**" if s == score else s,
                    label,
                    _f(v["n"]),
                    _pct(v["coverage"]),
                    _f(v["accuracy_all"]),
                    _f(v["accuracy_kept"]),
                    f"{v['errors_caught']} / {v['errors']}",
                    _pct(v["errors_caught_rate"]),
                ]
            )
    out.append(
        _table(
            [
                "score",
                "images",
                "n",
                "coverage",
                "acc (all)",
                "acc (kept)",
                "errors caught",
                "caught",
            ],
            rows,
            left=2,
        )
    )
    out += ["", "The score in bold is the one stored and used by `bnnkit predict`."]
    return out


def _degradation_section(m: Mapping[str, Any]) -> list[str]:
    degs = m.get("degradations") or {}
    if not degs:
        return [
            "Not evaluated. GenImage's protocol: "
            "`--degrade jpeg:65,jpeg:30,blur:3,blur:5,resize:112,resize:64`."
        ]
    gens = list(m["per_generator"])
    conditions = {"clean": m, **degs}
    rows = []
    for name, c in conditions.items():
        row = [name]
        row += [_f(c["per_generator"][g]["accuracy"]) for g in gens]
        row += [_f(c["average_accuracy"]["all"]), _f(c["seen"]["auroc"]), _f(c["seen"]["ece"])]
        cov = c["abstention"]["by_score"][c["abstention"]["score"]]["seen"]["coverage"]
        row.append(_pct(cov))
        rows.append(row)
    headers = [
        "condition",
        *(_gen_label(g, m["per_generator"][g]) for g in gens),
        "avg acc",
        "seen AUROC",
        "seen ECE",
        "seen coverage",
    ]
    out = [
        "Accuracy per generator (GenImage's table), then seen-generator AUROC and ECE, and the "
        "seen coverage of the clean-calibrated abstention threshold under the degradation.",
        "",
        _table(headers, rows),
        "",
    ]
    out += [f"- `{n}`: {d['description']}" for n, d in degs.items()]
    return out


def render_report(
    metrics: Mapping[str, Any],
    plots: Mapping[str, str],
    history: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The markdown text of ``report.md``; ``plots`` maps plot kind -> path relative to RUN."""
    m = metrics
    seen, unseen = m["seen_generators"], m["ood_generators"]
    lines = [
        f"# Evaluation report: {m['run']}",
        "",
        f"Recipe `{m['recipe']}`: backbone `{m['backbone']}`, attention `{m['attention']}`, "
        f"head `{m['head']}`, inference method `{m['method']}`. {m['samples']} posterior "
        f"samples per image (over the head only), seed {m['seed']}, {m['split']} split, "
        f"{m['image_size']} px ({m['preprocess']}).",
        "",
        f"- Seen generators (trained on): {', '.join(seen)}",
        f"- Unseen generators (marked \\*): {', '.join(unseen) or 'none'}",
        f"- metrics.json schema version {m['schema_version']} "
        "(see docs/metrics-schema.md in bnnkit)",
    ]
    if history:
        last = history[-1]
        lines.append(
            f"- Training: {len(history)} epoch(s); last validation accuracy "
            f"{_f(_float(last.get('val_acc')))}, NLL {_f(_float(last.get('val_nll')))}"
        )
    s = m["seen"]
    summary = [
        "",
        "## Summary",
        "",
        f"- Seen generators: accuracy {_f(s['accuracy'])}, AUROC {_f(s['auroc'])}, "
        f"ECE {_f(s['ece'])}, NLL {_f(s['nll'])}.",
    ]
    if m.get("unseen"):
        u = m["unseen"]
        comb = m.get("ood_combined") or {}
        summary.append(
            f"- Unseen generators: accuracy {_f(u['accuracy'])}, AUROC {_f(u['auroc'])}; "
            f"epistemic uncertainty tells their fakes from seen images with AUROC "
            f"{_f((comb.get('epistemic') or {}).get('auroc'))}."
        )
    summary.append(
        f"- GenImage average accuracy over all generators: {_f(m['average_accuracy']['all'])}."
    )
    a = m["abstention"]
    chosen = a["by_score"][a["score"]]
    if chosen.get("unseen_combined"):
        uc = chosen["unseen_combined"]
        summary.append(
            f"- Abstaining on {a['score']} uncertainty above {_f(chosen['threshold'], 4)} keeps "
            f"{_pct(chosen['seen']['coverage'])} of seen images and catches "
            f"{uc['errors_caught']} of {uc['errors']} errors on unseen generators."
        )
    lines += summary
    lines += [
        "",
        "## Detection per generator",
        "",
        _table(
            ["generator", "n", "acc", "bal. acc", "AUROC", "AP", "TPR@1%FPR", "TPR@5%FPR"],
            _detection_rows(m),
        ),
    ]
    lines += [
        "",
        "## Calibration and uncertainty per generator",
        "",
        "Uncertainty in nats: total = entropy of the mean predictive, aleatoric = mean "
        "entropy of the posterior samples, epistemic = their difference (mutual "
        "information).",
        "",
        _table(
            ["generator", "NLL", "Brier", "ECE", "adaptive ECE", "total", "aleatoric", "epistemic"],
            _calibration_rows(m),
        ),
    ]
    lines += ["", "## Unseen generators as out-of-distribution inputs", "", *_ood_section(m)]
    lines += ["", "## Selective prediction", "", *_selective_section(m)]
    lines += ["", "## Abstention", "", *_abstention_section(m)]
    lines += ["", "## Degradations", "", *_degradation_section(m)]
    if plots:
        lines += ["", "## Plots"]
        for kind, path in plots.items():
            title, caption = PLOT_CAPTIONS.get(kind, (kind, ""))
            lines += ["", f"### {title}", "", f"![{title}]({path})", "", caption]
    lines += [
        "",
        "## Definitions",
        "",
        "- Accuracy and balanced accuracy at p(fake) ≥ 0.5; AUROC and AP (average precision) "
        "with fakes as positives; TPR@1%/5%FPR: fakes detected at the threshold that calls at "
        "most 1%/5% of the reals fake.",
        "- NLL in nats; Brier summed over both classes (range 0-2); ECE: top-label, 15 "
        "equal-width bins; adaptive ECE: 15 equal-mass bins.",
        "- OOD AUROC / AUPR (OOD positive) / FPR95 of an uncertainty score separating seen "
        "images from unseen fakes.",
        "- `\\*`: generator unseen in training; `–`: undefined (e.g. one class only).",
    ]
    if m.get("broken_files"):
        lines += ["", "## Unreadable files skipped", ""]
        lines += [f"- `{b['path']}`: {b['reason']}" for b in m["broken_files"]]
    return "\n".join(lines) + "\n"


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
