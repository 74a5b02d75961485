"""Predicting image files with a trained run: p(fake), the uncertainty parts and a verdict per
file (``bnnkit predict`` is a thin layer over :func:`predict_run`).

Streaming: images are decoded, run through the backbone once and sampled over the head batch by
batch (:func:`~bnnkit.engine.loop.stream_predictive`); only per-image results are kept. A file
that cannot be read (or explained) gets an error entry and the others carry on. ``--explain``
hooks into the same loop: per image, an overlay of where the detector looks and of the
patch-wise epistemic uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnnkit.data.dataset import FileDataset, Normalisation, build_transform
from bnnkit.data.images import list_images
from bnnkit.engine.build import load_run
from bnnkit.engine.loop import make_loader, posterior_samples, predict_features, stream_predictive
from bnnkit.errors import UsageError
from bnnkit.metrics.records import UNCERTAINTY_KEYS, Predictions
from bnnkit.run.layout import RunLayout
from bnnkit.run.threshold import abstention_rule, read_threshold, verdict

__all__ = ["FIELDS", "PredictResult", "attention_maps", "collect_files", "predict_run"]

#: the columns of a prediction row (``explain`` is added with ``--explain``).
FIELDS = ["path", "verdict", "p_fake", *UNCERTAINTY_KEYS, "error"]


@dataclass
class PredictResult:
    """Rows (one per input file, in input order, then unreadable and missing ones), the K used
    and the abstention rule applied (None: no 'uncertain' verdicts)."""

    rows: list[dict[str, Any]]
    samples: int
    rule: dict[str, Any] | None
    explain_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)


def collect_files(inputs: Sequence[Path]) -> tuple[list[Path], dict[str, str]]:
    """Files to predict (folders searched recursively) and ``{input: why}`` for missing ones."""
    files: list[Path] = []
    missing: dict[str, str] = {}
    for item in inputs:
        if item.is_dir():
            files.extend(list_images(item))
        elif item.is_file():
            files.append(item)  # opened by content whatever its name; failures are reported
        else:
            missing[str(item)] = "no such file or directory"
    return files, missing


def error_row(path: str, why: str) -> dict[str, Any]:
    return {"path": path, "verdict": "error", **dict.fromkeys(["p_fake", *UNCERTAINTY_KEYS]),
            "error": why}  # fmt: skip


def attention_maps(detector, fmap: Tensor) -> tuple[Tensor, str]:
    """Per-image ``(h, w)`` maps of where the detector looks, and what they are.

    Attention blocks that keep their spatial mask (``spatial``, ``cbam``: ``last_map``) give
    that mask; for the others (``none``, ``se``) the L2 norm over channels of the feature map
    after attention stands in for it."""
    mask = getattr(detector.attention, "last_map", None)
    if (
        isinstance(mask, torch.Tensor)
        and mask.ndim == 4
        and mask.shape[:2] == (fmap.shape[0], 1)
        and mask.shape[2:] == fmap.shape[2:]
    ):
        return mask[:, 0].float().cpu(), "attention mask (0-1)"
    return fmap.float().norm(dim=1).cpu(), "feature-map norm (no spatial mask)"


def _denormalise(image: Tensor, norm: Normalisation):
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
    from bnnkit.report.plots import explain_figure, save_figure

    c, h, w = fmap_b.shape
    # Every location's feature vector of the attention output, sampled like a pooled feature.
    local = predict_features(method, fmap_b.reshape(c, h * w).T.contiguous(), k, device)
    fig = explain_figure(
        _denormalise(image_b, norm),
        attention_b.numpy(),
        label,
        local.epistemic.reshape(h, w).numpy(),
        title,
    )
    save_figure(fig, path)


def _explain_hook(detector, method, files, rows, k, device, folder) -> Callable:
    """The per-batch hook of ``--explain``: an overlay PNG per image, written beside its row.
    Explaining draws extra posterior samples: the RNG is forked so the verdicts are the same
    with and without ``--explain``."""
    writer = _ExplainWriter(folder)
    accel = device.type != "cpu"

    def hook(batch, images: Tensor, fmap: Tensor, part: Predictions) -> None:
        maps, label = attention_maps(detector, fmap)
        for j, idx in enumerate(batch.indices.tolist()):
            row = rows[idx]
            row["explain"] = None
            target = writer.path_for(files[idx])
            title = (
                f"{files[idx].name}: {row['verdict']}, p(fake) {row['p_fake']:.3f}, "
                f"epistemic {row['epistemic']:.2g} nats"
            )
            try:
                with torch.random.fork_rng(
                    devices=[device] if accel else [], device_type=device.type if accel else None
                ):
                    _explain_one(
                        method, fmap[j], maps[j], label, images[j], detector.normalisation, k,
                        device, title, target,
                    )  # fmt: skip
                row["explain"] = str(target)
            except (OSError, ValueError, RuntimeError) as exc:
                row["error"] = f"explain failed: {exc}"

    return hook


def predict_run(
    run_dir: Path,
    inputs: Sequence[Path],
    *,
    device: torch.device,
    samples: int | None = None,
    batch_size: int = 32,
    p_threshold: float = 0.5,
    abstain: bool = True,
    max_uncertainty: float | None = None,
    explain: bool = False,
    explain_dir: Path | None = None,
) -> PredictResult:
    """Predict every file of ``inputs`` with the run. With ``abstain``, the verdict is
    'uncertain' above the calibrated threshold of ``threshold.json`` (or ``max_uncertainty``),
    sampled with the K and the inference options it was calibrated with (unless ``samples``)."""
    layout = RunLayout(run_dir)
    calibrated = read_threshold(layout.root) if abstain else None
    warnings = []
    if abstain and calibrated is None and layout.threshold.is_file():
        warnings.append(
            f"{layout.threshold} was calibrated for other weights (the run was trained "
            "further); no 'uncertain' verdicts. Re-run `bnnkit evaluate`."
        )
    inference = (calibrated or {}).get("inference_overrides")
    recipe, detector, method, _meta = load_run(layout.root, device, inference=inference)
    rule = abstention_rule(calibrated, max_uncertainty) if abstain else None
    k = posterior_samples(recipe, "predict", requested=samples, calibrated=calibrated)
    files, missing = collect_files(inputs)
    folder = None
    if explain:
        folder = explain_dir or layout.root / "explain"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create explain folder {folder}: {exc}") from None

    d = recipe.data
    transform = build_transform(
        d.image_size, d.preprocess, train=False, norm=detector.normalisation
    )
    loader = make_loader(
        FileDataset(files, transform), batch_size, seed=recipe.seed, workers=0, device=device
    )
    rows: dict[int, dict[str, Any]] = {}

    def add_rows(batch, images, fmap, part: Predictions) -> None:
        for j, idx in enumerate(batch.indices.tolist()):
            u, p = part.uncertainty(j), float(part.p_fake[j])
            rows[idx] = {"path": str(files[idx]), "verdict": verdict(p, u, p_threshold, rule),
                         "p_fake": p, **u, "error": None}  # fmt: skip

    hooks = [add_rows]
    if explain:
        hooks.append(_explain_hook(detector, method, files, rows, k, device, folder))
    torch.manual_seed(recipe.seed)
    _, stats = stream_predictive(
        detector, method, loader, k, device,
        on_batch=lambda *args: [h(*args) for h in hooks],
    )  # fmt: skip
    out = [rows[i] for i in sorted(rows)] + [error_row(b.path, b.reason) for b in stats.broken]
    out += [error_row(p, why) for p, why in missing.items()]
    return PredictResult(out, k, rule, folder, warnings)
