"""``bnnkit evaluate``: GenImage's protocol, calibration, unseen generators, abstention, plots."""

from __future__ import annotations

from pathlib import Path

import click

import bnnkit.cli._evaluate_options as opts
from bnnkit.cli._common import (
    abstain_on_option,
    console,
    device_option,
    overrides_option,
    path_option,
)
from bnnkit.cli._evaluate_output import print_metrics
from bnnkit.cli._tiles import tile_options
from bnnkit.run.dirs import DEFAULT_RUNS_ROOT


@click.command("evaluate")
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option(
    "--ood",
    "ood",
    multiple=True,
    metavar="GENERATOR",
    help="Evaluate GENERATOR as an unseen one (repeatable). Default: the recipe's "
    "data.holdout. A generator seen in training is refused.",
)
@click.option(
    "--degrade",
    "degrade",
    multiple=True,
    metavar="SPECS",
    help="Also evaluate under degradations, comma-separated and/or repeated: jpeg:QUALITY, "
    "blur:SIGMA, resize:SHORT_SIDE, noise:SIGMA (0-1 scale), webp:QUALITY, grayscale, "
    "chain:Q1,SCALE,Q2 (JPEG, downscale, JPEG), jpegblur:QUALITY,SIGMA; A/B lists "
    "alternatives (a grid: jpegblur:30/50,1/2); KIND@1-5 severity levels of jpeg, webp, blur, "
    "noise, resize; 'genimage' = the paper's six (jpeg:65,jpeg:30,blur:3,blur:5,resize:112,"
    "resize:64); 'laundering' = the five sweeps, chain:95,0.75,80, grayscale and "
    "jpegblur:50,2 (plots/severity.png); fgsm:EPS, pgd:EPS,STEPS: white-box attacks on the "
    "predictive mean (L-inf EPS on the 0-1 pixel scale, e.g. fgsm:0.0314 for 8/255), reporting "
    "attack success and the share abstention catches.",
)
@click.option(
    "--samples",
    "-k",
    type=click.IntRange(min=1),
    default=None,
    help="Posterior samples K (default: the recipe's eval.samples).",
)
@click.option(
    "--coverage",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=None,
    help="Target coverage of the abstention threshold on seen-generator validation images "
    "(default: the recipe's eval.coverage, 0.95).",
)
@click.option(
    "--score",
    "scores",
    multiple=True,
    metavar="NAME",
    help="Score to report OOD detection, selective prediction and abstention for "
    "(repeatable; `bnnkit plugins --kind score` lists them). Given, they replace the default "
    "set: max_prob, entropy, mutual_info, energy, mahalanobis, rel_mahalanobis, knn, fused. "
    "Options: --set "
    "score.NAME.KEY=VALUE.",
)
@abstain_on_option(
    "Score the abstention threshold is calibrated on, saved for `bnnkit predict` (any "
    "score; added to --score; total = entropy, epistemic = mutual_info)."
)
@opts.fit_limit_option
@opts.guarantee_option
@opts.false_alarm_option
@overrides_option(
    "KEY=VALUE",
    "Evaluation-time option of the run's inference method (inference.KEY=VALUE) or of a score "
    "(score.NAME.KEY=VALUE), VALUE parsed as TOML (repeatable), e.g. "
    "inference.prior_precision=10 for kflaplace, score.knn.k=10. Recorded in metrics.json and "
    "threshold.json; predict uses the options the threshold was calibrated with.",
)
@click.option("--no-plots", is_flag=True, help="Skip RUN/plots/*.png (report.md keeps tables).")
@click.option(
    "--debias",
    multiple=True,
    type=click.Choice(["jpeg96", "size_matched", "none"]),
    help="Evaluate under these data.debias controls whatever the run was trained with "
    "(repeatable; 'none' = raw data). Default: the run's own. Recorded in metrics.json.",
)
@opts.data_option
@path_option(
    "--runs-dir", DEFAULT_RUNS_ROOT, "Where to look for the latest run when RUN is not given."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print metrics.json to stdout instead of tables."
)
@tile_options
@device_option
def command(
    run: Path | None,
    ood: tuple[str, ...],
    degrade: tuple[str, ...],
    samples: int | None,
    coverage: float | None,
    guarantee: float | None,
    max_false_alarm: float | None,
    scores: tuple[str, ...],
    abstain_on: str,
    fit_limit: int,
    overrides: tuple[str, ...],
    no_plots: bool,
    debias: tuple[str, ...],
    data_root: str | None,
    data: tuple[str, ...],
    runs_dir: Path,
    as_json: bool,
    tiling: dict | None,
    device: str,
) -> None:
    """Evaluate a trained RUN (default: the latest under ./runs) on the validation split.

    Per generator: accuracy, balanced accuracy, AUROC, AP, TPR at 1%/5% FPR, NLL, Brier, ECE
    and adaptive ECE, and the mean total / aleatoric / epistemic uncertainty. For every unseen
    generator and every score (--score): how well it separates the generator's fakes from
    seen-generator images (AUROC, AUPR, FPR95). Selective prediction (AURC, accuracy at
    90%/80% coverage) on seen images. An abstention threshold is calibrated per score on the
    run's calibration split (training-folder images it never trained on; nothing reported is
    fitted on) for the target coverage (--guarantee: with a split-conformal bound), the
    --abstain-on one saved for `bnnkit predict`, with how many unseen errors each catches.
    Fitted scores are fitted on the run's training images and saved in RUN/scores/.

    Writes RUN/metrics.json (schema_version 3, see docs/metrics-schema.md), threshold.json,
    predictions.csv, timing.json, scores/, plots/*.png and report.md.

    \b
    Examples:
      bnnkit evaluate --ood midjourney
      bnnkit evaluate runs/quickstart-20261121-101500 --ood midjourney --ood glide \\
          --degrade jpeg:65,blur:3 --samples 32
      bnnkit evaluate RUN --degrade genimage --coverage 0.9
      bnnkit evaluate RUN --degrade laundering
      bnnkit evaluate RUN --set inference.prior_precision=10
      bnnkit evaluate RUN --data genimage=/data/GenImage --data chameleon=/data/Chameleon:binary
      bnnkit evaluate RUN --ood midjourney --score mahalanobis --score knn --abstain-on knn
    """
    from bnnkit.api import Run
    from bnnkit.data.degrade import parse_degradations
    from bnnkit.engine.device import select_device
    from bnnkit.engine.evaluate.options import score_overrides

    degradations = parse_degradations(degrade)
    score_options, overrides = score_overrides(list(overrides))
    the_run = Run.load(run, runs_dir)
    run_dir = the_run.path
    dev, note = select_device(device)
    if not as_json:
        console().print(f"evaluating {run_dir} on {note}")
    if data:  # several benchmarks, one pass (bnnkit.engine.evaluate.benchmarks)
        refused = {"--ood": ood, "--degrade": degradations, "--tiles": tiling,
                   "--guarantee": guarantee, "--max-false-alarm": max_false_alarm}  # fmt: skip
        return opts.evaluate_benchmarks(
            run_dir, data, as_json=as_json, refused=refused, samples=samples, device=dev,
            data_root=data_root, coverage=coverage, abstain_on=abstain_on, fit_limit=fit_limit,
            scores=list(scores) or None, score_options=score_options or None,
            plots=not no_plots, overrides=list(overrides), debias=list(debias) or None,
        )  # fmt: skip
    metrics = the_run.evaluate(
        list(ood) or None,
        samples=samples,
        device=dev,
        console=None if as_json else console(),
        data_root=data_root,
        degradations=degradations,
        coverage=coverage,
        abstain_on=abstain_on,
        scores=list(scores) or None,
        score_options=score_options or None,
        fit_limit=fit_limit,
        plots=not no_plots,
        overrides=list(overrides),
        debias=list(debias) or None,
        tiles=opts.tiles_arg(tiling),
        guarantee=guarantee,
        max_false_alarm=max_false_alarm,
    )
    opts.show_written(metrics, as_json, print_metrics, run_dir, plots=not no_plots)
