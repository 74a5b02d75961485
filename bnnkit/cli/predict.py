"""``bnnkit predict``: p(fake), uncertainty parts and a verdict (real / fake / uncertain) per file.

Streaming: images are decoded, run through the backbone once and sampled over the head batch by
batch; only per-image results are kept. A file that cannot be read (or explained) gets an error
entry and the others carry on.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click

from bnnkit.cli._common import console, device_option, err_console, fmt

UNCERTAINTY = ("total", "aleatoric", "epistemic")
FIELDS = ["path", "verdict", "p_fake", "total", "aleatoric", "epistemic", "error"]


def _pool(detector, fmap):
    """The detector's global pooling of an attention-output map, as in ``Detector.features``
    (which pools internally; ``--explain`` needs the map itself, so it pools here)."""
    if detector.pool not in ("avg", "max"):
        from bnnkit.errors import UsageError

        raise UsageError(f"--explain does not know the detector's pooling {detector.pool!r}")
    return fmap.mean(dim=(2, 3)) if detector.pool == "avg" else fmap.amax(dim=(2, 3))


def _attention_maps(detector, fmap):
    """Per-image ``(h, w)`` maps of where the detector looks, and what they are.

    Attention blocks that keep their spatial mask (``spatial``, ``cbam``: ``last_map``) give
    that mask; for the others (``none``, ``se``) the L2 norm over channels of the feature map
    after attention stands in for it."""
    import torch

    mask = getattr(detector.attention, "last_map", None)
    if (
        isinstance(mask, torch.Tensor)
        and mask.ndim == 4
        and mask.shape[:2] == (fmap.shape[0], 1)
        and mask.shape[2:] == fmap.shape[2:]
    ):
        return mask[:, 0].float().cpu(), "attention mask (0-1)"
    return fmap.float().norm(dim=1).cpu(), "feature-map norm (no spatial mask)"


def _denormalise(image, norm):
    """A normalised ``(3, H, W)`` image back to displayable ``(H, W, 3)`` pixels in [0, 1], with
    the normalisation the detector was fed (``detector.normalisation``)."""
    return norm.denormalise(image.float().cpu()).clamp(0, 1).permute(1, 2, 0).numpy()


class _ExplainWriter:
    """Writes one overlay PNG per image into ``folder`` with collision-free names."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.used: set[str] = set()

    def path_for(self, source: Path) -> Path:
        stem = source.stem or "image"
        name, i = f"{stem}.explain.png", 1
        while name in self.used:
            i += 1
            name = f"{stem}-{i}.explain.png"
        self.used.add(name)
        return self.folder / name


def _explain_one(method, fmap_b, attention_b, label, image_b, norm, k, device, title, path):
    from bnnkit.engine.loop import mc_predictive
    from bnnkit.report.plots import explain_figure, save_figure

    c, h, w = fmap_b.shape
    # Every location's feature vector of the attention output, sampled like a pooled feature.
    local = mc_predictive(method, fmap_b.reshape(c, h * w).T.contiguous(), k, device)
    fig = explain_figure(
        _denormalise(image_b, norm),
        attention_b.numpy(),
        label,
        local.epistemic.reshape(h, w).numpy(),
        title,
    )
    save_figure(fig, path)


def _verdict(p: float, u: dict[str, float], p_threshold: float, abstain: dict | None) -> str:
    if abstain is not None and u[abstain["score"]] > abstain["threshold"]:
        return "uncertain"
    return "fake" if p >= p_threshold else "real"


@click.command("predict")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt_",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the predictions to this file instead of stdout.",
)
@click.option(
    "--samples",
    "-k",
    type=click.IntRange(min=1),
    default=None,
    help="Posterior samples K (default: the K the threshold was calibrated with, else the "
    "recipe's eval.samples).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="p(fake) at or above which the verdict is 'fake'.",
)
@click.option(
    "--abstain/--no-abstain",
    default=True,
    show_default=True,
    help="Answer 'uncertain' when the uncertainty exceeds the threshold that `bnnkit evaluate` "
    "calibrated (RUN/threshold.json).",
)
@click.option(
    "--max-uncertainty",
    type=float,
    default=None,
    help="Abstain above this uncertainty (nats) instead of the calibrated threshold; the score "
    "is the calibrated one (total unless evaluate chose epistemic).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Also write, per image, a PNG overlaying the attention map and a patch-wise "
    "epistemic-uncertainty map on the image.",
)
@click.option(
    "--explain-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder for the --explain PNGs (default: beside --output, else RUN/explain/).",
)
@device_option
def command(
    run: Path,
    inputs: tuple[Path, ...],
    fmt_: str,
    output: Path | None,
    samples: int | None,
    batch_size: int,
    threshold: float,
    abstain: bool,
    max_uncertainty: float | None,
    explain: bool,
    explain_dir: Path | None,
    device: str,
) -> None:
    """Predict with a trained RUN on image files and folders (searched recursively).

    For each file: the verdict, p(fake) from the posterior predictive, and the total /
    aleatoric / epistemic uncertainty in nats. The verdict is 'uncertain' when the run has a
    calibrated abstention threshold (written by `bnnkit evaluate`) and the image's uncertainty
    is above it; otherwise 'fake' if p(fake) >= --threshold, else 'real'. A file that cannot
    be read gets an error entry; the others are still predicted.

    \b
    Examples:
      bnnkit predict runs/quickstart-20261121-101500 photo.png folder/
      bnnkit predict runs/quickstart-20261121-101500 folder/ --format json -o preds.json
      bnnkit predict runs/quickstart-20261121-101500 photo.png --explain
    """
    import torch

    from bnnkit.data.dataset import FileDataset, build_transform
    from bnnkit.data.images import list_images
    from bnnkit.engine.build import load_run
    from bnnkit.engine.device import select_device
    from bnnkit.engine.evaluation import THRESHOLD_FILE, read_threshold
    from bnnkit.engine.loop import make_loader, mc_predictive
    from bnnkit.engine.runs import resolve_run
    from bnnkit.errors import UsageError

    run_dir = resolve_run(run)
    dev, _ = select_device(device)
    recipe, detector, method, _meta = load_run(run_dir, dev)

    calibrated = read_threshold(run_dir) if abstain else None
    if abstain and calibrated is None and (run_dir / THRESHOLD_FILE).is_file():
        err_console().print(
            f"[yellow]warning:[/] {run_dir / THRESHOLD_FILE} was calibrated for other weights "
            "(the run was trained further); no 'uncertain' verdicts. Re-run `bnnkit evaluate`."
        )
    rule: dict[str, Any] | None = None
    if abstain and max_uncertainty is not None:
        score = calibrated["score"] if calibrated else "total"
        rule = {"score": score, "threshold": max_uncertainty, "source": "--max-uncertainty"}
    elif calibrated is not None:
        rule = {
            "score": calibrated["score"],
            "threshold": calibrated["threshold"],
            "coverage_target": calibrated.get("coverage_target"),
            "source": THRESHOLD_FILE,
        }
    if rule is not None and rule["threshold"] is None:
        rule = None
    k = samples or (calibrated or {}).get("samples") or recipe.eval.samples

    files: list[Path] = []
    missing: dict[str, str] = {}
    for item in inputs:
        if item.is_dir():
            files.extend(list_images(item))
        elif item.is_file():
            files.append(item)  # opened by content whatever its name; failures are reported
        else:
            missing[str(item)] = "no such file or directory"

    if explain:
        folder = explain_dir or (output.parent if output is not None else run_dir / "explain")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create explain folder {folder}: {exc}") from None
        writer = _ExplainWriter(folder)

    d = recipe.data
    norm = detector.normalisation  # what the run was trained with
    transform = build_transform(d.image_size, d.preprocess, train=False, norm=norm)
    dataset = FileDataset(files, transform)
    loader = make_loader(
        dataset, batch_size, shuffle=False, seed=recipe.seed, workers=0, device=dev
    )
    results: dict[int, dict[str, Any]] = {}
    unreadable: list[dict[str, Any]] = []
    detector.eval()
    torch.manual_seed(recipe.seed)
    with torch.no_grad():
        for batch in loader:
            unreadable += [_error_row(b.path, b.reason) for b in batch.broken]
            if not len(batch):
                continue
            images = batch.images.to(dev, non_blocking=True)
            if explain:  # one backbone pass gives the map to explain and the pooled features
                fmap = detector.feature_map(images)
                maps, label = _attention_maps(detector, fmap)
                feats = _pool(detector, fmap)
            else:
                feats = detector.features(images)
            pred = mc_predictive(method, feats, k, dev)
            for j, idx in enumerate(batch.indices.tolist()):
                u = {key: float(getattr(pred, key)[j]) for key in UNCERTAINTY}
                p = float(pred.p_fake[j])
                row = {
                    "path": str(files[idx]),
                    "verdict": _verdict(p, u, threshold, rule),
                    "p_fake": p,
                    **u,
                    "error": None,
                }
                if explain:
                    row["explain"] = None
                    target = writer.path_for(files[idx])
                    title = (
                        f"{files[idx].name}: {row['verdict']}, p(fake) {p:.3f}, "
                        f"epistemic {u['epistemic']:.2g} nats"
                    )
                    # Explaining draws extra posterior samples: fork the RNG so the verdicts
                    # are the same with and without --explain.
                    accel = dev.type != "cpu"
                    try:
                        with torch.random.fork_rng(
                            devices=[dev] if accel else [], device_type=dev.type if accel else None
                        ):
                            _explain_one(
                                method, fmap[j], maps[j], label, images[j], norm, k, dev,
                                title, target,
                            )  # fmt: skip
                        row["explain"] = str(target)
                    except (OSError, ValueError, RuntimeError) as exc:
                        row["error"] = f"explain failed: {exc}"
                results[idx] = row
    rows = [results[i] for i in sorted(results)] + unreadable
    rows += [_error_row(p, why) for p, why in missing.items()]
    _emit(rows, fmt_, output, run_dir, k, rule, explain)


def _error_row(path: str, why: str) -> dict[str, Any]:
    return {
        "path": path,
        "verdict": "error",
        "p_fake": None,
        "total": None,
        "aleatoric": None,
        "epistemic": None,
        "error": why,
    }


def _emit(rows, fmt_: str, output: Path | None, run_dir: Path, k: int, rule, explain: bool):
    text: str | None = None
    if fmt_ == "json":
        text = json.dumps(
            {"run": str(run_dir), "samples": k, "abstention": rule, "predictions": rows},
            indent=2,
        )
        text += "\n"
    elif fmt_ == "csv":
        buf = io.StringIO()
        fields = FIELDS + (["explain"] if explain else [])
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if text is not None:
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text, nl=False)
        return
    from rich.table import Table

    caption = None
    if rule is not None:
        caption = f"uncertain: {rule['score']} uncertainty > {rule['threshold']:.4g} nats"
        if rule.get("coverage_target"):
            caption += f" (calibrated for {100 * rule['coverage_target']:.0f}% coverage)"
    table = Table(
        title=f"predictions of {run_dir.name} (K={k})",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    table.add_column("file", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    for c in ("p(fake)", "total", "aleatoric", "epistemic"):
        table.add_column(c, justify="right", no_wrap=True)
    styles = {"fake": "red", "real": "green", "uncertain": "yellow"}
    for r in rows:
        if r["p_fake"] is None:
            table.add_row(r["path"], "[red]error[/]", r["error"], "", "", "")
            continue
        verdict = f"[{styles[r['verdict']]}]{r['verdict']}[/]"
        if r["error"]:
            verdict += f" [red]({r['error']})[/]"
        table.add_row(
            r["path"],
            verdict,
            fmt(r["p_fake"]),
            fmt(r["total"]),
            fmt(r["aleatoric"]),
            fmt(r["epistemic"], 4),
        )
    out = console()
    if output is not None:
        from rich.console import Console

        with open(output, "w", encoding="utf-8") as fh:
            Console(file=fh, width=120, highlight=False).print(table)
        out.print(f"wrote {output}")
    else:
        out.print(table)
    if explain:
        written = [r["explain"] for r in rows if r.get("explain")]
        if written:
            out.print(f"explain: {len(written)} PNG(s) in {Path(written[0]).parent}")
