"""``RUN/report.md``: the evaluation as tables and embedded plots, readable on its own.

Everything comes from the metrics dict (``metrics.json``, schema 3) plus the relative paths of the
plots that were written; numbers are printed with three decimals (epistemic uncertainty with
four), and a missing value (``null``: one class only, nothing evaluated) as an en dash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bnnkit.metrics.schema import abstention_score, ood_score
from bnnkit.report.history import MemberHistory, member_history
from bnnkit.report.tables import (
    SCORE_NAMES,
    abstention_table,
    degradation_table,
    fmt_value,
    is_missing,
    ood_table,
    render_markdown,
    score_summary_table,
    selective_table,
)
from bnnkit.report.tables_attribution import attribution_table
from bnnkit.report.tables_generators import calibration_table, detection_table, forensic_table
from bnnkit.run.layout import THRESHOLD_FILE

__all__ = ["render_report"]

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
    "training_curves": (
        "Training curves",
        "Loss and accuracy per epoch from history.csv (a deep ensemble of whole detectors: one "
        "line per member, over its own epochs).",
    ),
    "degradations": (
        "Degradations",
        "Accuracy and mean epistemic uncertainty, clean and under each degradation.",
    ),
    "severity": (
        "Severity sweeps",
        "Accuracy, the share of unseen-generator errors the abstention threshold catches and "
        "the seen coverage it keeps, against severity (0 = clean), one line per degradation "
        "kind; the threshold is the clean-calibrated one.",
    ),
}


def _f(value: Any, digits: int = 3) -> str:
    return fmt_value(value, digits, markdown=True)


def _pct(value: Any) -> str:
    return fmt_value(value, kind="pct", markdown=True)


def _ood_section(m: Mapping[str, Any]) -> list[str]:
    if not m["ood"]:
        return ["No unseen generator was evaluated (pass `--ood GENERATOR`)."]
    out = [
        "Seen-generator images (in-distribution) against the unseen generator's fakes "
        "(out-of-distribution; its reals are ImageNet photos like the seen ones). Higher "
        "score = more likely unseen. Per score: the OOD AUROC per unseen generator and pooled, "
        "and the fraction of the unseen generators' errors (wrong verdicts) that abstaining at "
        "the score's own threshold (calibrated on seen images for the target coverage) catches.",
        "",
        render_markdown(score_summary_table(m)),
        "",
        "Every score in detail (FPR95: fraction of seen images flagged when 95% of the unseen "
        "fakes are):",
        "",
        render_markdown(ood_table(m)),
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
    constant = any(is_missing(e["aurc"]) for e in m["selective"].values())
    note = " n/a: the score is the same for every image, so it ranks nothing." if constant else ""
    return [
        "Seen-generator images, most certain kept first. AURC: area under the risk-coverage "
        "curve (lower is better; the optimal value is that of a perfect ranking at this error "
        "rate). For two classes max-probability ranks exactly like entropy." + note,
        "",
        render_markdown(selective_table(m)),
    ]


def _abstention_section(m: Mapping[str, Any]) -> list[str]:
    a = m["abstention"]
    score = a["score"]
    chosen = abstention_score(a)
    cal = a.get("calibration", {})
    out = [
        f"Threshold on the score **{SCORE_NAMES.get(score, score)}**, calibrated on "
        f"{cal.get('n')} seen-generator validation images to keep "
        f"{_pct(a['coverage_target'])} of them: abstain (verdict `uncertain`) when it exceeds "
        f"**{_f(chosen['threshold'], 6)}**. "
        f"Stored in `{cal.get('file', THRESHOLD_FILE)}` for `bnnkit predict`. The seen "
        f"coverage is in-sample; the 2-fold cross-fit estimate for new seen images is "
        f"{_pct(chosen.get('coverage_crossfit'))}.",
        "",
    ]
    out.append(render_markdown(abstention_table(m)))
    out += ["", "The score in bold is the one stored and used by `bnnkit predict`."]
    return out


def _degradation_section(m: Mapping[str, Any]) -> list[str]:
    degs = m.get("degradations") or {}
    if not degs:
        return [
            "Not evaluated. GenImage's protocol: "
            "`--degrade jpeg:65,jpeg:30,blur:3,blur:5,resize:112,resize:64`; laundering "
            "(severity sweeps, a social-media chain, noise, WebP, grayscale): "
            "`--degrade laundering`."
        ]
    out = [
        "Accuracy per generator (GenImage's table), then seen-generator AUROC and ECE, and the "
        "seen coverage of the clean-calibrated abstention threshold under the degradation.",
        "",
        render_markdown(degradation_table(m)),
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
    members = member_history(history)
    if members is not None:  # a deep ensemble of whole detectors
        samples = (
            f"{m['samples']} posterior samples per image: the predictions of "
            f"{len(members.members)} whole member detectors (each its own backbone and head)"
        )
    else:
        samples = f"{m['samples']} posterior samples per image (over the head only)"
    lines = [
        f"# Evaluation report: {m['run']}",
        "",
        f"Recipe `{m['recipe']}`: backbone `{m['backbone']}`, attention `{m['attention']}`, "
        f"head `{m['head']}`, inference method `{m['method']}`. {samples}, "
        f"seed {m['seed']}, {m['split']} split, {m['image_size']} px ({m['preprocess']}).",
        "",
        f"- Seen generators (trained on): {', '.join(seen)}",
        f"- Unseen generators (marked \\*): {', '.join(unseen) or 'none'}",
        f"- metrics.json schema version {m['schema_version']} "
        "(see docs/metrics-schema.md in bnnkit)",
    ]
    if members is not None:
        lines.append(_members_line(members))
    elif history:
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
    if m.get("temperature"):
        t, fit = m["temperature"], m["temperature"].get("fit") or {}
        summary.append(
            f"- Temperature scaling (`bnnkit calibrate`): T = {_f(t['value'], 4)}, fitted on "
            f"{(t.get('fitted_on') or {}).get('n')} seen validation images; on that fit set "
            f"ECE {_f(fit.get('ece_before'))} before, {_f(fit.get('ece_after'))} after "
            f"(NLL {_f(fit.get('nll_before'))} -> {_f(fit.get('nll_after'))}). Every number "
            "in this report is of the tempered predictive."
        )
    if m.get("unseen"):
        u = m["unseen"]
        comb = m.get("ood_combined") or {}
        summary.append(
            f"- Unseen generators: accuracy {_f(u['accuracy'])}, AUROC {_f(u['auroc'])}; "
            f"epistemic uncertainty tells their fakes from seen images with AUROC "
            f"{_f(ood_score(comb, 'mutual_info').get('auroc'))}."
        )
    summary.append(
        f"- GenImage average accuracy over all generators: {_f(m['average_accuracy']['all'])}."
    )
    a = m["abstention"]
    chosen = abstention_score(a)
    if chosen.get("unseen_combined"):
        uc = chosen["unseen_combined"]
        summary.append(
            f"- Abstaining on score {a['score']} above {_f(chosen['threshold'], 4)} keeps "
            f"{_pct(chosen['seen']['coverage'])} of seen images and catches "
            f"{uc['errors_caught']} of {uc['errors']} errors on unseen generators."
        )
    lines += summary
    if m.get("benchmarks"):  # --data: the cross-benchmark table and each benchmark's
        from bnnkit.report.benchmarks import benchmark_section

        lines += benchmark_section(m)
    lines += [
        "",
        "## Detection per generator",
        "",
        render_markdown(detection_table(m)),
    ]
    lines += [
        "",
        "## Calibration and uncertainty per generator",
        "",
        "Uncertainty in nats: total = entropy of the mean predictive, aleatoric = mean "
        "entropy of the posterior samples, epistemic = their difference (mutual "
        "information).",
        "",
        render_markdown(calibration_table(m)),
    ]
    forensic = forensic_table(m)
    lines += ["", "## Forensic metrics per generator", "", forensic.caption or ""]
    lines += ["", render_markdown(forensic)]
    lines += ["", "## Unseen generators as out-of-distribution inputs", "", *_ood_section(m)]
    lines += ["", "## Selective prediction", "", *_selective_section(m)]
    lines += ["", "## Abstention", "", *_abstention_section(m)]
    lines += ["", "## Degradations", "", *_degradation_section(m)]
    attribution = attribution_table(m)  # data.labels = "generator"
    if attribution is not None:
        lines += ["", "## Generator attribution", "", attribution.caption or ""]
        lines += ["", render_markdown(attribution)]
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
        "- OOD AUROC / AUPR (OOD positive) / FPR95 of a score separating seen images from "
        "unseen fakes; the scores are described in metrics.json's `scores` block "
        "(`bnnkit plugins --kind score`).",
        "- `\\*`: generator unseen in training; `–`: undefined (e.g. one class only).",
    ]
    if m.get("broken_files"):
        lines += ["", "## Unreadable files skipped", ""]
        lines += [f"- `{b['path']}`: {b['reason']}" for b in m["broken_files"]]
    return "\n".join(lines) + "\n"


def _members_line(members: MemberHistory) -> str:
    """The training line of a whole-detector ensemble: epochs per member, the members' own and
    the ensemble's validation."""
    epochs = sorted(set(members.epochs()))
    each = f"{epochs[0]} epoch(s) each" if len(epochs) == 1 else (
        "epochs " + ", ".join(map(str, members.epochs())))  # fmt: skip
    own = ", ".join(_f(v) for v in members.last("val_acc"))
    line = (
        f"- Training: {len(members.members)} member detectors trained one after another, "
        f"{each}; members' last validation accuracy {own}"
    )
    if members.ensemble is not None:
        e = members.ensemble
        line += (
            f"; the ensemble's validation accuracy {_f(_float(e.get('val_acc')))}, "
            f"NLL {_f(_float(e.get('val_nll')))}"
        )
    return line


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
