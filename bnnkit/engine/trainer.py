"""The training loop: one recipe -> one run directory.

Phases, by ``train.backbone`` and the method's ``joint_finetune``:

- ``finetune`` + joint method (MAP, BBB, LRT, MC-dropout): backbone, attention and head learn
  together on the method's loss.
- ``finetune`` + non-joint method (SG-MCMC, Laplace, head ensembles): the detector is first
  fine-tuned with MAP (cross-entropy), then its pooled features are extracted once and the
  method runs on them (``train.head_epochs``, default ``train.epochs``).
- ``frozen``: features are extracted once into the on-disk cache (:mod:`bnnkit.engine.cache`)
  and every method trains on them in seconds.
"""

from __future__ import annotations

import csv
import json
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from bnnkit import __version__
from bnnkit.data.dataset import ImageDataset, build_transform
from bnnkit.data.genimage import index_split
from bnnkit.engine.build import build
from bnnkit.engine.cache import cached_features
from bnnkit.engine.checkpoint import atomic_write_text, save_checkpoint
from bnnkit.engine.loop import Features, extract_features, make_loader, mc_predictive, worker_count
from bnnkit.errors import BnnkitError, UsageError
from bnnkit.methods.base import InferenceMethod
from bnnkit.plugins import get_registry
from bnnkit.recipe import Recipe, dump_recipe

HISTORY_FIELDS = [
    "phase", "epoch", "loss", "nll", "kl", "train_acc", "val_acc", "val_nll", "seconds",
]  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    broken: list[dict[str, str]] = field(default_factory=list)


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )


def _environment(recipe: Recipe, device_note: str) -> dict[str, Any]:
    registry = get_registry()
    used = {
        "backbone": registry.get("backbone", recipe.model.backbone.name),
        "attention": registry.get("attention", recipe.model.attention.name),
        "head": registry.get("head", recipe.head_name(registry)),
        "method": registry.get("method", recipe.inference.name),
    }
    return {
        "bnnkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_note,
        "seed": recipe.seed,
        "plugins": {
            kind: {"name": e.name, "package": e.package, "version": e.version}
            for kind, e in used.items()
        },
    }


# A training step's input: (features or images, labels, dataset indices).
StepInput = tuple[Tensor, Tensor, Tensor]


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        device: torch.device,
        device_note: str,
        console: Console | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.device = device
        self.device_note = device_note
        self.console = console
        self.cache_dir = cache_dir or Path(".bnnkit-cache")
        self.broken: dict[str, str] = {}
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.t_start = 0.0

    # -- data ------------------------------------------------------------------------------------
    def _datasets(self) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
        """(train with augmentation, train without, val)."""
        d, r = self.recipe.data, self.recipe
        gens = list(d.train_generators)
        opts = {"balance": d.balance, "seed": r.seed}
        train = index_split(d.root, gens, "train", limit=d.train_limit, **opts)
        val = index_split(d.root, gens, "val", limit=d.val_limit, **opts)
        if not train:
            raise UsageError(f"no training images found under '{d.root}' for {', '.join(gens)}")
        eval_tf = build_transform(d.image_size, d.preprocess, train=False)
        train_tf = build_transform(d.image_size, d.preprocess, train=True)
        return (
            ImageDataset(train, train_tf, gens),
            ImageDataset(train, eval_tf, gens),
            ImageDataset(val, eval_tf, gens),
        )

    def _note_broken(self, items: Iterable) -> None:
        for b in items:
            self.broken[b.path] = b.reason

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        r = self.recipe
        workers = worker_count(r.data.num_workers, self.device)
        return make_loader(
            dataset, batch_size, shuffle=shuffle, seed=r.seed, workers=workers, device=self.device
        )

    def _features(self, detector, dataset, split: str, progress: Progress) -> Features:
        loader = self._loader(dataset, self.recipe.eval.batch_size, shuffle=False)
        if self.recipe.train.backbone == "frozen":
            feats = cached_features(
                detector, loader, self.device, self.recipe, split, self.cache_dir, progress
            )
        else:
            task = progress.add_task(f"features ({split})", total=len(dataset), stats="")
            feats = extract_features(
                detector, loader, self.device, lambda n: progress.advance(task, n)
            )
        self._note_broken(feats.broken)
        return feats

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        r = self.recipe
        seed_everything(r.seed)
        train_aug, train_plain, val_ds = self._datasets()
        n_train = len(train_aug)
        detector, method = build(r, num_train=n_train)
        detector.to(self.device)
        method.to(self.device)
        (self.run_dir / "recipe.toml").write_text(dump_recipe(r), encoding="utf-8")
        env = _environment(r, self.device_note)
        atomic_write_text(self.run_dir / "env.json", json.dumps(env, indent=2))
        frozen = r.train.backbone == "frozen"
        self.t_start = time.perf_counter()
        with _progress(self.console) as progress:
            head_params = list(detector.head.parameters())
            body_params = [*detector.backbone.parameters(), *detector.attention.parameters()]
            if not frozen:
                # Phase 1: fine-tune the whole detector, with the method's own loss when it
                # allows it, else with MAP before the method runs on frozen features.
                joint = method.joint_finetune
                learner = method if joint else InferenceMethod(detector.head, num_train=n_train)
                body_lr = r.train.lr * r.train.backbone_lr_scale
                optimizer = learner.configure_optimizer(
                    [{"params": head_params}, {"params": body_params, "lr": body_lr}],
                    optimizer=r.train.optimizer,
                    lr=r.train.lr,
                    weight_decay=r.train.weight_decay,
                )
                loader = self._loader(train_aug, r.train.batch_size, shuffle=True)
                val_loader = self._loader(val_ds, r.eval.batch_size, shuffle=False)
                phase = "finetune" if joint else "finetune-map"

                def image_batches() -> Iterable[StepInput]:
                    for batch in loader:
                        self._note_broken(batch.broken)
                        if len(batch):
                            images = batch.images.to(self.device, non_blocking=True)
                            yield detector.features(images), batch.labels, batch.indices

                def validate_images() -> dict[str, float]:
                    feats = extract_features(detector, val_loader, self.device)
                    self._note_broken(feats.broken)
                    return self._validate(method if joint else learner, feats)

                self._epochs(
                    phase, r.train.epochs, len(loader), image_batches, learner, optimizer,
                    [*head_params, *body_params], detector, method, progress,
                    validate_images, train_body=True,
                )  # fmt: skip
                if joint:
                    return self._finish(detector, method, train_plain, progress)
            # Phase 2: the method on pooled features, extracted once (cached when frozen).
            for p in body_params:
                p.requires_grad_(False)
            feats = self._features(detector, train_plain, "train", progress)
            val_feats = self._features(detector, val_ds, "val", progress)
            optimizer = method.configure_optimizer(
                [{"params": head_params}],
                optimizer=r.train.optimizer,
                lr=r.train.lr,
                weight_decay=r.train.weight_decay,
            )
            feature_loader = DataLoader(
                TensorDataset(feats.features, feats.labels, feats.indices),
                batch_size=r.train.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(r.seed),
            )

            def feature_batches() -> Iterable[StepInput]:
                for x, y, idx in feature_loader:
                    yield x.to(self.device, non_blocking=True), y, idx

            self._epochs(
                "head", r.train.head_epochs or r.train.epochs, len(feature_loader),
                feature_batches, method, optimizer, head_params, detector, method, progress,
                lambda: self._validate(method, val_feats), train_body=False,
            )  # fmt: skip
            return self._finish(detector, method, train_plain, progress, feats)

    def _epochs(
        self,
        phase: str,
        epochs: int,
        steps_per_epoch: int,
        batches: Callable[[], Iterable[StepInput]],
        learner: InferenceMethod,
        optimizer: torch.optim.Optimizer,
        params: list[Tensor],
        detector,
        method: InferenceMethod,
        progress: Progress,
        validate: Callable[[], dict[str, float]],
        *,
        train_body: bool,
    ) -> None:
        r = self.recipe
        for epoch in range(1, epochs + 1):
            t_epoch = time.perf_counter()
            label = f"{phase} {epoch}/{epochs}"
            task = progress.add_task(label, total=steps_per_epoch, stats="")
            sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "correct": 0.0, "n": 0.0}
            detector.train()
            if not train_body:
                detector.backbone.eval()
                detector.attention.eval()
            for features, y, idx in batches():
                y = y.to(self.device, non_blocking=True)
                parts = learner.training_loss(features, y, idx.to(self.device))
                if not torch.isfinite(parts.loss):
                    raise BnnkitError(
                        f"loss became {parts.loss.item()} in {phase} epoch {epoch}, step "
                        f"{self.step + 1}; training stopped. The last good checkpoint is in "
                        f"{self.run_dir}",
                        hint="lower train.lr or set train.grad_clip (e.g. 1.0)",
                    )
                optimizer.zero_grad(set_to_none=True)
                parts.loss.backward()
                if r.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, r.train.grad_clip)
                optimizer.step()
                self.step += 1
                learner.after_step(self.step)
                n = y.shape[0]
                sums["loss"] += parts.loss.item() * n
                sums["nll"] += float(parts.nll) * n
                sums["kl"] += float(parts.kl) * n
                sums["correct"] += (parts.logits.argmax(-1) == y).sum().item()
                sums["n"] += n
                m = max(sums["n"], 1)
                stats = (
                    f"loss {sums['loss'] / m:.4f} nll {sums['nll'] / m:.4f} "
                    f"kl {sums['kl'] / m:.3g} acc {sums['correct'] / m:.3f}"
                )
                progress.update(task, advance=1, stats=stats)
            learner.after_epoch(epoch)
            m = max(sums["n"], 1)
            row: dict[str, Any] = {
                "phase": phase,
                "epoch": epoch,
                "loss": sums["loss"] / m,
                "nll": sums["nll"] / m,
                "kl": sums["kl"] / m,
                "train_acc": sums["correct"] / m,
            }
            row.update(validate())
            row["seconds"] = time.perf_counter() - t_epoch
            self.history.append(row)
            progress.update(task, stats=f"{stats} val_acc {row['val_acc']:.3f}")
            self._write_history()
            self._checkpoint(detector, method, optimizer, phase, epoch, complete=False)

    def _finish(self, detector, method, train_plain, progress, feats: Features | None = None):
        if method.needs_train_features:
            if feats is None:
                feats = self._features(detector, train_plain, "train", progress)
            method.after_training(feats.features.to(self.device), feats.labels.to(self.device))
        else:
            method.after_training(None, None)
        self._checkpoint(detector, method, None, "done", 0, complete=True)
        broken = [{"path": p, "reason": why} for p, why in sorted(self.broken.items())]
        if broken:
            atomic_write_text(self.run_dir / "broken_files.json", json.dumps(broken, indent=2))
        return TrainResult(self.run_dir, self.history, time.perf_counter() - self.t_start, broken)

    @torch.no_grad()
    def _validate(self, method: InferenceMethod, feats: Features) -> dict[str, float]:
        if feats.labels.numel() == 0:
            return {"val_acc": float("nan"), "val_nll": float("nan")}
        k = min(self.recipe.eval.samples, 16)
        pred = mc_predictive(method, feats.features, k, self.device)
        y = feats.labels
        acc = ((pred.p_fake >= 0.5).long() == y).float().mean().item()
        p_true = torch.where(y == 1, pred.p_fake, 1 - pred.p_fake).clamp_min(1e-12)
        return {"val_acc": acc, "val_nll": (-p_true.log()).mean().item()}

    def _write_history(self) -> None:
        path = self.run_dir / "history.csv"
        tmp = path.with_name(".history.csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            for row in self.history:
                writer.writerow(
                    {k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()}
                )
        tmp.replace(path)

    def _checkpoint(self, detector, method, optimizer, phase: str, epoch: int, *, complete: bool):
        state = {
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "method": method.extra_state(),
        }
        meta = {
            "phase": phase,
            "epoch": epoch,
            "step": self.step,
            "complete": complete,
            "num_train": method.num_train,
            "feature_dim": detector.feature_dim,
            "method": self.recipe.inference.name,
            "method_meta": method.extra_meta(),
            "train_seconds": time.perf_counter() - self.t_start,
            "bnnkit": __version__,
        }
        save_checkpoint(self.run_dir, detector, state, meta)
