"""The evaluation's tables, each defined once as column specs, with two renderers: rich (the
terminal tables of ``bnnkit evaluate`` and ``bnnkit compare``) and markdown (``report.md``,
``bnnkit compare --format markdown``).

A :class:`Table` holds rows (any objects: metric dicts here) and :class:`Column` s that read a
value from a row and say how to print it. A column may be shown by one renderer only
(``only="rich"`` / ``"markdown"``), and may have a shorter header for the terminal (``short``).
Row labels are :class:`Label` s: the renderer marks unseen generators (``*``) and aggregate rows
(bold) in its own syntax. A missing value (``None``, NaN) prints as ``-`` in the terminal and
as an en dash in markdown, or as ``n/a`` in a column of kind ``"na"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bnnkit.metrics.schema import abstention_score, canonical_score

__all__ = [
    "SCORE_NAMES",
    "Column",
    "Label",
    "Marked",
    "Table",
    "abstention_table",
    "degradation_table",
    "fmt_value",
    "is_missing",
    "no_negative_zero",
    "ood_table",
    "render_markdown",
    "render_rich",
    "score_label",
    "score_summary_table",
    "selective_table",
]

MD_DASH = "–"
RICH_DASH = "-"
#: readable names of the posterior-predictive scores (others are shown by their plugin name)
SCORE_NAMES = {
    "max_prob": "max-probability (1 − max p)",
    "entropy": "entropy (total)",
    "mutual_info": "mutual information (epistemic)",
    "total": "entropy (total)",
    "epistemic": "mutual information (epistemic)",
}
_SHORT_SCORES = {"max_prob": "max-prob", "entropy": "entropy", "mutual_info": "MI",
                 "total": "entropy", "epistemic": "MI"}  # fmt: skip


def score_label(name: str, strong: bool = False) -> Label:
    """A score's row label: its readable name (terminal: short) or its plugin name."""
    return Label(SCORE_NAMES.get(name, name), short=_SHORT_SCORES.get(name, name), strong=strong)


def _ood_blocks(entry: Mapping[str, Any]) -> dict[str, Any]:
    """``{score: {auroc, aupr, fpr95}}`` of an OOD entry (metrics.json version 3 or 2)."""
    if "scores" in entry:
        return dict(entry["scores"])
    return {s: entry[s] for s in ("max_prob", "total", "epistemic") if s in entry}


@dataclass(frozen=True)
class Label:
    """A row label: ``unseen`` marks a generator unseen in training, ``strong`` an aggregate;
    ``short`` is the terminal's text, ``star`` whether the terminal marks an unseen one with *
    (markdown always does)."""

    text: str
    short: str | None = None
    unseen: bool = False
    strong: bool = False
    star: bool = True


@dataclass(frozen=True)
class Column:
    header: str
    get: Callable[[Any], Any]
    digits: int = 3
    kind: str = "num"  # num | pct | ratio | na (missing -> n/a)
    short: str | None = None
    left: bool = False
    only: str | None = None  # "rich" or "markdown": shown by that renderer alone
    rich: Mapping[str, Any] = field(default_factory=dict)  # extra rich add_column options


@dataclass
class Table:
    columns: list[Column]
    rows: list[Any]
    title: str | None = None
    caption: str | None = None
    sections: tuple[int, ...] = ()  # row indices a rich section line goes before
    dash: str | None = None  # what markdown prints for a missing value (default: en dash)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


@dataclass(frozen=True)
class Marked:
    """A cell value printed with a ``mark`` after it (e.g. ``*`` on a protocol's held-out
    generator); the caption says what the mark means."""

    value: Any
    mark: str = "*"


_NEGATIVE_ZERO = re.compile(r"^-(0(\.0*)?)(?=%?$)")


def no_negative_zero(text: str) -> str:
    """``"-0.000"`` / ``"-0.0%"`` / ``"-0"`` (a tiny negative number rounded to zero) without
    its sign."""
    return _NEGATIVE_ZERO.sub(r"\1", text)


def fmt_value(value: Any, digits: int = 3, kind: str = "num", markdown: bool = False) -> str:
    """A value as a table prints it: floats with ``digits`` decimals (``kind="pct"``: a
    percentage with one), a missing one as a dash (``kind="na"``: ``n/a``); a value that rounds
    to zero never prints as ``-0.0``."""
    if isinstance(value, Marked):
        mark = value.mark.replace("*", "\\*") if markdown else value.mark
        text = fmt_value(value.value, digits, kind, markdown)
        return text if is_missing(value.value) else f"{text}{mark}"
    if is_missing(value):
        return "n/a" if kind == "na" else MD_DASH if markdown else RICH_DASH
    if kind == "pct":
        return no_negative_zero(f"{100 * value:.1f}%")
    if kind == "ratio":  # (count, of): "3/4" in the terminal, "3 / 4" in markdown
        return f"{value[0]}{' / ' if markdown else '/'}{value[1]}"
    if isinstance(value, float):
        return no_negative_zero(f"{value:.{digits}f}")
    return str(value)


def _cell(value: Any, col: Column, markdown: bool) -> str:
    return fmt_value(value, col.digits, col.kind, markdown)


def _shown(table: Table, renderer: str) -> list[Column]:
    return [c for c in table.columns if c.only in (None, renderer)]


def render_markdown(table: Table) -> str:
    """A GitHub-flavoured markdown table (``|`` in cells escaped)."""

    def cell(value: Any, col: Column) -> str:
        if isinstance(value, Label):
            text = value.text
            if value.strong:
                return f"**{text}**"
            return f"{text}\\*" if value.unseen else text
        text = _cell(value, col, True)
        if table.dash is not None and text == MD_DASH:
            text = table.dash
        return text.replace("|", "\\|")

    cols = _shown(table, "markdown")
    lines = [
        "| " + " | ".join(c.header for c in cols) + " |",
        "| " + " | ".join(":--" if c.left else "--:" for c in cols) + " |",
    ]
    lines += ["| " + " | ".join(cell(c.get(r), c) for c in cols) + " |" for r in table.rows]
    return "\n".join(lines)


def render_rich(table: Table):
    """The terminal's rich table (:func:`bnnkit.report.rich_table.render_rich`): numbers always
    printed whole."""
    from bnnkit.report.rich_table import render_rich as render

    return render(table, _shown(table, "rich"), _cell, Label)


# --------------------------------------------------------------------------------------------
# The tables of an evaluation (rows from the metrics dict, metrics.json schema 2); the
# per-generator ones are in bnnkit.report.tables_generators


def _key(name: str) -> Callable[[Any], Any]:
    return lambda row: row[1][name]


def _label(row: Any) -> Any:
    return row[0]


def ood_table(m: Mapping[str, Any]) -> Table:
    entries: list[tuple[Any, Any]] = list(m["ood"].items())
    if len(entries) > 1 and m.get("ood_combined"):
        entries.append((Label("all unseen", strong=True), m["ood_combined"]))
    rows = [
        (name, score_label(s), block) for name, e in entries for s, block in _ood_blocks(e).items()
    ]
    return Table(
        [
            Column("unseen generator", lambda r: r[0], short="unseen", left=True),
            Column("score", lambda r: r[1], left=True),
            *(
                Column(h, lambda r, k=k: r[2][k])
                for h, k in (("AUROC", "auroc"), ("AUPR", "aupr"), ("FPR95", "fpr95"))
            ),
        ],  # fmt: skip
        rows,
        title="unseen fakes vs seen images (OOD detection)",
        caption="max-prob = 1 - max p; entropy = total; MI = epistemic (mutual information).",
    )


def score_summary_table(m: Mapping[str, Any]) -> Table:
    """One row per score: OOD AUROC per unseen generator and pooled, and the fraction of the
    unseen generators' errors that abstaining at its threshold catches (the abstention score
    in bold)."""
    gens = list(m["ood"])
    combined = m.get("ood_combined") or {}
    a = m["abstention"]
    names = list(_ood_blocks(combined)) if combined else list(a["by_score"])

    def auroc(entry: Mapping[str, Any] | None, s: str) -> Any:
        return (_ood_blocks(entry or {}).get(s) or {}).get("auroc")

    def caught(s: str) -> Any:
        return (abstention_score(a, s).get("unseen_combined") or {}).get("errors_caught_rate")

    chosen = canonical_score(a["score"])
    rows = [(score_label(s, strong=canonical_score(s) == chosen), s) for s in names]
    columns = [Column("score", _label, left=True)]
    columns += [Column(f"AUROC {g}", lambda r, g=g: auroc(m["ood"][g], r[1]),
                       short=g) for g in gens]  # fmt: skip
    if len(gens) > 1:
        columns.append(Column("AUROC all unseen", lambda r: auroc(combined, r[1]), short="all"))
    columns.append(Column("unseen errors caught", lambda r: caught(r[1]), kind="pct",
                          short="caught"))  # fmt: skip
    return Table(
        columns,
        rows,
        title="scores: OOD AUROC (unseen fakes vs seen images) and unseen errors caught",
        caption=f"caught: unseen generators' errors abstained on at each score's threshold "
        f"(target seen coverage {fmt_value(a['coverage_target'], kind='pct')}); bold: the "
        "score `bnnkit predict` abstains on.",
    )


def selective_table(m: Mapping[str, Any]) -> Table:
    """null = a constant score (MAP's epistemic), which ranks nothing: shown as n/a."""
    rows = [(score_label(s), e) for s, e in m["selective"].items()]
    return Table(
        [
            Column("ranked by", _label, left=True),
            Column("AURC", _key("aurc"), kind="na"),
            Column("optimal AURC", _key("aurc_optimal"), kind="na", short="optimal"),
            Column("acc@100%", _key("accuracy")),
            Column("acc@90%", _key("accuracy_at_90"), kind="na"),
            Column("acc@80%", _key("accuracy_at_80"), kind="na"),
        ],
        rows,
        title="selective prediction on seen images",
    )


def abstention_table(m: Mapping[str, Any], scores: Sequence[str] | None = None) -> Table:
    """Abstention per score (default: every score; the chosen one in bold) and image group."""
    a = m["abstention"]
    chosen = abstention_score(a)
    rows = []
    for s in scores or list(a["by_score"]):
        e = abstention_score(a, s)
        groups: list[tuple[Label, Any]] = [(Label("seen generators", short="seen"), e["seen"])]
        groups += [(Label(n, unseen=True, star=False), v) for n, v in e["unseen"].items()]
        if len(e["unseen"]) > 1 and e.get("unseen_combined"):
            groups.append((Label("all unseen"), e["unseen_combined"]))
        strong = canonical_score(s) == canonical_score(a["score"])
        rows += [(Label(s, strong=strong), label, v) for label, v in groups]
    cal = a.get("calibration", {})
    return Table(
        [
            Column("score", lambda r: r[0], left=True, only="markdown"),
            Column("images", lambda r: r[1], left=True),
            Column("n", lambda r: r[2]["n"]),
            Column("coverage", lambda r: r[2]["coverage"], kind="pct"),
            Column("acc (all)", lambda r: r[2]["accuracy_all"], short="acc all"),
            Column("acc (kept)", lambda r: r[2]["accuracy_kept"], short="acc kept"),
            Column(
                "errors caught", lambda r: (r[2]["errors_caught"], r[2]["errors"]), kind="ratio"
            ),
            Column("caught", lambda r: r[2]["errors_caught_rate"], kind="pct", only="markdown"),
        ],
        rows,
        title=f"abstention: score {a['score']} > {fmt_value(chosen['threshold'], 4)} -> "
        f"uncertain (target coverage {fmt_value(a['coverage_target'], kind='pct')})",
        caption=f"calibrated on {_calibration_images(cal)}, cross-fit coverage "
        f"{fmt_value(chosen.get('coverage_crossfit'), kind='pct')}, saved in {cal.get('file')}"
        + _guarantee(a.get("guarantee")),
    )


def _guarantee(g: Mapping[str, Any] | None) -> str:
    """The split-conformal bound of ``--guarantee``, in words (empty without one)."""
    if not g:
        return ""
    how = f"rank {g['rank']} of {g['n_calibration']} calibration images"
    if not g.get("finite"):
        how = f"too few calibration images ({g['n_calibration']}): every image is kept"
    return f"\nguarantee: a new seen image is kept with probability >= {g['level']:g} ({how})"


def _calibration_images(cal: Mapping[str, Any]) -> str:
    """What the abstention thresholds were set on, in words (metrics.json's calibration)."""
    if cal.get("split") != "calibration":  # a run without a calibration split: in-sample
        return f"{cal.get('n')} seen val images (in-sample: the run has no calibration split)"
    text, halves = f"{cal.get('n')} calibration images", cal.get("seen_fitted_scores")
    if halves:
        text += f" (fused: fitted on {halves['fit_n']}, thresholded on {halves['threshold_n']})"
    return text


def degradation_table(m: Mapping[str, Any]) -> Table:
    """Clean and each degradation: per-generator accuracy (markdown), pooled accuracies, seen
    AUROC / ECE, mean epistemic (terminal) and the clean threshold's seen coverage (markdown);
    with an attack (``fgsm``/``pgd``), its success rate and the share abstention catches."""
    conditions = {"clean": m, **(m.get("degradations") or {})}
    attacked = any("attack" in c for c in conditions.values())

    def coverage(c: Mapping[str, Any]) -> Any:
        return abstention_score(c["abstention"])["seen"]["coverage"]

    gens = [
        Column(f"{g}\\*" if not e.get("seen", True) else g,
               lambda r, g=g: r[1]["per_generator"][g]["accuracy"], only="markdown")
        for g, e in m["per_generator"].items()
    ]  # fmt: skip
    return Table(
        [
            Column("condition", lambda r: r[0], left=True),
            *gens,
            Column("avg acc", lambda r: r[1]["average_accuracy"]["all"]),
            Column("seen acc", lambda r: r[1]["seen"]["accuracy"], only="rich"),
            Column("unseen acc", lambda r: (r[1].get("unseen") or {}).get("accuracy"), only="rich"),
            Column("seen AUROC", lambda r: r[1]["seen"]["auroc"]),
            Column("seen ECE", lambda r: r[1]["seen"]["ece"]),
            Column(
                "epist.", lambda r: r[1]["seen"]["epistemic_uncertainty"], digits=4, only="rich"
            ),
            Column("seen coverage", lambda r: coverage(r[1]), kind="pct", only="markdown"),
            *([Column("attack success", lambda r: (r[1].get("attack") or {}).get("success_rate"),
                      kind="pct"),
               Column("caught", lambda r: (r[1].get("attack") or {}).get("caught_rate"),
                      kind="pct")] if attacked else []),
        ],  # fmt: skip
        list(conditions.items()),
        title="degradations",
        caption="epist.: mean epistemic uncertainty of seen images."
        + (" attack success: share of clean-correct images whose verdict the attack flips; "
           "caught: share of those above the clean abstention threshold." if attacked else ""),
    )  # fmt: skip
