"""Rendering ``bnnkit predict``'s rows: JSON, CSV or a rich table (to stdout or a file)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click

from bnnkit.cli._common import console, fmt, print_table


def emit(result: Any, fmt_: str, output: Path | None, run_dir: Path, explain: bool) -> None:
    """Write ``result`` (a :class:`bnnkit.engine.predict.run.PredictResult`) as ``fmt_``."""
    from bnnkit.engine.predict.run import row_fields

    rows, k, rule, tiling = result.rows, result.samples, result.rule, result.tiling
    t = result.temperature
    text: str | None = None
    if fmt_ == "json":
        record = {"run": str(run_dir), "samples": k, "temperature": t, "abstention": rule,
                  "p_threshold": result.p_threshold}  # fmt: skip
        if tiling is not None:
            record["tiles"] = tiling.to_dict()
        text = json.dumps({**record, "predictions": rows}, indent=2) + "\n"
    elif fmt_ == "csv":
        buf = io.StringIO()
        fields = row_fields(
            tiling is not None, explain, scored=rule is not None,
            attribution=result.generators is not None,
        ) + ["temperature"]  # fmt: skip
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()  # the temperature applied (empty: none), on every row
        writer.writerows({**r, "temperature": "" if t is None else t} for r in rows)
        text = buf.getvalue()
    if text is not None:
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text, nl=False)
        return
    _table(rows, output, run_dir, k, rule, tiling is not None, explain, t, result.generators)


def _table(
    rows, output: Path | None, run_dir: Path, k: int, rule, tiled: bool, explain: bool,
    temperature: float | None = None, generators: list[str] | None = None,
):  # fmt: skip
    from rich.table import Table

    caption = None
    if rule is not None:
        caption = f"uncertain: score {rule['score']} > {rule['threshold']:.4g}"
        if rule.get("coverage_target"):
            caption += f" (calibrated for {100 * rule['coverage_target']:.0f}% coverage)"
    table = Table(
        title=f"predictions of {run_dir.name} (K={k}{', tiled' if tiled else ''}, "
        + ("no temperature)" if temperature is None else f"temperature T={temperature:.4g})"),
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    table.add_column("file", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    columns = ["p(fake)", "total", "aleatoric", "epistemic"]
    columns += [rule["score"]] if rule is not None else []
    columns += ["tiles", "max tile", "tile sd"] if tiled else []
    for c in columns:
        table.add_column(c, justify="right", no_wrap=True)
    if generators is not None:  # data.labels = "generator"
        table.add_column("generator", no_wrap=True)
        table.add_column("known", no_wrap=True)
    styles = {"fake": "red", "real": "green", "uncertain": "yellow"}
    for r in rows:
        if r["p_fake"] is None:
            blank = len(columns) - 1 + 2 * (generators is not None)
            table.add_row(r["path"], "[red]error[/]", r["error"], *[""] * blank)
            continue
        verdict = f"[{styles[r['verdict']]}]{r['verdict']}[/]"
        if r["error"]:
            verdict += f" [red]({r['error']})[/]"
        cells = [fmt(r["p_fake"]), fmt(r["total"]), fmt(r["aleatoric"]), fmt(r["epistemic"], 4)]
        if rule is not None:
            cells.append(fmt(r["score_value"], 4))
        if tiled:
            cells += [str(r["tiles"]), fmt(r["tile_p_fake_max"]), fmt(r["tile_p_fake_sd"])]
        if generators is not None:
            known = {True: "yes", False: "[yellow]no[/]", None: "-"}[r["known"]]
            cells += [r["generator"] or "-", known]
        table.add_row(r["path"], verdict, *cells)
    out = console()
    if output is not None:
        from rich.console import Console

        with open(output, "w", encoding="utf-8") as fh:
            Console(file=fh, width=120, highlight=False).print(table)
        out.print(f"wrote {output}")
    else:
        print_table(out, table)
    if explain:
        written = [r["explain"] for r in rows if r.get("explain")]
        if written:
            out.print(f"explain: {len(written)} PNG(s) in {Path(written[0]).parent}")
