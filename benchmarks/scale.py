"""Scale benchmark: how bnnkit's costs grow with the number of images (issue 14).

Writes synthetic GenImage-shaped trees of 10^3 and 10^4 images (and 10^5 with ``--max 100000``)
of tiny JPEGs, and for each measures, each in its own process (peak RSS from ``os.wait4``):

- ``data check`` cold (no index: walk, sniff, decode every file) and warm (from the index), the
  whole CLI command;
- feature extraction: ``bnnkit.api.train`` with a frozen backbone (``test_resnet``), MAP, one
  epoch, empty feature cache (extraction of train and val features dominates);
- a frozen head sweep: the same with each of ``--methods``, features from the cache;
- ``evaluate`` of the MAP run on the seen and an unseen generator.

Also, on the largest tree, the toolkit's dataset against a bare PIL loop over the same files
(decode + the same transform), and JPEG draft decoding for ``preprocess = "resize"`` against a
full decode on larger JPEGs (speed and the pixel difference after the resize).

Prints ONE JSON object (progress on stderr) with ``meets_targets`` (target -> true/false):

    python benchmarks/scale.py                 # 10^3 and 10^4 images
    python benchmarks/scale.py --max 100000    # and 10^5 (minutes)
    python benchmarks/scale.py --sizes 60,120 --methods map   # a smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GENERATORS = {"adm": "imagenet_ai_0508_adm", "sdv4": "imagenet_ai_0419_sdv4"}
IMAGE_SIDE = 32
TARGETS = {
    "seconds_per_image_flat": "s/img at the largest size <= 1.5 x s/img at the smallest",
    "peak_rss_growth": "(peak RSS - per-image results) at the largest <= 2 x at the smallest",
    "warm_check_speedup": "cold / warm `data check` at the largest size >= 10",
    "toolkit_decode_over_bare_pil": "<= 1.1",
}
#: per-image results a stage keeps by design (bytes), allowed on top of the RSS growth target:
#: evaluation keeps one record row per image (p(fake), three uncertainties, label, generator,
#: index, as float64/int64, plus its predictions.csv line); extraction the feature row.
EVAL_RESULT_BYTES = 7 * 8 + 200
#: ``check`` (data check cold and warm), ``train`` (extraction and sweep), ``evaluate`` (needs
#: train), ``decode`` (toolkit vs bare PIL), ``draft`` (JPEG draft decoding)
STAGES = {"check", "train", "evaluate", "decode", "draft"}


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


# -- the synthetic tree ------------------------------------------------------------------------
def jpeg_variants(n: int = 16, side: int = IMAGE_SIDE) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        im = Image.effect_noise((side, side), 40 + 5 * i).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_tree(root: Path, n: int) -> dict[str, int]:
    """``n`` images: two generators x two classes, 80 % train / 20 % val."""
    variants = jpeg_variants()
    per = max(1, n // 4)
    train = max(1, round(per * 0.8))
    counts: dict[str, int] = {}
    k = 0
    for folder in GENERATORS.values():
        for cls in ("ai", "nature"):
            for split, count in (("train", train), ("val", per - train)):
                d = root / folder / split / cls
                d.mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    with open(d / f"{i:06d}.jpg", "wb") as fh:
                        fh.write(variants[k % len(variants)])
                    k += 1
                counts[f"{split}/{cls}"] = counts.get(f"{split}/{cls}", 0) + count
    counts["total"] = k
    return counts


# -- child processes ---------------------------------------------------------------------------
def child(cmd: list[str], timeout: float) -> tuple[float, int, str]:
    """Run ``cmd``; (wall seconds, peak RSS in bytes of that process, stdout)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"timed out: {' '.join(cmd)}")
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read() if proc.stderr else ""
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss * 1024, text


def worker(stage: str, args: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", stage, json.dumps(args)]


RECIPE = """
name = "scale"
seed = 0
[data]
root = "{root}"
train_generators = ["adm"]
holdout = ["sdv4"]
image_size = {side}
num_workers = 0
[model.backbone]
name = "test_resnet"
pretrained = false
[inference]
name = "{method}"
[train]
epochs = 1
batch_size = 256
backbone = "frozen"
device = "cpu"
[eval]
samples = 8
batch_size = 256
"""


def run_worker(stage: str, a: dict[str, Any]) -> dict[str, Any]:
    """One stage inside a child process; prints its JSON."""
    import torch

    torch.manual_seed(0)
    import bnnkit.engine.evaluate.run
    import bnnkit.engine.train.trainer  # noqa: F401  (imported before any clock starts)
    from bnnkit import api

    def recipe(method: str) -> str:
        path = Path(a["work"]) / f"recipe-{method}.toml"
        path.write_text(RECIPE.format(root=a["root"], side=IMAGE_SIDE, method=method))
        return str(path)

    if stage == "train":
        out: dict[str, Any] = {}
        for method in a["methods"]:
            t0 = time.perf_counter()
            run = api.train(recipe(method), runs_dir=a["runs"], cache_dir=a["cache"], device="cpu")
            out[method] = time.perf_counter() - t0
            out.setdefault("run", str(run.path))
        import timm

        model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
        out["feature_dim"] = int(model.num_features)
        return out
    if stage == "evaluate":
        t0 = time.perf_counter()
        api.Run.load(a["run"]).evaluate(["sdv4"], device="cpu", plots=False)
        return {"seconds": time.perf_counter() - t0}
    if stage == "decode":
        return bench_decode(a)
    if stage == "draft":
        return bench_draft(a)
    raise SystemExit(f"unknown stage {stage}")


def bench_decode(a: dict[str, Any]) -> dict[str, Any]:
    """The toolkit's ImageDataset (robust open_rgb + eval transform) over a bare PIL loop
    (``Image.open(...).convert("RGB")`` + the same transform), same files, alternated: on the
    tree's tiny JPEGs (fixed per-file costs dominate) and on GenImage-sized 256 x 256 JPEGs
    (the target applies to these: GenImage's fakes are 256-1024 px)."""
    from PIL import Image, ImageFilter

    from bnnkit.data.dataset import ImageDataset, build_transform
    from bnnkit.data.genimage import Sample
    from bnnkit.data.layouts import index_split

    folder = Path(a["work"]) / "decode256"
    folder.mkdir(exist_ok=True)
    large = []
    for i in range(a["files_256"]):
        im = Image.effect_noise((256, 256), 30 + i % 50).convert("RGB")
        im.filter(ImageFilter.GaussianBlur(1)).save(folder / f"{i}.jpg", quality=90)
        large.append(Sample(folder / f"{i}.jpg", 1, "adm"))
    tiny = index_split(a["root"], ["adm", "sdv4"], "train", balance=False, layout="genimage")
    tiny = tiny[: a["files"]]
    out = {}
    for name, samples, side in (("tiny", tiny, IMAGE_SIDE), ("genimage_sized", large, 224)):
        tf = build_transform(side, "crop", train=False)
        ds = ImageDataset(samples, tf, ["adm", "sdv4"])

        def toolkit(ds: ImageDataset = ds) -> None:
            for i in range(len(ds)):
                ds[i]

        def bare(samples: list = samples, tf: Any = tf) -> None:
            for s in samples:
                with Image.open(s.path) as im:
                    tf(im.convert("RGB"))

        out[name] = _paired(toolkit, bare, len(samples), a.get("repeats", 5))
    out["ratio"] = out["genimage_sized"]["ratio"]
    return out


def _paired(ours, theirs, n: int, repeats: int) -> dict[str, Any]:
    ours(), theirs()  # warm-up
    ratios, a_s, b_s = [], [], []
    for r in range(repeats):
        order = [ours, theirs] if r % 2 == 0 else [theirs, ours]
        t = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            t[fn] = time.perf_counter() - t0
        a_s.append(t[ours])
        b_s.append(t[theirs])
        ratios.append(t[ours] / t[theirs])
    return {
        "ratio": statistics.median(ratios),
        "ours_seconds_per_image": statistics.median(a_s) / n,
        "reference_seconds_per_image": statistics.median(b_s) / n,
        "files": n,
    }


def bench_draft(a: dict[str, Any]) -> dict[str, Any]:
    """JPEG draft decoding for ``preprocess = "resize"``: 512 x 384 photos-like JPEGs resized
    to ``side``; speed against a full decode, and the pixel difference after the resize."""
    import torch
    from PIL import Image, ImageFilter
    from torchvision.transforms import v2 as T

    from bnnkit.data.dataset import draft_size
    from bnnkit.data.images import open_rgb

    folder = Path(a["work"]) / "draft"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(a["files"]):
        im = Image.effect_noise((512, 384), 30 + i).convert("RGB")
        im = im.filter(ImageFilter.GaussianBlur(3))  # photo-like: mostly low frequencies
        p = folder / f"{i}.jpg"
        im.save(p, format="JPEG", quality=90)
        paths.append(p)
    side = a["side"]
    resize = T.Compose([T.ToImage(), T.Resize((side, side), antialias=True)])
    draft = draft_size("resize", side)

    def full() -> list[torch.Tensor]:
        return [resize(open_rgb(p)) for p in paths]

    def drafted() -> list[torch.Tensor]:
        return [resize(open_rgb(p, draft=draft)) for p in paths]

    timing = _paired(drafted, full, len(paths), a.get("repeats", 3))
    diffs = [(x.int() - y.int()).abs() for x, y in zip(drafted(), full(), strict=True)]
    sizes = {open_rgb(p, draft=draft).size for p in paths}
    return {
        "draft_over_full_decode": timing["ratio"],
        "max_abs_pixel_difference": int(max(d.max() for d in diffs)),
        "mean_abs_pixel_difference": float(torch.stack([d.float().mean() for d in diffs]).mean()),
        "decoded_sizes": sorted(list(s) for s in sizes),
        "source_size": [512, 384],
        "target_size": side,
        "files": len(paths),
    }


# -- one tree size -----------------------------------------------------------------------------
def measure(n: int, work: Path, methods: list[str], only: set[str]) -> dict[str, Any]:
    from bnnkit.data.index import RACY_SECONDS

    root, cache = work / f"tree-{n}", work / f"cache-{n}"
    t0 = time.perf_counter()
    counts = write_tree(root, n)
    written = time.perf_counter() - t0
    n = counts["total"]
    log(f"{n} images written in {written:.1f} s")
    time.sleep(RACY_SECONDS)  # so the cold check records every folder as settled
    check = [sys.executable, "-m", "bnnkit", "data", "check", str(root), "--json",
             "--cache-dir", str(cache)]  # fmt: skip
    out: dict[str, Any] = {"images": n, "write_seconds": written}
    for name in ("check_cold", "check_warm"):
        wall, rss, text = child(check, 3600)
        report = json.loads(text)
        assert sum(
            c["files"] for g in report["counts"].values() for s in g.values() for c in s.values()
        ) == n  # fmt: skip
        out[name] = {"seconds": wall, "seconds_per_image": wall / n, "peak_rss": rss}
        log(f"{n}: {name} {wall:.2f} s, {rss / 2**20:.0f} MiB")
    if "train" not in only:
        return out
    n_train = counts["train/ai"] // 2 + counts["train/nature"] // 2  # adm only
    n_val_seen = (counts["val/ai"] + counts["val/nature"]) // 2
    a = {"root": str(root), "cache": str(cache), "runs": str(work / f"runs-{n}"),
         "work": str(work), "methods": ["map"]}  # fmt: skip
    wall, rss, text = child(worker("train", a), 7200)
    result = json.loads(text)
    extracted = n_train + n_val_seen
    out["extract"] = {"seconds": result["map"], "images": extracted,
                      "seconds_per_image": result["map"] / extracted, "peak_rss": rss}  # fmt: skip
    log(f"{n}: extraction + MAP {result['map']:.2f} s, {rss / 2**20:.0f} MiB")
    run = result["run"]
    wall, rss, text = child(worker("train", {**a, "methods": methods}), 7200)
    sweep = json.loads(text)
    per = {m: sweep[m] for m in methods}
    total = sum(per.values())
    out["sweep"] = {"seconds": total, "per_method": per, "images": n_train, "peak_rss": rss,
                    "seconds_per_image": total / (n_train * len(methods))}  # fmt: skip
    log(f"{n}: sweep {', '.join(f'{m} {s:.2f} s' for m, s in per.items())}")
    out["feature_dim"] = result["feature_dim"]
    if "evaluate" not in only:
        return out
    wall, rss, text = child(worker("evaluate", {"run": run}), 7200)
    ev = json.loads(text)["seconds"]
    n_eval = 2 * n_val_seen
    out["evaluate"] = {"seconds": ev, "images": n_eval, "seconds_per_image": ev / n_eval,
                       "peak_rss": rss}  # fmt: skip
    log(f"{n}: evaluate {ev:.2f} s, {rss / 2**20:.0f} MiB")
    return out


def targets(sizes: dict[int, dict[str, Any]], decode: dict[str, Any] | None) -> dict[str, Any]:
    """The figures the targets are about, and whether each is met (only measured ones)."""
    small, large = sizes[min(sizes)], sizes[max(sizes)]
    figures: dict[str, float] = {}
    for stage in ("check_cold", "extract", "sweep", "evaluate"):
        if stage not in large:
            continue
        figures[f"seconds_per_image_flat.{stage}"] = (
            large[stage]["seconds_per_image"] / small[stage]["seconds_per_image"]
        )
    allowance = {"extract": 4 * large.get("feature_dim", 0), "evaluate": EVAL_RESULT_BYTES}
    for stage, per_image in allowance.items():
        if stage not in large:
            continue

        def excess(r: dict[str, Any], stage: str = stage, per_image: int = per_image) -> float:
            return r[stage]["peak_rss"] - per_image * r[stage]["images"]

        figures[f"peak_rss_growth.{stage}"] = excess(large) / excess(small)
    figures["warm_check_speedup"] = large["check_cold"]["seconds"] / large["check_warm"]["seconds"]
    if decode is not None:
        figures["toolkit_decode_over_bare_pil"] = decode["ratio"]
    meets = {}
    for name, value in figures.items():
        kind = name.split(".")[0]
        limit = {"seconds_per_image_flat": 1.5, "peak_rss_growth": 2.0}.get(kind)
        if kind == "warm_check_speedup":
            meets[name] = value >= 10
        elif kind == "toolkit_decode_over_bare_pil":
            meets[name] = value <= 1.1
        else:
            meets[name] = value < limit if kind == "peak_rss_growth" else value <= limit
    return {"figures": figures, "meets_targets": meets}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max", type=int, default=10_000, help="largest tree (10^3 .. this, x10)")
    p.add_argument("--sizes", help="explicit comma-separated tree sizes (overrides --max)")
    p.add_argument("--methods", default="map,bbb,lrt", help="methods of the frozen head sweep")
    p.add_argument("--decode-files", type=int, default=2000, help="tree files timed for decode")
    p.add_argument("--decode-files-256", type=int, default=300, help="256 px JPEGs timed")
    p.add_argument("--draft-files", type=int, default=48)
    p.add_argument("--only", default=",".join(sorted(STAGES)), help="subset of the stages")
    p.add_argument("--workdir", type=Path, help="keep the trees here (default: a temp folder)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker[0], json.loads(args.worker[1]))))
        return {}
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= args.max]
    methods = [m for m in args.methods.split(",") if m]
    only = set(args.only.split(","))
    if only - STAGES:
        p.error(f"--only: unknown stage(s) {', '.join(sorted(only - STAGES))}")
    with tempfile.TemporaryDirectory(prefix="bnnkit-scale-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        per_size = {n: measure(n, work, methods, only) for n in sizes}
        root = work / f"tree-{max(sizes)}"
        files = min(args.decode_files, per_size[max(sizes)]["images"] // 2)
        decode = draft = None
        if "decode" in only:
            a = {"root": str(root), "files": files, "files_256": args.decode_files_256,
                 "work": str(work)}  # fmt: skip
            decode = json.loads(child(worker("decode", a), 3600)[2])
        if "draft" in only:
            a = {"work": str(work), "files": args.draft_files, "side": 64}
            draft = json.loads(child(worker("draft", a), 3600)[2])
        seconds = time.perf_counter() - t0
    result = {
        "sizes": {str(n): r for n, r in per_size.items()},
        "decode": decode,
        "jpeg_draft": draft,
        **targets(per_size, decode),
        "targets": TARGETS,
        "settings": {
            "sizes": sizes,
            "methods": methods,
            "backbone": "test_resnet",
            "image_side": IMAGE_SIDE,
            "seconds": seconds,
        },  # fmt: skip
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },  # fmt: skip
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return result


if __name__ == "__main__":
    main()
