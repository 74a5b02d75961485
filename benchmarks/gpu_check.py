"""GPU readiness in one command (``make gpu-check``): does every CUDA path work, and what does
bnnkit cost on this GPU?

Without a CUDA GPU (``torch.cuda.is_available()`` false, e.g. CI) it prints
``{"gpu": false, "status": "no GPU: skipped", ...}``, says "no GPU: skipped" on stderr and exits
0. With one it runs, each stage in its own process under a time cap (all of it within
``--budget`` seconds, 450 by default: under 8 minutes):

1. ``tests``: the tests marked ``gpu`` (``pytest -m gpu``: AMP, channels-last, device selection,
   the feature cache on CUDA, a one-epoch quickstart train + evaluate on ``cuda``);
2. ``bench``: ``benchmarks/run.py --device cuda --only predict,step,eval`` (resnet50, 224 px);
3. ``sweep``: ``benchmarks/run.py --device cuda --only sweep --repeats 1``;
4. ``throughput``: images/s of bnnkit's fine-tune step (the trainer's own step:
   ``EpochLoop._step`` with ``train.amp = "auto"`` and channels-last, plus its per-step
   bookkeeping) against a bare timm AMP training loop on the same model, batch and image size.

Prints ONE JSON object on stdout (progress goes to stderr); exits 1 if a stage failed or ran out
of time. ``--only`` runs a subset, e.g. to redo one stage in a short GPU session.

    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --only tests,throughput --out /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no downloads: every model is pretrained=False

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ("tests", "bench", "sweep", "throughput")
#: seconds each stage may take at most (all of them together fit the default budget)
CAPS = {"tests": 180, "bench": 90, "sweep": 75, "throughput": 60}
SKIPPED = "no GPU: skipped"


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- running a stage in its own process ---------------------------------------------------------
def run_stage(cmd: list[str], cap: float) -> dict[str, Any]:
    """Run ``cmd`` in REPO in its own session, its output on our stderr (fd 2: stdout carries
    only the JSON); killed, with all its children, after ``cap`` seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log(f"$ {' '.join(cmd)}  (at most {cap:.0f} s)")
    sys.stderr.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=2, stderr=2, start_new_session=True)
    try:
        code = proc.wait(timeout=cap)
        status = "ok" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code, status = None, "timed out"
    return {"status": status, "returncode": code, "seconds": time.perf_counter() - t0,
            "cap_seconds": cap}  # fmt: skip


def junit_counts(path: Path) -> dict[str, Any]:
    """Passed/failed/error/skipped counts and the failing tests of a pytest ``--junitxml``."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures: list[dict[str, str]] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        key = {"failure": "failed", "error": "errors", "skipped": "skipped"}.get(
            outcome.tag if outcome is not None else "", "passed"
        )
        counts[key] += 1
        if key in ("failed", "errors"):
            name = f"{case.get('classname')}::{case.get('name')}"
            failures.append({"test": name, "message": (outcome.get("message") or "")[:300]})
    return {**counts, "total": sum(counts.values()), "failures": failures}


def stage_tests(tmp: Path, cap: float) -> dict[str, Any]:
    xml = tmp / "gpu-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]  # fmt: skip
    out = run_stage(cmd, cap)
    if xml.is_file():
        out.update(junit_counts(xml))
        if out["status"] == "ok" and out["passed"] == 0:
            out["status"] = "failed"  # on a GPU the gpu tests must run, not all be skipped
    return out


def stage_json(name: str, args: list[str], tmp: Path, cap: float) -> dict[str, Any]:
    """A script that writes its JSON object to ``--out``; that object goes under ``result``."""
    path = tmp / f"{name}.json"
    out = run_stage([sys.executable, *args, "--out", str(path)], cap)
    if path.is_file():
        out["result"] = json.loads(path.read_text(encoding="utf-8"))
    elif out["status"] == "ok":
        out["status"] = "failed"
    return out


# -- the fine-tune throughput figure ------------------------------------------------------------
def _bench_module() -> Any:
    """``benchmarks/run.py`` as a module (its side-by-side timing and paired ratios)."""
    spec = importlib.util.spec_from_file_location("bnnkit_bench_run", HERE / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def finetune_throughput(
    device: torch.device,
    *,
    backbone: str = "resnet50",
    image_size: int = 224,
    batch: int = 64,
    methods: tuple[str, ...] = ("map", "bbb"),
    steps: int = 10,
    repeats: int = 7,
    budget_s: float = 40.0,
) -> dict[str, Any]:
    """Images per second of bnnkit's fine-tune step per method vs a bare timm AMP loop.

    bnnkit: the detector and method built from a recipe (``train.amp = "auto"``, channels-last
    on, as ``bnnkit train`` resolves them on ``device``), the trainer's step
    (``EpochLoop._step``: autocast, the method's loss, scaled backward, optimiser step,
    ``after_step``) and the loss/accuracy reads the epoch loop does after every step. Bare: a
    timm model with ``num_classes=2``, AdamW, ``F.cross_entropy`` under the same autocast dtype,
    memory layout and loss scaling. Both get the same images already on the device (no data
    loading). One call = ``steps`` steps; calls alternate side by side (benchmarks/run.py's
    timing) and the ratio is the median over repeats of bare seconds / bnnkit seconds, i.e.
    bnnkit images/s over bare images/s (1.0 = as fast)."""
    import timm
    import torch.nn.functional as F

    from bnnkit.engine.build import build
    from bnnkit.engine.device import Acceleration
    from bnnkit.engine.train.distributed import DistInfo
    from bnnkit.engine.train.epochs import EpochLoop, PhaseRun
    from bnnkit.plugins import get_registry
    from bnnkit.recipe import validate

    bench = _bench_module()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g).to(device)
    y = (torch.arange(batch) % 2).to(device)
    idx = torch.arange(batch)
    fns: dict[str, Any] = {}
    accel = None
    for name in methods:
        raw = {
            "name": f"gpu-check-{name}",
            "data": {"image_size": image_size},
            "model": {"backbone": {"name": backbone, "pretrained": False}},
            "inference": {"name": name},
            "train": {"amp": "auto", "channels_last": True},
        }
        recipe = validate(raw, get_registry(), source=f"gpu-check recipe ({name})")
        torch.manual_seed(0)
        detector, method = build(recipe, num_train=10_000)
        detector.to(device)
        method.to(device)
        accel = Acceleration.from_recipe(recipe.train, device)
        forward = accel.prepare(detector)
        t = recipe.train
        optimizer = method.configure_optimizer(
            [{"params": list(detector.head.parameters())},
             {"params": [*detector.backbone.parameters(), *detector.attention.parameters()],
              "lr": t.lr * t.backbone_lr_scale}],
            optimizer=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
        )  # fmt: skip
        method.begin_phase("finetune", 1, steps)
        phase = PhaseRun(
            "finetune", 1, steps, batches=lambda e, s: iter(()),
            loss=lambda i, tg, ix, m=method, f=forward: m.training_loss(f(i), tg, ix),
            learner=method, optimizer=optimizer, reduce_gradients=lambda p: None,
            validate=dict, train_body=True,
        )  # fmt: skip
        loop = EpochLoop(device, accel, DistInfo(), t.grad_clip, detector, None, None,
                         Path("."), lambda o, p: None)  # fmt: skip
        params = [q for group in optimizer.param_groups for q in group["params"]]
        images = accel.images(x)
        detector.train()

        def toolkit(loop=loop, phase=phase, params=params, images=images) -> None:
            for _ in range(steps):
                parts = loop._step(phase, params, images, y, idx, "gpu-check")
                _ = parts.loss.item(), float(parts.nll), float(parts.kl)
                _ = (parts.logits.argmax(-1) == y).sum().item()

        fns[name] = toolkit
    assert accel is not None, "no method to measure"
    torch.manual_seed(0)
    model = timm.create_model(backbone, pretrained=False, num_classes=2).to(device).train()
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    bare_x = accel.images(x)
    bare_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler(device.type, enabled=accel.amp_mode == "fp16")

    def bare() -> None:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=accel.dtype, enabled=accel.amp):
                loss = F.cross_entropy(model(bare_x), y)
            bare_opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(bare_opt)
            scaler.update()

    fns = {"bare_timm": bare, **fns}
    t0 = time.perf_counter()
    for fn in fns.values():  # warm-up (allocator, cuDNN), also sizes the repeats to the budget
        fn()
    bench._sync(device)
    warm = time.perf_counter() - t0
    repeats = max(2, min(repeats, int(budget_s / max(warm, 1e-6))))
    log(f"throughput: {list(fns)} x {repeats} repeats of {steps} steps ({backbone}, batch "
        f"{batch}, {image_size} px, amp {accel.amp_mode})")  # fmt: skip
    times = bench.time_side_by_side(fns, repeats, 0, device)
    per_s = {k: batch * steps / bench.med(v) for k, v in times.items()}
    return {
        "backbone": backbone, "image_size": image_size, "batch": batch,
        "amp": accel.amp_mode, "channels_last": accel.channels_last,
        "steps_per_call": steps, "repeats": repeats,
        "images_per_second": per_s,
        "bnnkit_over_bare_timm": {
            m: bench.paired_ratio(times["bare_timm"], times[m]) for m in methods
        },
    }  # fmt: skip


# -- main ---------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform()}  # fmt: skip


def device_info() -> dict[str, Any]:
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"index": index, "name": props.name, "count": torch.cuda.device_count(),
            "capability": list(torch.cuda.get_device_capability(index)),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported(),
            "cudnn": torch.backends.cudnn.version()}  # fmt: skip


def check(only: list[str], budget: float) -> tuple[dict[str, Any], bool]:
    """Every selected stage, each capped by CAPS and by what is left of ``budget``."""
    start = time.perf_counter()
    result: dict[str, Any] = {"gpu": True, "status": "ok", **environment(),
                              "device": device_info(), "budget_seconds": budget}  # fmt: skip
    bench_args = [str(HERE / "run.py"), "--device", "cuda"]
    with tempfile.TemporaryDirectory(prefix="bnnkit-gpu-check-") as name:
        tmp = Path(name)
        for stage in only:
            cap = min(CAPS[stage], budget - (time.perf_counter() - start))
            if cap < 15:
                result[stage] = {"status": "skipped", "reason": "out of the time budget"}
                continue
            if stage == "tests":
                result[stage] = stage_tests(tmp, cap)
            elif stage == "bench":
                args = [*bench_args, "--repeats", "5", "--only", "predict,step,eval"]
                result[stage] = stage_json(stage, args, tmp, cap)
            elif stage == "sweep":
                args = [*bench_args, "--repeats", "1", "--only", "sweep"]
                result[stage] = stage_json(stage, args, tmp, cap)
            else:
                args = [str(Path(__file__).resolve()), "--stage", "throughput"]
                result[stage] = stage_json(stage, args, tmp, cap)
            log(f"{stage}: {result[stage]['status']} ({result[stage]['seconds']:.0f} s)")
    failed = [s for s in only if result[s]["status"] != "ok"]
    result["status"] = f"failed: {', '.join(failed)}" if failed else "ok"
    result["seconds"] = time.perf_counter() - start
    return result, not failed


def summary(result: dict[str, Any]) -> str:
    tests = result.get("tests") or {}
    counts = (f"; gpu tests {tests.get('passed', '?')} passed, {tests.get('failed', '?')} "
              f"failed" if tests else "")  # fmt: skip
    ratios = (result.get("throughput") or {}).get("result", {}).get("bnnkit_over_bare_timm")
    speed = f"; fine-tune images/s over bare timm {ratios}" if ratios else ""
    return f"{result['status']} in {result['seconds']:.0f} s on {result['device']['name']}" + (
        counts + speed
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(STAGES), help="subset of: " + ", ".join(STAGES))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all stages")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--stage", choices=["throughput"], help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(STAGES)
    if unknown:
        parser.error(f"--only: unknown stage(s) {sorted(unknown)}")
    ok = True
    if args.stage == "throughput":
        result: dict[str, Any] = finetune_throughput(torch.device("cuda"))
    elif not torch.cuda.is_available():
        result = {"gpu": False, "status": SKIPPED,
                  "reason": "torch.cuda.is_available() is false", **environment(),
                  "device": None}  # fmt: skip
        print(f"gpu-check: {SKIPPED} (torch.cuda.is_available() is false)", file=sys.stderr)
    else:
        result, ok = check(only, args.budget)
        print(f"gpu-check: {summary(result)}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
