"""Readable tables: every number printed whole at any terminal width and in a pipe, each loo
row's held-out generator marked in the table and the heatmap, and no negative zero in tables,
CSV or JSON."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from bnnkit.cli import main
from bnnkit.metrics.protocol import clean_json
from bnnkit.report.protocol import (
    PAPER_ORDER,
    protocol_heatmap_figure,
    protocol_table,
    render_csv,
    render_latex,
)
from bnnkit.report.tables import fmt_value, render_markdown, render_rich

GENS = list(PAPER_ORDER)


def _loo_rows() -> list[dict]:
    """A loo block whose MJ and ADM accuracies are 100 % (the row that printed ``100…``)."""
    rows = []
    for g in GENS:
        acc = {h: 1.0 if h in ("midjourney", "adm") else 0.875 for h in GENS}
        rows.append({
            "block": "quickstart", "row": f"without {g}", "short": f"w/o {g}", "method": "map",
            "source": "measured", "train": [h for h in GENS if h != g], "unseen": [g],
            "accuracy": acc, "average": 0.9375, "unseen_average": acc[g], "ood_auroc": 1.0,
            "errors_caught": -0.0,
        })  # fmt: skip
    return rows


def _table(protocol: str = "loo"):
    return protocol_table(
        _loo_rows(), GENS, protocol=protocol, score="mutual_info", abstain_on="entropy"
    )


def _rendered(width: int) -> str:
    """As the commands' console prints it (soft wrap: a line wider than the terminal wraps)."""
    buf = io.StringIO()
    Console(file=buf, width=width, highlight=False, soft_wrap=True).print(render_rich(_table()))
    return buf.getvalue()


@pytest.mark.parametrize("width", [40, 60, 200])
def test_rich_table_prints_every_number_whole_at_any_width(width) -> None:
    text = _rendered(width)
    assert "…" not in text
    # 8 rows x (MJ, ADM, AUROC), + the unseen average of the rows without MJ and ADM
    assert text.count("100.0") == 8 * 3 + 2
    assert text.count("87.5") == 8 * 6 + 6


def test_protocol_command_output_in_a_pipe_keeps_numbers_whole(monkeypatch, tmp_path) -> None:
    """``bnnkit protocol loo`` printed into a pipe (CliRunner: no tty, 80 columns); the
    protocol itself is stubbed. Before, ``100.0`` came out as ``100…`` in MJ and ADM."""
    import bnnkit.api
    from bnnkit.engine.protocol.run import ProtocolResult

    record = {"generators": GENS, "score": "mutual_info", "abstain_on": "entropy", "seconds": 1.0}
    result = ProtocolResult(tmp_path, record, _loo_rows(), {})
    monkeypatch.setattr(bnnkit.api, "run_protocol", lambda *a, **k: result)
    out = CliRunner().invoke(
        main, ["protocol", "loo", "--recipe", "quickstart", "--out", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    assert "…" not in out.output and out.output.count("100.0") == 26
    assert "100.0*" in out.output  # the held-out cell of the row without MJ


def test_loo_table_marks_each_rows_held_out_cell() -> None:
    table = _table()
    md = render_markdown(table)
    lines = [line for line in md.splitlines() if "without" in line]
    for g, line in zip(GENS, lines, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        values = cells[2 : 2 + len(GENS)]  # after the recipe and cell columns
        marked = [GENS[i] for i, v in enumerate(values) if v.endswith("\\*")]
        assert marked == [g], line
    assert "*: the generator the row held out of training" in table.caption
    rich = _rendered(200)
    assert "100.0*" in rich and "87.5*" in rich and rich.count("*") == 8 + 1  # + the legend
    assert "100.0*" in render_latex(table)
    # cross and sdv4 rows hold out several generators: nothing is marked
    assert "\\*" not in render_markdown(_table("cross"))


def test_loo_heatmap_boxes_each_rows_held_out_cell() -> None:
    from matplotlib.patches import Rectangle

    fig = protocol_heatmap_figure(_loo_rows(), GENS, "loo", held_out=True)
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    corners = sorted((round(b.get_x() + 0.5), round(b.get_y() + 0.5)) for b in boxes)
    assert corners == [(i, i) for i in range(len(GENS))]  # row i held out generator i
    assert "held out" in fig.get_suptitle()
    plain = protocol_heatmap_figure(_loo_rows(), GENS, "cross")
    assert not [p for p in plain.axes[0].patches if isinstance(p, Rectangle)]


def test_negative_zero_is_printed_and_stored_as_zero() -> None:
    assert fmt_value(-0.0) == "0.000"
    assert fmt_value(-0.0, 1) == "0.0"
    assert fmt_value(-0.0004) == "0.000"  # rounds to zero: no sign
    assert fmt_value(-0.0, kind="pct") == "0.0%"
    assert fmt_value(-0.5) == "-0.500" and fmt_value(-10.0, 1) == "-10.0"
    assert "-0.0" not in render_markdown(_table())  # errors caught -0.0 -> 0.0
    assert "-0" not in render_csv(_loo_rows(), GENS)
    cleaned = clean_json({"a": -0.0, "b": [-0.0, 1.5], "c": float("nan")})
    assert json.dumps(cleaned) == '{"a": 0.0, "b": [0.0, 1.5], "c": null}'


def test_protocol_help_offers_force() -> None:
    result = CliRunner().invoke(main, ["protocol", "--help"])
    assert result.exit_code == 0 and "--force" in result.output
