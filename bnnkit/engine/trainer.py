"""The training loop: one recipe -> one run directory.

``train.backbone = "finetune"`` trains backbone, attention and head together on the method's loss;
``"frozen"`` extracts pooled features once (cached on disk, see :mod:`bnnkit.engine.cache`) and
trains the head alone on them, which takes seconds for every method.
"""

from __future__ import annotations

import csv
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, TensorDataset

from bnnkit import __version__
from bnnkit.data.dataset import ImageDataset, build_transform
from bnnkit.data.genimage import index_split
from bnnkit.engine.build import build
from bnnkit.engine.cache import cached_features
from bnnkit.engine.checkpoint import atomic_write_text, save_checkpoint
from bnnkit.engine.loop import extract_features, make_loader, mc_predictive, worker_count
from bnnkit.errors import BnnkitError, UsageError
from bnnkit.plugins import get_registry
from bnnkit.recipe import Recipe, dump_recipe

HISTORY_FIELDS = ["epoch", "loss", "nll", "kl", "train_acc", "val_acc", "val_nll", "seconds"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    broken: list[dict[str, str]] = field(default_factory=list)


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
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

    # -- data ------------------------------------------------------------------------------------
    def _datasets(self) -> tuple[ImageDataset, ImageDataset]:
        d, r = self.recipe.data, self.recipe
        gens = list(d.train_generators)
        train = index_split(
            d.root, gens, "train", limit=d.train_limit, balance=d.balance, seed=r.seed
        )
        val = index_split(d.root, gens, "val", limit=d.val_limit, balance=d.balance, seed=r.seed)
        if not train:
            raise UsageError(f"no training images found under '{d.root}' for {', '.join(gens)}")
        frozen = r.train.backbone == "frozen"
        train_tf = build_transform(d.image_size, d.preprocess, train=not frozen)
        eval_tf = build_transform(d.image_size, d.preprocess, train=False)
        return ImageDataset(train, train_tf, gens), ImageDataset(val, eval_tf, gens)

    def _note_broken(self, items) -> None:
        for b in items:
            self.broken[b.path] = b.reason

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        r = self.recipe
        seed_everything(r.seed)
        train_ds, val_ds = self._datasets()
        detector, method = build(r, num_train=len(train_ds))
        detector.to(self.device)
        workers = worker_count(r.data.num_workers, self.device)
        frozen = r.train.backbone == "frozen"
        (self.run_dir / "recipe.toml").write_text(dump_recipe(r), encoding="utf-8")
        atomic_write_text(
            self.run_dir / "env.json", json.dumps(_environment(r, self.device_note), indent=2)
        )

        val_loader = make_loader(
            val_ds,
            r.eval.batch_size,
            shuffle=False,
            seed=r.seed,
            workers=workers,
            device=self.device,
        )
        with _progress(self.console) as progress:
            if frozen:
                for p in [*detector.backbone.parameters(), *detector.attention.parameters()]:
                    p.requires_grad_(False)
                extract_loader = make_loader(
                    train_ds,
                    r.eval.batch_size,
                    shuffle=False,
                    seed=r.seed,
                    workers=workers,
                    device=self.device,
                )
                feats = cached_features(
                    detector, extract_loader, self.device, r, "train", self.cache_dir, progress
                )
                self._note_broken(feats.broken)
                train_loader = DataLoader(
                    TensorDataset(feats.features, feats.labels),
                    batch_size=r.train.batch_size,
                    shuffle=True,
                    generator=torch.Generator().manual_seed(r.seed),
                )
                val_feats = cached_features(
                    detector, val_loader, self.device, r, "val", self.cache_dir, progress
                )
                self._note_broken(val_feats.broken)
                param_groups = [{"params": list(detector.head.parameters())}]
            else:
                train_loader = make_loader(
                    train_ds,
                    r.train.batch_size,
                    shuffle=True,
                    seed=r.seed,
                    workers=workers,
                    device=self.device,
                )
                val_feats = None
                backbone_params = [
                    *detector.backbone.parameters(),
                    *detector.attention.parameters(),
                ]
                param_groups = [
                    {"params": list(detector.head.parameters())},
                    {"params": backbone_params, "lr": r.train.lr * r.train.backbone_lr_scale},
                ]
            optimizer = method.configure_optimizer(
                param_groups,
                optimizer=r.train.optimizer,
                lr=r.train.lr,
                weight_decay=r.train.weight_decay,
            )
            history: list[dict[str, float]] = []
            t_start = time.perf_counter()
            step = 0
            for epoch in range(1, r.train.epochs + 1):
                t_epoch = time.perf_counter()
                task = progress.add_task(
                    f"epoch {epoch}/{r.train.epochs}", total=len(train_loader), stats=""
                )
                sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "correct": 0.0, "n": 0.0}
                detector.train()
                if frozen:
                    detector.backbone.eval()
                    detector.attention.eval()
                for batch in train_loader:
                    if frozen:
                        x, y = batch[0].to(self.device), batch[1].to(self.device)
                        features = x
                    else:
                        self._note_broken(batch.broken)
                        if not len(batch):
                            progress.advance(task)
                            continue
                        y = batch.labels.to(self.device, non_blocking=True)
                        features = detector.features(
                            batch.images.to(self.device, non_blocking=True)
                        )
                    parts = method.training_loss(features, y)
                    if not torch.isfinite(parts.loss):
                        raise BnnkitError(
                            f"loss became {parts.loss.item()} at epoch {epoch}, step {step + 1}; "
                            f"stopped. The last good checkpoint is in {self.run_dir}",
                            hint="lower train.lr or set train.grad_clip (e.g. 1.0)",
                        )
                    optimizer.zero_grad(set_to_none=True)
                    parts.loss.backward()
                    if r.train.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(
                            [p for g in param_groups for p in g["params"]], r.train.grad_clip
                        )
                    optimizer.step()
                    step += 1
                    method.after_step(step)
                    n = y.shape[0]
                    sums["loss"] += parts.loss.item() * n
                    sums["nll"] += float(parts.nll) * n
                    sums["kl"] += float(parts.kl) * n
                    sums["correct"] += (parts.logits.argmax(-1) == y).sum().item()
                    sums["n"] += n
                    m = max(sums["n"], 1)
                    progress.update(
                        task,
                        advance=1,
                        stats=f"loss {sums['loss'] / m:.4f}  nll {sums['nll'] / m:.4f}  "
                        f"kl {sums['kl'] / m:.3g}  acc {sums['correct'] / m:.3f}",
                    )
                method.after_epoch(epoch)
                m = max(sums["n"], 1)
                row = {
                    "epoch": epoch,
                    "loss": sums["loss"] / m,
                    "nll": sums["nll"] / m,
                    "kl": sums["kl"] / m,
                    "train_acc": sums["correct"] / m,
                }
                row.update(self._validate(detector, method, val_loader, val_feats))
                row["seconds"] = time.perf_counter() - t_epoch
                history.append(row)
                progress.update(
                    task,
                    stats=progress.tasks[task].fields["stats"] + f"  val_acc {row['val_acc']:.3f}",
                )
                self._write_history(history)
                self._checkpoint(
                    detector,
                    method,
                    optimizer,
                    epoch,
                    complete=False,
                    num_train=len(train_ds),
                    seconds=time.perf_counter() - t_start,
                )
            if method.needs_train_features:
                if frozen:
                    tf, tl = feats.features, feats.labels
                else:
                    loader = make_loader(
                        ImageDataset(
                            train_ds.samples,
                            build_transform(r.data.image_size, r.data.preprocess, train=False),
                            train_ds.generators,
                        ),
                        r.eval.batch_size,
                        shuffle=False,
                        seed=r.seed,
                        workers=workers,
                        device=self.device,
                    )
                    f = extract_features(detector, loader, self.device)
                    tf, tl = f.features, f.labels
                method.after_training(tf.to(self.device), tl.to(self.device))
            else:
                method.after_training(None, None)
        seconds = time.perf_counter() - t_start
        self._checkpoint(
            detector,
            method,
            optimizer,
            r.train.epochs,
            complete=True,
            num_train=len(train_ds),
            seconds=seconds,
        )
        broken = [{"path": p, "reason": why} for p, why in sorted(self.broken.items())]
        if broken:
            atomic_write_text(self.run_dir / "broken_files.json", json.dumps(broken, indent=2))
        return TrainResult(self.run_dir, history, seconds, broken)

    @torch.no_grad()
    def _validate(self, detector, method, val_loader, val_feats) -> dict[str, float]:
        if val_feats is None:
            val_feats = extract_features(detector, val_loader, self.device)
            self._note_broken(val_feats.broken)
        if val_feats.labels.numel() == 0:
            return {"val_acc": float("nan"), "val_nll": float("nan")}
        k = min(self.recipe.eval.samples, 16)
        pred = mc_predictive(method, val_feats.features, k, self.device)
        y = val_feats.labels
        acc = ((pred.p_fake >= 0.5).long() == y).float().mean().item()
        p_true = torch.where(y == 1, pred.p_fake, 1 - pred.p_fake).clamp_min(1e-12)
        return {"val_acc": acc, "val_nll": (-p_true.log()).mean().item()}

    def _write_history(self, history: list[dict[str, float]]) -> None:
        path = self.run_dir / "history.csv"
        tmp = path.with_name(".history.csv.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            for row in history:
                writer.writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
                )
        tmp.replace(path)

    def _checkpoint(
        self,
        detector,
        method,
        optimizer,
        epoch: int,
        *,
        complete: bool,
        num_train: int,
        seconds: float,
    ) -> None:
        state = {"optimizer": optimizer.state_dict(), "method": method.extra_state()}
        meta = {
            "epoch": epoch,
            "complete": complete,
            "num_train": num_train,
            "feature_dim": detector.feature_dim,
            "method": self.recipe.inference.name,
            "method_meta": method.extra_meta(),
            "train_seconds": seconds,
            "bnnkit": __version__,
        }
        save_checkpoint(self.run_dir, detector, state, meta)
