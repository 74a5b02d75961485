"""The tables and heatmap of ``bnnkit protocol``: one row per cell (a run), one column per test
generator in GenImage's column order, then the average, the unseen generators' average, the OOD
AUROC of the chosen score on the unseen generators' fakes and the fraction of the unseen
generators' errors that the abstention threshold catches; R.Acc and F.Acc (the mean accuracy on
the reals and on the fakes of the test generators) follow the average.

Rows are plain dicts (what ``protocol.json`` holds under ``table``); accuracies are in [0, 1]
in ``table.csv`` and ``protocol.json``, in percent in the terminal, ``table.md`` and
``table.tex`` (as the paper prints them). For the ``sdv4`` protocol the published ResNet-50 and
Swin-T rows of GenImage Table 3 come first, marked ``published`` in the ``source`` column.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnnkit.metrics.schema import abstention_score, ood_score
from bnnkit.report.tables import (
    Column,
    Label,
    Marked,
    Table,
    fmt_value,
    is_missing,
    no_negative_zero,
    render_markdown,
)
from bnnkit.run.fileio import atomic_write_text

__all__ = [
    "PAPER_LABELS",
    "PAPER_ORDER",
    "PUBLISHED_SDV4",
    "protocol_heatmap_figure",
    "protocol_rows",
    "protocol_table",
    "render_csv",
    "render_latex",
    "write_protocol_tables",
]

#: GenImage's column order (Table 3) and the paper's names for the short generator names.
PAPER_LABELS: dict[str, str] = {
    "midjourney": "MJ",
    "sdv4": "SD1.4",
    "sdv5": "SD1.5",
    "adm": "ADM",
    "glide": "GLIDE",
    "wukong": "Wukong",
    "vqdm": "VQDM",
    "biggan": "BigGAN",
}
PAPER_ORDER: tuple[str, ...] = tuple(PAPER_LABELS)
#: Published accuracy (%) of GenImage Table 3 (Zhu et al., NeurIPS 2023), trained on SD1.4.
PUBLISHED_SDV4: dict[str, dict[str, float]] = {
    "ResNet-50": dict(
        zip(PAPER_ORDER, (54.9, 99.9, 99.7, 53.5, 61.9, 98.2, 56.6, 52.0), strict=True)
    ),
    "Swin-T": dict(zip(PAPER_ORDER, (62.1, 99.9, 99.8, 49.8, 67.6, 99.1, 62.3, 57.6), strict=True)),
}
PUBLISHED_SOURCE = "GenImage Table 3 (Zhu et al., 2023)"
CSV_FIXED = ("block", "row", "method", "source", "train", "unseen")
CSV_TAIL = (
    "average",
    "unseen_average",
    "ood_auroc",
    "errors_caught",
    "real_average",
    "fake_average",
)
#: the mark of a ``loo`` row's held-out generator in the tables (and its legend)
HELD_OUT_MARK = "*"
HELD_OUT_LEGEND = "*: the generator the row held out of training (its unseen one)."


def _mean(values: Sequence[Any]) -> float | None:
    vals = [v for v in values if not is_missing(v)]
    return sum(vals) / len(vals) if vals else None


def _row_labels(protocol: str, cell: Any) -> tuple[str, str]:
    """(label, the terminal's shorter label) of a cell's row."""
    if protocol == "cross":
        name = cell.train[0]
        return f"train {name}", f"train {PAPER_LABELS.get(name, name)}"
    if protocol == "loo":
        name = cell.unseen[0]
        return f"without {name}", f"w/o {PAPER_LABELS.get(name, name)}"
    return f"train {'+'.join(cell.train)}", cell.block


def protocol_rows(
    protocol: str,
    cells: Sequence[Any],
    metrics: Sequence[Mapping[str, Any]],
    generators: Sequence[str],
    *,
    score: str,
    abstain_on: str,
) -> list[dict[str, Any]]:
    """The table's rows from each cell (``block``, ``train``, ``unseen``) and its metrics.json;
    the published rows first for ``sdv4``."""
    rows: list[dict[str, Any]] = []
    published = set(PAPER_ORDER) >= set(generators)  # GenImage's generators (not another layout's)
    if protocol == "sdv4" and published:
        for name, values in PUBLISHED_SDV4.items():
            acc = {g: round(values[g] / 100, 4) for g in generators}
            unseen = [g for g in generators if g != "sdv4"]
            rows.append({
                "block": PUBLISHED_SOURCE, "row": f"{name} (published)", "short": f"{name}†",
                "method": "-",
                "source": "published", "train": ["sdv4"], "unseen": unseen, "accuracy": acc,
                "average": _mean(list(acc.values())),
                "unseen_average": _mean([acc[g] for g in unseen]),
                "ood_auroc": None, "errors_caught": None, "real_average": None,
                "fake_average": None,
            })  # fmt: skip
    for cell, m in zip(cells, metrics, strict=True):
        per = m["per_generator"]
        acc = {g: per[g]["accuracy"] if g in per else None for g in generators}
        combined = ood_score(m.get("ood_combined"), score)  # metrics.json v3 or v2
        caught = abstention_score(m["abstention"], abstain_on).get("unseen_combined") or {}
        label, short = _row_labels(protocol, cell)
        rows.append({
            "block": cell.block, "row": label, "short": short, "method": m["method"],
            "source": "measured", "train": list(cell.train), "unseen": list(cell.unseen),
            "accuracy": acc, "average": _mean(list(acc.values())),
            "unseen_average": _mean([acc[g] for g in cell.unseen]),
            "ood_auroc": combined.get("auroc"), "errors_caught": caught.get("errors_caught_rate"),
            "real_average": _mean([(per.get(g) or {}).get("real_accuracy") for g in generators]),
            "fake_average": _mean([(per.get(g) or {}).get("fake_accuracy") for g in generators]),
        })  # fmt: skip
    return rows


def _num(value: Any) -> float:
    return math.nan if is_missing(value) else float(value)


def _pct(key: str, sub: str | None = None, mark_unseen: bool = False):
    """A percentage getter; ``mark_unseen``: the value of a row's unseen generator ``sub`` is
    :class:`~bnnkit.report.tables.Marked` (a ``loo`` row's held-out cell)."""

    def get(row: Mapping[str, Any]) -> Any:
        value = row[key][sub] if sub is not None else row.get(key)
        value = None if is_missing(value) else 100 * value
        if mark_unseen and sub in row["unseen"] and row["source"] != "published":
            return Marked(value, HELD_OUT_MARK)
        return value

    return get


def marks_held_out(protocol: str) -> bool:
    """Whether a protocol's tables mark each row's held-out generator (``loo``: one per row)."""
    return protocol == "loo"


def protocol_table(
    rows: Sequence[Mapping[str, Any]],
    generators: Sequence[str],
    *,
    protocol: str,
    score: str,
    abstain_on: str,
    title: str | None = None,
) -> Table:
    """The protocol's table (percent) for :func:`~bnnkit.report.tables.render_rich` and
    :func:`~bnnkit.report.tables.render_markdown`; published rows labelled as such. The
    terminal shows short row labels and never truncates a number. ``loo``: each row's held-out
    generator is marked ``*`` (legend in the caption)."""

    def num(header: str, get: Any, short: str | None = None) -> Column:
        return Column(header, get, digits=1, short=short)

    mark = marks_held_out(protocol)

    def label(r: Mapping[str, Any]) -> Label:
        return Label(r["row"], short=r.get("short"), strong=r["source"] == "published")

    cols = [
        Column("recipe", lambda r: r["block"], left=True, only="markdown"),
        Column(
            "cell",
            label,
            left=True,
            rich={"overflow": "ellipsis", "max_width": 28},
        ),  # fmt: skip
        *[num(PAPER_LABELS.get(g, g), _pct("accuracy", g, mark)) for g in generators],
        num("avg", _pct("average")),
        num("R.Acc", _pct("real_average")),
        num("F.Acc", _pct("fake_average")),
        num("unseen avg", _pct("unseen_average"), "unseen"),
        num(f"OOD AUROC ({score})", _pct("ood_auroc"), "AUROC"),
        num(f"errors caught ({abstain_on})", _pct("errors_caught"), "caught"),
    ]
    sections = tuple(i for i in range(1, len(rows)) if rows[i]["block"] != rows[i - 1]["block"])
    caption = (
        f"Accuracy (%) per test generator; R.Acc / F.Acc: mean accuracy on the reals / the "
        f"fakes of the test generators; OOD AUROC: {score} score, unseen generators' fakes "
        f"against seen images; errors caught: unseen generators' misclassified images the "
        f"threshold on the {abstain_on} score abstains on."
    )
    if mark:
        caption += f" {HELD_OUT_LEGEND}"
    if any(r["source"] == "published" for r in rows):
        caption += f" Published rows (†): {PUBLISHED_SOURCE}, not run here."
    title = title or f"bnnkit protocol {protocol}"
    return Table(cols, list(rows), title=title, caption=caption, sections=sections)


def render_csv(rows: Sequence[Mapping[str, Any]], generators: Sequence[str]) -> str:
    """One line per row: one column per generator (short name), values in [0, 1]."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_FIXED, *generators, *CSV_TAIL])

    def num(v: Any) -> str:
        if is_missing(v):
            return ""
        return no_negative_zero(f"{float(v):.6g}")  # no float noise (0.720875, not ...9)

    for r in rows:
        fixed = [r["block"], r["row"], r["method"], r["source"], ";".join(r["train"]),
                 ";".join(r["unseen"])]  # fmt: skip
        accuracy = [num(r["accuracy"][g]) for g in generators]
        writer.writerow([*fixed, *accuracy, *(num(r.get(k)) for k in CSV_TAIL)])
    return buf.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                 ("#", r"\#")):  # fmt: skip
        text = text.replace(a, b)
    return text


def render_latex(table: Table) -> str:
    """A booktabs ``tabular`` (``\\usepackage{booktabs}``); published rows in italics."""
    cols = [c for c in table.columns if c.only in (None, "markdown")]
    spec = "".join("l" if c.left else "r" for c in cols)
    lines = [f"% {_tex(table.caption or '')}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(_tex(c.header) for c in cols) + r" \\")
    lines.append("\\midrule")
    for i, row in enumerate(table.rows):
        if i in table.sections:
            lines.append("\\midrule")
        cells = []
        for c in cols:
            v = c.get(row)
            if isinstance(v, Label):
                text = _tex(v.text)
            elif is_missing(v.value if isinstance(v, Marked) else v):
                text = "--"
            else:
                text = _tex(fmt_value(v, c.digits, c.kind))
            cells.append(f"\\textit{{{text}}}" if row["source"] == "published" else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def protocol_heatmap_figure(
    rows: Sequence[Mapping[str, Any]],
    generators: Sequence[str],
    title: str,
    *,
    held_out: bool = False,
):
    """Accuracy per row (cell) and test generator, one panel per block of rows; ``held_out``
    (``loo``): each row's unseen generator is boxed (the legend says so)."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from bnnkit.report.plots import WIDTH, _style

    blocks: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        blocks.setdefault(r["block"], []).append(r)
    heights = [len(b) for b in blocks.values()]
    with _style():
        fig = Figure(figsize=(WIDTH, 1.2 + 0.32 * sum(heights) + 0.5 * len(blocks)),
                     layout="constrained")  # fmt: skip
        axes = fig.subplots(len(blocks), 1, squeeze=False, height_ratios=heights)[:, 0]
        shown = None
        for ax, (block, block_rows) in zip(axes, blocks.items(), strict=True):
            data = np.array([[_num(r["accuracy"][g]) for g in generators] for r in block_rows])
            shown = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            ax.grid(False)
            for (i, j), v in np.ndenumerate(data):
                if math.isfinite(v):
                    ax.text(j, i, no_negative_zero(f"{100 * v:.0f}"), ha="center", va="center",
                            fontsize=6, color="black" if v > 0.6 else "white")  # fmt: skip
            ax.set_xticks(range(len(generators)), [PAPER_LABELS.get(g, g) for g in generators])
            ax.set_yticks(range(len(block_rows)), [r["row"] for r in block_rows])
            ax.set(title=block, xlabel="test generator", ylabel="cell")
            if not held_out:
                continue
            for i, r in enumerate(block_rows):
                for g in r["unseen"] if r["source"] != "published" else ():
                    box = Rectangle(
                        (generators.index(g) - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        edgecolor="red",
                        linewidth=1.5,
                        label="held out",
                    )
                    ax.add_patch(box)  # fmt: skip
        fig.colorbar(shown, ax=list(axes), label="accuracy")
        legend = "\n(red box: the generator each row held out of training)" if held_out else ""
        fig.suptitle(title + legend)
    return fig


def write_protocol_tables(
    out: Path,
    protocol: str,
    rows: Sequence[Mapping[str, Any]],
    generators: Sequence[str],
    *,
    score: str,
    abstain_on: str,
) -> dict[str, Path]:
    """``table.md``, ``table.tex``, ``table.csv`` and ``heatmap.png`` in ``out``."""
    from bnnkit.report.plots import save_figure

    out = Path(out)
    table = protocol_table(rows, generators, protocol=protocol, score=score, abstain_on=abstain_on)
    files = {"md": out / "table.md", "tex": out / "table.tex", "csv": out / "table.csv"}
    md = f"# {table.title}\n\n{render_markdown(table)}\n\n{table.caption}\n"
    atomic_write_text(files["md"], md)
    atomic_write_text(files["tex"], render_latex(table))
    atomic_write_text(files["csv"], render_csv(rows, generators))
    title = f"bnnkit protocol {protocol}: accuracy per test generator"
    files["heatmap"] = save_figure(
        protocol_heatmap_figure(rows, generators, title, held_out=marks_held_out(protocol)),
        out / "heatmap.png",
    )
    return files
