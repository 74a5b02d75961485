"""How many of an unseen generator's errors does the pre-registered method x score catch?

The number bnnkit is judged on, measured on the synthetic stand-in (``bnnkit data synth``, whose
generator families make an unseen generator produce real errors): **leave one generator out**
over all eight generators (``bnnkit protocol loo``), a frozen tiny backbone, and the threshold
calibrated to abstain on 10 % of *seen*-generator images (``eval.coverage = 0.9``; on the run's
calibration split, or its seen validation images when it has none; nothing is fitted or
calibrated on the held-out generator).

Two modes, so that the reported number is never the maximum of a grid over the folds it reports:

- **headline** (default): only the :data:`PREREGISTERED` pairs, chosen on data seed 0 alone,
  run on data seeds 1, 2 and 3 (``--data-seeds``; seed 0 is refused). Per pair: ``caught`` (of all
  held-out generators' misclassified images, pooled over folds and seeds, the share abstained
  on), its bootstrap 95 % interval over images (:func:`bootstrap_caught`), ``unseen_coverage``
  (share of held-out images kept) and ``seen_abstention`` (share of seen validation images
  abstained on, as reached, not as targeted).
  ``--guarantee LEVEL`` also runs them with ``eval.guarantee`` (split-conformal thresholds on
  the calibration split) and prints both (``guaranteed`` in the JSON; the headline is unchanged).
- **exploratory** (``--explore``, data seed 0 by default): every method x score, as a grid. It is
  where the pre-registered pairs are chosen; no cell of it is an estimate of anything.

Prints ONE JSON object on stdout (progress on stderr); ``--md FILE`` writes the table.

    python benchmarks/unseen.py                             # headline, data seeds 1, 2, 3 (~7 min)
    python benchmarks/unseen.py --data-seeds 1,2,3,4        # more seeds
    python benchmarks/unseen.py --guarantee 0.9             # and with split-conformal thresholds
    python benchmarks/unseen.py --only gp                   # re-measure one method's pairs
    python benchmarks/unseen.py --explore --data-seed 0     # the exploratory grid (minutes)
    python benchmarks/unseen.py --quick                     # smoke test: seed 1, 3 folds, tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads: every model is pretrained=False

import numpy as np  # noqa: E402
import tomli_w  # noqa: E402

from bnnkit.api import run_protocol  # noqa: E402
from bnnkit.data.synth import synthesize  # noqa: E402
from bnnkit.metrics.protocol import DEFAULT_ABSTAIN_SCORE  # noqa: E402
from bnnkit.metrics.schema import abstention_score, ood_score  # noqa: E402
from bnnkit.recipes_bundled import bundled  # noqa: E402
from bnnkit.report.predictions import score_columns  # noqa: E402
from bnnkit.report.protocol import PAPER_ORDER  # noqa: E402
from bnnkit.run.layout import RunLayout  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, environment  # noqa: E402
from unseen_stats import (  # noqa: E402
    BOOTSTRAP_SEED,
    COVERAGE,
    RESAMPLES,
    Stratum,
    bootstrap_caught,
    caught_rate,
    explore_md,
    guarantee_md,
    headline_md,
    threshold_np,
)

TARGET = "headline caught >= 0.7; a distance-aware head's mutual_info caught >= 0.5 (issue 22)"
#: the data seed the pre-registered pairs were chosen on: never reported in the headline
CHOOSING_SEED = 0

# Pre-registered (method, score) pairs; the FIRST is the headline. Chosen on data seed 0 ONLY
# (``--explore --data-seed 0``, 2026-12-05, after the calibration split and the score fixes of
# issue 18, before any other seed was run with that code), so the headline seeds report an
# estimate, not the maximum of ~110 cells on the same folds. Why: in the seed-0 grid
# ``rel_mahalanobis`` was the best score in 9 of the 10 methods' rows (40-55 % caught, OOD AUROC
# 0.81) and reached its 10 % seen-abstention target (10.2 %), while ``fused`` abstained on only
# 2-8 % of seen images (its threshold is set on half the calibration split) and caught 9-45 %;
# kflaplace x rel_mahalanobis caught 54.7 % (map 55.3 %, ensemble 53.8 %: the score is a
# feature-space density, so methods differ only in which images they get wrong). kflaplace is
# the headline method because it is the post-hoc posterior any trained linear head can get.
# The second and third pairs are reported beside it, not chosen on: the fused score (the old
# default) and the posterior's own epistemic score (the uncertainty issue's baseline).
PREREGISTERED: tuple[tuple[str, str], ...] = (
    ("kflaplace", "rel_mahalanobis"),
    ("kflaplace", "fused"),
    ("kflaplace", "mutual_info"),
    # Issue 22, from ``--explore --data-seed 0 --methods sngp,gp`` ONLY (2026-12-05, before any
    # other seed ran sngp or gp): each distance-aware head's own mutual_info (the second
    # target; seed 0: sngp 57.1 %, 36 / 63, AUROC 0.81, seen abstention 4.2 %; gp 30.6 %, 11 / 36,
    # 0.77, 5.2 %) and the best new cell, sngp x rel_mahalanobis (68.3 %, 43 / 63, 10.2 %).
    ("sngp", "mutual_info"),
    ("gp", "mutual_info"),
    ("sngp", "rel_mahalanobis"),
)
# The pre-registered product default for ``--abstain-on`` (evaluate, predict, protocol): the
# headline's score (bnnkit.metrics.protocol.DEFAULT_ABSTAIN_SCORE must equal it).
DEFAULT_ABSTAIN = "rel_mahalanobis"

#: method -> (head, inference options) on the quickstart recipe's frozen tiny backbone
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "map": ("linear", {}),
    "bbb": ("bbb", {"kl_weight": "auto"}),
    "lrt": ("lrt", {}),
    "mcdropout": ("dropout", {}),
    "ensemble": ("linear", {"members": 5}),
    "kflaplace": ("linear", {}),
    "sgld": ("linear", {}),
    "sghmc": ("linear", {}),
    "wepe": ("", {}),
    "rigid": ("", {}),
    # issue 22, plugin defaults: sngp D 1024, lengthscale sqrt(d), ridge 1, full; gp 20 points, rbf
    "sngp": ("sngp", {}),
    "gp": ("gp", {}),
}
QUICK_METHODS = ("map", "bbb")
QUICK_SCORES = ("entropy", "mutual_info", "knn")
QUICK_GENERATORS = ["midjourney", "sdv4", "biggan"]  # three families: three folds


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def method_recipe(method: str, folder: Path, quick: bool) -> Path:
    """The quickstart recipe with ``method``'s head and options (written to ``folder``)."""
    base = tomllib.loads(bundled()["quickstart"])
    head, options = METHODS[method]
    base["name"] = f"unseen_{method}"
    base["inference"] = {"name": method, **options}
    if head:
        base["model"]["head"] = {"name": head}
        if head == "bbb":
            base["model"]["head"]["posterior_rho_init"] = -4.0
    else:  # training-free: its own head, nothing optimised
        base["model"]["head"] = {"name": method}
        base["train"]["epochs"] = 0
    if quick and base["train"]["epochs"]:
        base["train"]["epochs"] = 4
    path = folder / f"unseen_{method}.toml"
    path.write_text(tomli_w.dumps(base), encoding="utf-8")
    return path


def fold_numbers(metrics: dict[str, Any], scores: list[str]) -> dict[str, dict[str, Any]]:
    """Per score, one fold: the held-out generator's errors and errors caught, the share of its
    images kept (a score that abstains on every image catches every error) and the OOD AUROC."""
    (gen,) = metrics["ood_generators"]
    out = {}
    for score in scores:
        ab = abstention_score(metrics["abstention"], score)
        unseen, seen = ab["unseen"][gen], ab["seen"]
        out[score] = {
            "generator": gen,
            "errors": unseen["errors"],
            "errors_caught": unseen["errors_caught"],
            "unseen_n": unseen["n"],
            "unseen_abstained": 1.0 - unseen["coverage"],
            "seen_n": seen["n"],
            "seen_abstained": 1.0 - seen["coverage"],
            "auroc": ood_score(metrics["ood"][gen], score).get("auroc"),
        }
    return out


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Folds (and seeds) pooled over images; the AUROC averaged over folds."""
    errors = sum(r["errors"] for r in rows)
    caught = sum(r["errors_caught"] for r in rows)
    aurocs = [r["auroc"] for r in rows if r["auroc"] is not None]
    n_unseen, n_seen = sum(r["unseen_n"] for r in rows), sum(r["seen_n"] for r in rows)
    return {
        "caught": caught / errors if errors else None,
        "errors": errors,
        "errors_caught": caught,
        "unseen_coverage": 1 - sum(r["unseen_abstained"] * r["unseen_n"] for r in rows) / n_unseen,
        "seen_abstention": sum(r["seen_abstained"] * r["seen_n"] for r in rows) / n_seen,
        "auroc": sum(aurocs) / len(aurocs) if aurocs else None,
        "per_fold": rows,
    }


def stratum(cell: dict[str, Any], score: str) -> tuple[Stratum, bool]:
    """The cell's held-out images from predictions.csv, and whether the threshold is refitted per
    resample: when the CSV holds the images it was fitted on (the seen validation images, or
    rows of the calibration split's condition) and refitting them gives the stored threshold."""
    metrics = cell["metrics"]
    (gen,) = metrics["ood_generators"]
    col = score_columns([score])[0]
    split = (metrics["abstention"].get("calibration") or {}).get("split", "val")
    fit = ("clean", "1") if split == "val" else (split, "1")  # (condition, seen) fitted on
    fit_u, un_u, un_err = [], [], []
    with open(RunLayout(Path(cell["run"])).predictions, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if (row["condition"], row["seen"], row["generator"]) == ("clean", "0", gen):
                un_u.append(float(row[col]))
                un_err.append((float(row["p_fake"]) >= 0.5) != (row["label"] == "1"))
            elif (row["condition"], row["seen"]) == fit:
                fit_u.append(float(row[col]))
    t = abstention_score(metrics["abstention"], score)["threshold"]  # null: +inf (keeps all)
    t = math.inf if t is None else t
    fit_scores = np.array(fit_u)
    refit = fit_scores.size > 0 and float(threshold_np(fit_scores, COVERAGE)) == t
    return Stratum(np.array(un_u), np.array(un_err, bool), t, fit_scores if refit else None), refit


def run_seed(
    work: Path, seed: int, plan: dict[str, list[str]], gens: list[str], per_class: int,
    args: argparse.Namespace, guarantee: float | None = None,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Leave-one-out for every method of ``plan`` (method -> scores) on data seed ``seed``:
    per method, one ``{"run", "metrics"}`` per fold. ``guarantee``: as ``eval.guarantee`` (bnnkit's
    ``--guarantee``; ``run_protocol`` takes no evaluation options, so through the recipe)."""
    root = work / f"seed{seed}" / "data"
    if not (root / ".synth-done").exists():
        synthesize(root, seed=seed, train_per_class=per_class,
                   val_per_class=max(8, per_class // 2), generators=gens)  # fmt: skip
        (root / ".synth-done").touch()
    overrides = [
        f"data.root={json.dumps(str(root))}",
        'train.backbone="frozen"',
        f"eval.coverage={COVERAGE}",
        *([f"eval.guarantee={guarantee}"] if guarantee is not None else []),
        *(["eval.samples=8"] if args.quick else []),
    ]
    protocol = "protocol" if guarantee is None else f"protocol-guarantee{guarantee:g}"
    cells: dict[str, list[dict[str, Any]]] = {}
    for method, scores in plan.items():
        recipe = method_recipe(method, work, args.quick)
        tm = time.perf_counter()
        result = run_protocol(
            "loo", str(recipe), overrides, out=work / f"seed{seed}" / protocol / method,
            generators=gens, device=args.device, scores=scores,
            abstain_on=DEFAULT_ABSTAIN if DEFAULT_ABSTAIN in scores else scores[0],
            on_cell=lambda c, i: log(f"seed {seed} {c.block} {c.key}: {i['status']}"),
        )  # fmt: skip
        cells[method] = [
            {"run": c["run"], "metrics": json.loads(Path(c["metrics"]).read_text("utf-8"))}
            for c in result.record["cells"]
        ]
        log(f"seed {seed} {method}: {time.perf_counter() - tm:.1f} s")
    return cells


def headline_pair(method: str, score: str, per_seed: dict[int, Any], resamples: int) -> dict:
    rows, strata, refits = [], [], []
    for seed, cells in per_seed.items():
        for cell in cells[method]:
            rows.append({"data_seed": seed, **fold_numbers(cell["metrics"], [score])[score]})
            s, refit = stratum(cell, score)
            strata.append(s)
            refits.append(refit)
    agg = aggregate(rows)
    if agg["caught"] is not None and not math.isclose(caught_rate(strata), agg["caught"]):
        log(f"warning: {method} x {score}: predictions.csv disagrees with metrics.json")
    low, high = bootstrap_caught(strata, resamples)
    head = {
        "method": method,
        "score": score,
        "data_seeds": sorted(per_seed),
        "caught": agg["caught"],
        "ci95": [v if v == v else None for v in (low, high)],  # (NaN: no error at all)
        "unseen_coverage": agg["unseen_coverage"],
        "seen_abstention": agg["seen_abstention"],
    }
    boot = {"resamples": resamples, "seed": BOOTSTRAP_SEED, "strata": "data seed x fold",
            "resampled": "held-out images (score and error together); in threshold_refitted_folds "
                         "also the threshold's fit images, the threshold refitted on each "
                         "resample (elsewhere it is fixed: its fit images are not in "
                         "predictions.csv, so the interval leaves out its sampling error)",
            "threshold_refitted_folds": sum(refits), "folds": len(refits)}  # fmt: skip
    return {**head, **{k: agg[k] for k in ("errors", "errors_caught", "auroc", "per_fold")},
            "bootstrap": boot}  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--explore", action="store_true", help="the exploratory method x score grid")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 folds, tiny data")
    ap.add_argument("--data-seeds", help="headline: comma-separated data seeds (default 1,2,3)")
    ap.add_argument("--data-seed", type=int, help="--explore: the data seed (default 0)")
    ap.add_argument("--methods", help=f"--explore: comma-separated (default {','.join(METHODS)})")
    ap.add_argument(
        "--only",
        help="headline: only these methods' pre-registered pairs (to "
        "re-measure a changed method; the pairs themselves never change)",
    )
    ap.add_argument("--scores", help="--explore: comma-separated (default every score)")
    ap.add_argument("--guarantee", type=float, metavar="LEVEL", help="headline: also evaluate "
                    "with bnnkit's --guarantee LEVEL (split conformal, e.g. 0.9)")  # fmt: skip
    ap.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    ap.add_argument("--per-class", type=int, default=None, help="train images per class (40)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="run everything under this folder and keep it")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    args.out, args.md = (p.resolve() if p else None for p in (args.out, args.md))
    if args.resamples < 1:
        ap.error("--resamples must be at least 1")
    if args.guarantee is not None and (args.explore or not 0.0 < args.guarantee < 1.0):
        ap.error("--guarantee LEVEL: headline mode only, LEVEL in (0, 1), e.g. 0.9")
    if args.explore and args.only:
        ap.error("--only belongs to the headline: --explore takes --methods")
    if args.explore:
        if args.data_seeds is not None:
            ap.error("--explore runs one data seed: use --data-seed")
        args.data_seed = CHOOSING_SEED if args.data_seed is None else args.data_seed
        from bnnkit.plugins import get_registry

        q = args.quick
        methods = list(QUICK_METHODS if q else METHODS)
        args.methods = args.methods.split(",") if args.methods else methods
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        names = get_registry().names("score")
        args.scores = args.scores.split(",") if args.scores else list(QUICK_SCORES if q else names)
        return args
    args.pairs = [(m, sc) for m, sc in PREREGISTERED
                  if not args.only or m in args.only.split(",")]  # fmt: skip
    if not args.pairs:
        ap.error(f"--only {args.only}: no pre-registered pair has that method")
    if args.data_seed is not None or args.methods or args.scores:
        ap.error("--data-seed, --methods and --scores belong to --explore: the headline runs the "
                 "pre-registered pairs (PREREGISTERED in this script) on --data-seeds")  # fmt: skip
    default = "1" if args.quick else "1,2,3"
    args.data_seeds = [int(s) for s in (args.data_seeds or default).split(",")]
    if CHOOSING_SEED in args.data_seeds:
        ap.error(f"data seed {CHOOSING_SEED} chose the pre-registered pairs, so it cannot report "
                 f"them; pick other --data-seeds (its grid: --explore --data-seed "
                 f"{CHOOSING_SEED})")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    gens = QUICK_GENERATORS if args.quick else list(PAPER_ORDER)
    per_class = args.per_class or (12 if args.quick else 40)
    if args.explore:
        seeds, plan = [args.data_seed], {m: list(args.scores) for m in args.methods}
    else:
        seeds, plan = args.data_seeds, {}
        for method, score in args.pairs:
            plan.setdefault(method, []).append(score)
    if DEFAULT_ABSTAIN != DEFAULT_ABSTAIN_SCORE:
        log(f"note: the pre-registered default {DEFAULT_ABSTAIN!r} is not bnnkit's "
            f"DEFAULT_ABSTAIN_SCORE {DEFAULT_ABSTAIN_SCORE!r}")  # fmt: skip
    t0 = time.perf_counter()
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bnnkit-bench-unseen-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)  # bnnkit's relative caches (.bnnkit-cache) stay in the work folder
        try:
            per_seed = {s: run_seed(work, s, plan, gens, per_class, args) for s in seeds}
            pairs = [headline_pair(m, s, per_seed, args.resamples)
                     for m, s in ([] if args.explore else args.pairs)]  # fmt: skip
            per_g = {s: run_seed(work, s, plan, gens, per_class, args, args.guarantee)
                     for s in (seeds if args.guarantee else [])}  # fmt: skip
            guaranteed = [headline_pair(m, s, per_g, args.resamples)
                          for m, s in (args.pairs if args.guarantee else [])]  # fmt: skip
        finally:
            os.chdir(here)
    explore = None
    if args.explore:
        (cells,) = per_seed.values()
        results = {m: {s: aggregate([fold_numbers(c["metrics"], [s])[s] for c in cells[m]])
                       for s in args.scores} for m in args.methods}  # fmt: skip
        explore = {"label": "exploratory: every cell on the same folds; never a headline",
                   "data_seed": args.data_seed, "results": results}  # fmt: skip
    heads = ("method", "score", "data_seeds", "caught", "ci95", "unseen_coverage",
             "seen_abstention")  # fmt: skip
    report = {
        "benchmark": "unseen-generator errors caught, leave-one-generator-out (synthetic)",
        "mode": "exploratory" if args.explore else "headline",
        "headline": (
            {k: pairs[0][k] for k in heads}
            if pairs and (pairs[0]["method"], pairs[0]["score"]) == PREREGISTERED[0]
            else None
        ),
        "preregistered": pairs,
        "guaranteed": ({"level": args.guarantee, "preregistered": guaranteed}
                       if args.guarantee else None),  # fmt: skip
        "exploratory": explore,
        "default_abstain_on": {"preregistered": DEFAULT_ABSTAIN, "bnnkit": DEFAULT_ABSTAIN_SCORE},
        "settings": {"plan": plan, "generators": gens, "train_per_class": per_class,
                     "data_seeds": seeds, "choosing_seed": CHOOSING_SEED, "coverage": COVERAGE,
                     "guarantee": args.guarantee,
                     "backbone": "test_resnet (frozen, random init)", "device": args.device},
        "target": TARGET,
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }  # fmt: skip
    emit(report, args.out)
    headline = report["headline"] is not None
    table = (explore_md(explore["results"], args.scores, gens, args.data_seed) if explore
             else headline_md(pairs, gens, CHOOSING_SEED, headline))  # fmt: skip
    if args.guarantee:
        table += "\n" + guarantee_md(pairs, guaranteed, args.guarantee)
    print(table, file=sys.stderr)
    if args.md:
        args.md.write_text(table)
    return report


if __name__ == "__main__":
    main()
