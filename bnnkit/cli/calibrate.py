"""``bnnkit calibrate``: post-hoc temperature scaling of a run's posterior predictive."""

from __future__ import annotations

from pathlib import Path

import click

from bnnkit.cli._common import console, device_option, fmt, path_option, print_json
from bnnkit.run.dirs import DEFAULT_RUNS_ROOT


@click.command("calibrate")
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option(
    "--samples",
    type=click.IntRange(min=1),
    default=None,
    help="Posterior samples K per image (default: the recipe's eval.samples).",
)
@click.option("--data-root", default=None, help="Fit on data at this root instead of the recipe's.")
@path_option(
    "--runs-dir", DEFAULT_RUNS_ROOT, "Where to look for the latest run when RUN is not given."
)
@click.option("--json", "as_json", is_flag=True, help="Print temperature.json to stdout.")
@click.option("--reset", is_flag=True, help="Remove RUN/temperature.json (no temperature).")
@device_option
def command(
    run: Path | None,
    samples: int | None,
    data_root: str | None,
    runs_dir: Path,
    as_json: bool,
    reset: bool,
    device: str,
) -> None:
    """Fit one temperature T for a trained RUN (default: the latest under ./runs).

    T minimises the NLL of the posterior predictive on the run's calibration images (carved
    out of the training folders by data.calibration, never trained on; a run without them:
    the seen generators' validation images, with a warning), each of the K posterior samples
    tempered as softmax(log p_k / T) before their mean. Writes RUN/temperature.json (T, NLL
    and ECE before/after on the fit set, K, the weights' sha256); `bnnkit evaluate` and
    `bnnkit predict` then apply T to every posterior sample (a file fitted for other weights
    is ignored with a warning). A T at the search's lower bound (a perfectly separated fit
    set) is refused (exit code 2, nothing written). Re-run `bnnkit evaluate` afterwards: it
    recalibrates the abstention threshold on the tempered predictive. --reset removes the
    temperature.

    \b
    Examples:
      bnnkit calibrate runs/quickstart-20261121-101500
      bnnkit calibrate --samples 32 && bnnkit evaluate --ood midjourney
      bnnkit calibrate runs/quickstart-20261121-101500 --reset
    """
    from bnnkit.api import Run
    from bnnkit.engine.device import select_device

    the_run = Run.load(run, runs_dir)
    if reset:
        from bnnkit.engine.posthoc.calibrate import reset_temperature

        removed = reset_temperature(the_run.path)
        console().print(
            f"removed {removed}" if removed else f"{the_run.path} has no temperature; nothing to do"
        )
        console().print(f"next:   bnnkit evaluate {the_run.path}")
        return
    dev, note = select_device(device)
    if not as_json:
        console().print(f"calibrating {the_run.path} on {note}")
    record = the_run.calibrate(samples=samples, device=dev, data_root=data_root)
    if as_json:
        print_json(record)
        return
    fit, on = record["fit"], record["fitted_on"]
    console().print(
        f"temperature [bold]{fmt(record['temperature'], 4)}[/] (K={record['samples']}, "
        f"{on['n']} {on['split']} images of {', '.join(on['generators'])})\n"
        f"  NLL {fmt(fit['nll_before'], 4)} -> {fmt(fit['nll_after'], 4)}, "
        f"ECE {fmt(fit['ece_before'], 4)} -> {fmt(fit['ece_after'], 4)}"
    )
    if record.get("at_bound"):
        console().print(
            f"[yellow]warning:[/] T is at the upper search bound {record['bounds'][1]}: the NLL "
            "still falls as T grows (the head is near chance level on the fit set), so its "
            "predictions are flattened towards p = 0.5"
        )
    if on["split"] != "calibration":
        from bnnkit.data.splits import in_sample_warning

        console().print(f"[yellow]warning:[/] {in_sample_warning('the temperature is')}")
    console().print(f"wrote {the_run.layout.temperature}\nnext:   bnnkit evaluate {the_run.path}")
