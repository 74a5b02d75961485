"""Multi-benchmark evaluation cost (issue 21, item 7): ``bnnkit evaluate RUN --data a=.. --data
b=.. --data c=..`` in one call against one ``--data`` evaluation per benchmark.

Writes the synthetic stand-in three times (the run's own binary-layout tree ``a`` and two
GenImage trees of other seeds, ``b`` and ``c``), trains the quickstart recipe on ``a`` (its
backbone fine-tuned, so no feature cache: every image streamed is a backbone pass), evaluates
once untimed (the fitted scores land in RUN/scores/, so neither side fits them), then times, in
one process with the two sides alternating and their order rotated each round, the one call
over the benchmarks against the separate calls. Each call's ``timing.json`` says how many images
it streamed through the backbone (``images_streamed``): the one call streams the calibration
images and every benchmark image once; the separate calls stream the calibration images once
per benchmark and load the model once per benchmark.

Prints ONE JSON object (progress on stderr):

    python benchmarks/multi.py          # 3 benchmarks: 16 val, 64 train images per class, 5 rounds
    python benchmarks/multi.py --val-per-class 2 --train-per-class 8 --rounds 1 --size 32  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_PASSES = 1.0  # backbone passes per distinct image in the one call


def log(message: str) -> None:
    print(f"[multi] {message}", file=sys.stderr, flush=True)


def evaluate(run, specs: list[str], device: str) -> tuple[float, int, float]:
    """Wall seconds of one in-process ``evaluate --data`` call, the images it streamed and the
    CPU seconds of this process it took (less sensitive to other processes on shared cores)."""
    from bnnkit.run.layout import RunLayout

    t0, c0 = time.perf_counter(), time.process_time()
    run.evaluate(benchmarks=specs, plots=False, device=device)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    timing = json.loads(RunLayout(run.path).timing.read_text(encoding="utf-8"))
    return seconds, int(timing["images_streamed"]["total"]), cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-per-class", type=int, default=16)
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="side of the synthetic images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bnnkit.api import Run
    from bnnkit.run.layout import RunLayout
    from bnnkit.testing import invoke, train_and_evaluate

    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="bnnkit-multi-") as tmp:
        work = Path(tmp)
        os.chdir(work)  # the data index cache (.bnnkit-cache) goes into the temp folder too
        roots = {"a": work / "a", "b": work / "b", "c": work / "c"}
        common = ["--size", str(args.size), "--val-per-class", str(args.val_per_class),
                  "--train-per-class", str(args.train_per_class)]  # fmt: skip
        log("writing the synthetic benchmarks")
        invoke(["data", "synth", roots["a"], "--layout", "binary", "--seed", "0", *common])
        invoke(["data", "synth", roots["b"], "--seed", "1", *common])
        invoke(["data", "synth", roots["c"], "--seed", "2", *common])
        log("training the quickstart recipe on benchmark a (backbone fine-tuned)")
        run_dir = train_and_evaluate(
            REPO / "recipes" / "quickstart.toml", work, data=roots["a"], backbone=None,
            evaluate=False, sets={"data.image_size": str(min(args.size, 64))},
        ).run  # fmt: skip
        run = Run.load(run_dir)
        specs = [f"{n}={p}" for n, p in roots.items()]
        log("warm-up evaluation (fits the scores once, untimed)")
        multi_images = evaluate(run, specs, args.device)[1]
        metrics = json.loads(RunLayout(run_dir).metrics.read_text(encoding="utf-8"))
        separate_images = sum(evaluate(run, [s], args.device)[1] for s in specs)
        ratios, cpu_ratios, multi_s, separate_s = [], [], [], []
        for r in range(args.rounds):
            sides = ["multi", "separate"] if r % 2 == 0 else ["separate", "multi"]
            got: dict[str, tuple[float, float]] = {}
            for side in sides:
                calls = [specs] if side == "multi" else [[s] for s in specs]
                timed = [evaluate(run, c, args.device) for c in calls]
                got[side] = (sum(t[0] for t in timed), sum(t[2] for t in timed))
            (m_wall, m_cpu), (s_wall, s_cpu) = got["multi"], got["separate"]
            log(f"round {r + 1}: one call {m_wall:.2f} s ({m_cpu:.2f} s CPU), separate "
                f"{s_wall:.2f} s ({s_cpu:.2f} s CPU)")  # fmt: skip
            multi_s.append(m_wall)
            separate_s.append(s_wall)
            ratios.append(m_wall / s_wall)
            cpu_ratios.append(m_cpu / s_cpu)
        os.chdir(cwd)
        n_cal = metrics["abstention"]["calibration"]["n"]
        # the distinct images: the calibration split's and every benchmark's (metrics.json)
        distinct = n_cal + sum(
            b["n_images"] + len(b["broken_files"]) for b in metrics["benchmarks"].values()
        )

    passes = multi_images / distinct
    result = {
        "benchmark": "multi",
        "figures": {
            "multi_over_separate_seconds": statistics.median(ratios),
            "multi_over_separate_cpu_seconds": statistics.median(cpu_ratios),
            "backbone_passes_per_image_multi": passes,
            "backbone_passes_per_image_separate": separate_images / distinct,
            "images_streamed": {"multi": multi_images, "separate": separate_images},
        },
        "targets": {"backbone_passes_per_image_multi": TARGET_PASSES},
        "meets_targets": {"backbone_passes_per_image_multi": passes <= TARGET_PASSES},
        "details": {
            "benchmarks": len(specs),
            "calibration_images": n_cal,
            "distinct_images": distinct,
            "multi_seconds_median": statistics.median(multi_s),
            "separate_seconds_median": statistics.median(separate_s),
            "ratios": ratios,
            "cpu_ratios": cpu_ratios,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch_threads": __import__("torch").get_num_threads(),
            "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    main()
