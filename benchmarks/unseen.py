"""How many of the unseen generator's errors does each method x score catch?

The number bnnkit is judged on, measured on the synthetic stand-in (``bnnkit data synth``, whose
generator families make an unseen generator produce real errors): **leave one generator out**
over all eight generators (train on seven, evaluate on the eighth; ``bnnkit protocol loo``),
with a frozen tiny backbone (every cell reuses one feature extraction per generator folder), for
every inference method and every OOD score. For each method x score:

- ``caught``: of all the held-out generators' misclassified images (pooled over the eight
  folds), the fraction the abstention threshold flags, where the threshold is calibrated to
  abstain on 10 % of the *seen* generators' validation images (``eval.coverage = 0.9``; the
  held-out generator is never used to fit or calibrate anything);
- ``auroc``: OOD AUROC of the score, held-out fakes against seen images, averaged over folds;
- per held-out generator: its errors, those caught and the AUROC.

Prints ONE JSON object on stdout (progress on stderr) and, with ``--md FILE``, a markdown table.

    python benchmarks/unseen.py                      # every method, every score (minutes)
    python benchmarks/unseen.py --quick              # 2 methods, 3 scores, 3 folds (a smoke test)
    python benchmarks/unseen.py --methods map,bbb --scores knn,mahalanobis --out /tmp/u.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads: every model is pretrained=False

import tomli_w  # noqa: E402
import torch  # noqa: E402

from bnnkit.api import run_protocol  # noqa: E402
from bnnkit.data.synth import synthesize  # noqa: E402
from bnnkit.metrics.schema import abstention_score, ood_score  # noqa: E402
from bnnkit.recipes_bundled import bundled  # noqa: E402
from bnnkit.report.protocol import PAPER_ORDER  # noqa: E402

#: seen-image abstention the threshold is calibrated for (10 %)
COVERAGE = 0.9
TARGET = "best caught >= 0.5"

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
}
QUICK_METHODS = ("map", "bbb")
QUICK_SCORES = ("entropy", "mutual_info", "knn")


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
    """Per score: the held-out generator's errors, errors caught and OOD AUROC in one fold."""
    (gen,) = metrics["ood_generators"]
    out = {}
    for score in scores:
        ab = abstention_score(metrics["abstention"], score)
        unseen = ab["unseen"][gen]
        seen = ab["seen"]
        out[score] = {
            "generator": gen,
            "errors": unseen["errors"],
            "errors_caught": unseen["errors_caught"],
            "seen_abstained": 1.0 - seen["coverage"],
            "auroc": ood_score(metrics["ood"][gen], score).get("auroc"),
        }
    return out


def aggregate(folds: list[dict[str, dict[str, Any]]], score: str) -> dict[str, Any]:
    rows = [f[score] for f in folds]
    errors = sum(r["errors"] for r in rows)
    caught = sum(r["errors_caught"] for r in rows)
    aurocs = [r["auroc"] for r in rows if r["auroc"] is not None]
    return {
        "caught": caught / errors if errors else None,
        "errors": errors,
        "errors_caught": caught,
        "auroc": sum(aurocs) / len(aurocs) if aurocs else None,
        "seen_abstained": sum(r["seen_abstained"] for r in rows) / len(rows),
        "per_generator": {
            r["generator"]: {
                "errors": r["errors"],
                "caught": r["errors_caught"] / r["errors"] if r["errors"] else None,
                "auroc": r["auroc"],
            }
            for r in rows
        },
    }


def markdown(results: dict[str, dict[str, Any]], scores: list[str], gens: list[str]) -> str:
    head = "| method | " + " | ".join(scores) + " |"
    lines = [
        "Unseen-generator errors caught at 10 % seen abstention (OOD AUROC), leave-one-out "
        f"over {len(gens)} synthetic generators ({', '.join(gens)}), frozen tiny backbone.",
        "",
        head,
        "|" + "---|" * (len(scores) + 1),
    ]
    for method, per in results.items():
        cells = []
        for s in scores:
            r = per.get(s) or {}
            c, a = r.get("caught"), r.get("auroc")
            cells.append(
                "n/a" if c is None else f"{100 * c:.1f} % ({a:.2f})" if a else f"{100 * c:.1f} %"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 methods, 3 scores, 3 folds, tiny data")
    ap.add_argument("--methods", help=f"comma-separated (default all: {','.join(METHODS)})")
    ap.add_argument("--scores", help="comma-separated (default every registered score)")
    ap.add_argument("--per-class", type=int, default=None, help="train images per class (40)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data (0)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", type=Path, help="run everything under this folder and keep it")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)
    args.out, args.md = (p.resolve() if p else None for p in (args.out, args.md))
    from bnnkit.plugins import get_registry

    methods = (
        args.methods.split(",") if args.methods else list(QUICK_METHODS if args.quick else METHODS)
    )
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    all_scores = get_registry().names("score")
    scores = (
        args.scores.split(",") if args.scores else list(QUICK_SCORES if args.quick else all_scores)
    )
    # --quick: three generators of three families (three folds)
    gens = ["midjourney", "sdv4", "biggan"] if args.quick else list(PAPER_ORDER)
    per_class = args.per_class or (12 if args.quick else 40)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnnkit-bench-unseen-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        here = Path.cwd()
        os.chdir(work)  # bnnkit's relative caches (.bnnkit-cache) stay in the work folder
        root = work / "data"
        if not (root / ".synth-done").exists():
            synthesize(root, seed=args.data_seed, train_per_class=per_class,
                       val_per_class=max(8, per_class // 2), generators=gens)  # fmt: skip
            (root / ".synth-done").touch()
        overrides = [
            f"data.root={json.dumps(str(root))}",
            'train.backbone="frozen"',
            f"eval.coverage={COVERAGE}",
            *(["eval.samples=8"] if args.quick else []),
        ]
        results: dict[str, dict[str, Any]] = {}
        for method in methods:
            recipe = method_recipe(method, work, args.quick)
            tm = time.perf_counter()
            result = run_protocol(
                "loo", str(recipe), overrides, out=work / "protocol" / method,
                generators=gens, device=args.device, scores=scores, abstain_on=scores[0],
                on_cell=lambda c, i: log(f"{c.block} {c.key}: {i['status']}"),
            )  # fmt: skip
            folds = []
            for cell in result.record["cells"]:
                metrics = json.loads(Path(cell["metrics"]).read_text(encoding="utf-8"))
                folds.append(fold_numbers(metrics, scores))
            results[method] = {s: aggregate(folds, s) for s in scores}
            log(f"{method}: {time.perf_counter() - tm:.1f} s")
        os.chdir(here)
    best = max(
        ((m, s, r["caught"]) for m, per in results.items() for s, r in per.items()
         if r["caught"] is not None),
        key=lambda t: t[2], default=(None, None, None),
    )  # fmt: skip
    report = {
        "benchmark": "unseen-generator errors caught, leave-one-generator-out (synthetic)",
        "settings": {"methods": methods, "scores": scores, "generators": gens,
                     "train_per_class": per_class, "data_seed": args.data_seed,
                     "coverage": COVERAGE,
                     "backbone": "test_resnet (frozen, random init)", "device": args.device},
        "results": results,
        "best": {"method": best[0], "score": best[1], "caught": best[2]},
        "target": TARGET,
        "seconds": time.perf_counter() - t0,
        "environment": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "cpus": os.cpu_count()},
    }  # fmt: skip
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    table = markdown(results, scores, gens)
    print(table, file=sys.stderr)
    if args.md:
        args.md.write_text(table)
    return report


if __name__ == "__main__":
    main()
