"""The training loop: one recipe -> one run directory, resumable at any step.

Phases, by ``train.backbone`` and the method's ``joint_finetune``:

- ``finetune`` + joint method (MAP, BBB, LRT, MC-dropout): backbone, attention and head learn
  together on the method's loss.
- ``finetune`` + non-joint method (SG-MCMC, Laplace, head ensembles): the detector is first
  fine-tuned with MAP (cross-entropy) (phase ``finetune-map``), then its pooled features are
  extracted once and the method runs on them (phase ``head``, ``train.head_epochs`` epochs,
  default ``train.epochs``).
- ``frozen``: features are extracted once into the on-disk cache (:mod:`bnnkit.engine.cache`)
  and every method trains on them in seconds (phase ``head``).

Resuming is exact on the CPU: each epoch's data order comes from a generator seeded by
(seed, phase, epoch), the global RNG state is saved in every checkpoint, and a checkpoint taken
mid-epoch (on SIGINT/SIGTERM) records how many batches of the epoch are done. With DataLoader
workers, augmentation randomness lives in the workers, so a mid-epoch resume is then close but
not bit-identical (an epoch-boundary resume still is).
"""

from __future__ import annotations

import csv
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch.utils.data import DataLoader

from bnnkit import __version__
from bnnkit.data.dataset import ImageDataset, Normalisation, build_transform
from bnnkit.data.genimage import index_split
from bnnkit.engine.build import build
from bnnkit.engine.cache import cached_features
from bnnkit.engine.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from bnnkit.engine.distributed import (
    DistInfo,
    average_gradients,
    barrier,
    shard,
    sum_across,
)
from bnnkit.engine.loop import (
    Features,
    extract_features,
    make_loader,
    mc_predictive,
    worker_count,
)
from bnnkit.engine.run_state import (
    HISTORY_FIELDS,
    SUM_KEYS,
    Position,
    TrainingInterrupted,
    TrainResult,
    environment,
    epoch_order,
    epoch_stats,
    progress_bar,
    seed_everything,
)
from bnnkit.errors import BnnkitError, UsageError
from bnnkit.methods.base import InferenceMethod
from bnnkit.methods.sgmcmc import SGMCMCMethod
from bnnkit.recipe import Recipe, dump_recipe


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        device: torch.device,
        device_note: str,
        console: Console | None = None,
        cache_dir: Path | None = None,
        resume: bool = False,
        dist: DistInfo | None = None,
    ) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.device = device
        self.device_note = device_note
        self.console = console
        self.cache_dir = cache_dir or Path(".bnnkit-cache")
        self.resume = resume
        self.broken: dict[str, str] = {}
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.elapsed_before = 0.0
        self.t_start = 0.0
        self.stop_signal: int | None = None
        self.dist = dist or DistInfo()
        self._configure_accelerator()
        self.tensorboard = self._tensorboard_writer()

    def _tensorboard_writer(self):
        """A SummaryWriter into ``RUN/tensorboard`` when ``train.log`` asks for it (rank 0)."""
        if "tensorboard" not in self.recipe.train.log or not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError(
                'train.log = ["tensorboard"] needs the tensorboard package',
                hint="pip install 'bnnkit[tensorboard]'  (or: pip install tensorboard)",
            ) from None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _configure_accelerator(self) -> None:
        """Mixed precision and memory layout. CUDA only: the CPU path stays float32."""
        t = self.recipe.train
        cuda = self.device.type == "cuda"
        mode = t.amp
        if mode == "auto":
            mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
        if mode != "off" and not cuda:
            raise UsageError(
                f"train.amp = {t.amp!r} needs a CUDA device; this run is on {self.device}"
            )
        self.amp = mode != "off"
        self.amp_dtype = torch.float16 if mode == "fp16" else torch.bfloat16
        # fp16 needs loss scaling; bf16 has float32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=mode == "fp16")
        self.channels_last = cuda and t.channels_last
        self.amp_mode = mode

    # -- data ------------------------------------------------------------------------------------
    def _splits(self) -> tuple[list, list]:
        """(train, val) samples."""
        d, r = self.recipe.data, self.recipe
        gens = list(d.train_generators)
        opts = {"balance": d.balance, "seed": r.seed}
        train = index_split(d.root, gens, "train", limit=d.train_limit, **opts)
        val = index_split(d.root, gens, "val", limit=d.val_limit, **opts)
        if not train:
            raise UsageError(f"no training images found under '{d.root}' for {', '.join(gens)}")
        return train, val

    def _datasets(
        self, splits: tuple[list, list], norm: Normalisation
    ) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
        """(train with augmentation, train without, val), normalised with ``norm``."""
        d, (train, val) = self.recipe.data, splits
        gens = list(d.train_generators)
        eval_tf = build_transform(d.image_size, d.preprocess, train=False, norm=norm)
        train_tf = build_transform(d.image_size, d.preprocess, train=True, norm=norm)
        return (
            ImageDataset(train, train_tf, gens),
            ImageDataset(train, eval_tf, gens),
            ImageDataset(val, eval_tf, gens),
        )

    def _note_broken(self, items) -> None:
        for b in items:
            self.broken[b.path] = b.reason

    def _loader(self, dataset, batch_size: int, order: list[int] | None = None) -> DataLoader:
        r = self.recipe
        workers = worker_count(r.data.num_workers, self.device)
        return make_loader(
            dataset, batch_size, seed=r.seed, workers=workers, device=self.device, order=order
        )

    def _features(self, detector, dataset, split: str, progress: Progress) -> Features:
        loader = self._loader(dataset, self.recipe.eval.batch_size)
        if self.recipe.train.backbone == "frozen":
            if not self.dist.is_main:
                barrier(self.dist)  # rank 0 fills the cache first; the others then read it
            feats = cached_features(
                detector, loader, self.device, self.recipe, split, self.cache_dir, progress
            )
            if self.dist.is_main:
                barrier(self.dist)
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
        splits = self._splits()
        detector, method = build(r, num_train=len(splits[0]))
        if isinstance(method, SGMCMCMethod):  # one chain on every rank, global-batch burn-in
            method.chain_seed, method.world_size = r.seed, self.dist.world
        frozen = r.train.backbone == "frozen"
        if frozen:
            phases = ["head"]
        else:
            phases = ["finetune"] if method.joint_finetune else ["finetune-map", "head"]
        position = Position(phases[0])
        saved_optimizer: dict | None = None
        resumed_from = None
        if self.resume and (self.run_dir / "checkpoint.json").is_file():
            state, meta = load_checkpoint(self.run_dir, detector)
            method.load_extra_state(state.get("method", {}))
            method.load_extra_meta(meta.get("method_meta", {}))
            if meta.get("complete"):
                raise UsageError(f"{self.run_dir} is already complete; nothing to resume")
            self.history = meta["history"]
            self.step = meta["step"]
            self.broken = dict(meta.get("broken", {}))
            self.elapsed_before = meta["train_seconds"]
            position = Position(**meta["position"])
            saved_optimizer = state.get("optimizer") or None
            torch.set_rng_state(state["rng"]["torch"].to(torch.uint8))
            resumed_from = f"{position.phase} epoch {position.epoch} step {position.step_in_epoch}"
            # what the run was trained with (ImageNet's for a run from before it was recorded)
            detector.normalisation = Normalisation.from_dict(meta.get("normalisation"))
        train_aug, train_plain, val_ds = self._datasets(splits, detector.normalisation)
        if self.dist.enabled and resumed_from is None:
            torch.manual_seed(r.seed + self.dist.rank)  # same init everywhere, own augmentations
        detector.to(self.device)
        if self.channels_last:
            detector.to(memory_format=torch.channels_last)
        # compile a bound forward, not the module, so state_dict keys stay unchanged
        self.forward_features = torch.compile(detector.features) if r.train.compile else None
        method.to(self.device)
        if not self.resume and self.dist.is_main:
            (self.run_dir / "recipe.toml").write_text(dump_recipe(r), encoding="utf-8")
            env = environment(r, self.device_note)
            atomic_write_text(self.run_dir / "env.json", json.dumps(env, indent=2))
        self.t_start = time.perf_counter()
        handlers = self._install_signal_handlers()
        try:
            with progress_bar(self.console) as progress:
                feats = self._run_phases(
                    phases, position, saved_optimizer, detector, method,
                    (train_aug, train_plain, val_ds), progress,
                )  # fmt: skip
                result = self._finish(detector, method, train_plain, progress, feats)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.tensorboard is not None:
                self.tensorboard.close()
        result.resumed_from = resumed_from
        return result

    def _install_signal_handlers(self) -> dict:
        previous: dict = {}

        def on_signal(signum, frame) -> None:
            self.stop_signal = signum
            for sig, handler in previous.items():  # a second signal acts at once
                signal.signal(sig, handler)

        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (e.g. inside a notebook worker)
            previous.clear()
        return previous

    def _run_phases(self, phases, position, saved_optimizer, detector, method, datasets, progress):
        r = self.recipe
        train_aug, train_plain, val_ds = datasets
        head_params = list(detector.head.parameters())
        body_params = [*detector.backbone.parameters(), *detector.attention.parameters()]
        start = phases.index(position.phase)
        feats = None
        for phase in phases[start:]:
            if phase != position.phase:
                position, saved_optimizer = Position(phase), None
            if phase in ("finetune", "finetune-map"):
                joint = phase == "finetune"
                learner = (
                    method if joint else InferenceMethod(detector.head, num_train=len(train_aug))
                )
                body_lr = r.train.lr * r.train.backbone_lr_scale
                optimizer = learner.configure_optimizer(
                    [{"params": head_params}, {"params": body_params, "lr": body_lr}],
                    optimizer=r.train.optimizer,
                    lr=r.train.lr,
                    weight_decay=r.train.weight_decay,
                )
                val_loader = self._loader(val_ds, r.eval.batch_size)

                def image_batches(epoch: int, skip: int, _phase: str = phase) -> Iterator:
                    bs = r.train.batch_size
                    order = shard(epoch_order(len(train_aug), r.seed, _phase, epoch), self.dist)
                    order = order[skip * bs :]
                    for batch in self._loader(train_aug, bs, order.tolist()):
                        self._note_broken(batch.broken)
                        if len(batch):
                            images = batch.images.to(self.device, non_blocking=True)
                            if self.channels_last:
                                images = images.contiguous(memory_format=torch.channels_last)
                            yield images, batch.labels, batch.indices

                def validate_images(
                    _learner: InferenceMethod = learner, _loader: DataLoader = val_loader
                ) -> dict[str, float]:
                    feats_val = extract_features(detector, _loader, self.device)
                    self._note_broken(feats_val.broken)
                    return self._validate(_learner, feats_val)

                per_rank = len(shard(torch.arange(len(train_aug)), self.dist))
                steps = -(-per_rank // r.train.batch_size)
                self._epochs(
                    position, r.train.epochs, steps, image_batches, learner, optimizer,
                    saved_optimizer, detector, method, progress,
                    validate_images, train_body=True,
                )  # fmt: skip
                continue
            # phase "head": the method on pooled features, extracted once (cached when frozen)
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
            n, bs = feats.labels.shape[0], r.train.batch_size
            n_rank = len(shard(torch.arange(n), self.dist))

            def feature_batches(
                epoch: int, skip: int, _f: Features = feats, _n: int = n, _bs: int = bs
            ) -> Iterator:
                order = shard(epoch_order(_n, r.seed, "head", epoch), self.dist)
                for start_ in range(skip * _bs, order.numel(), _bs):
                    idx = order[start_ : start_ + _bs]
                    yield _f.features[idx].to(self.device), _f.labels[idx], _f.indices[idx]

            # The head's ops are tiny: on a CPU, more than one thread only adds OpenMP hand-offs,
            # which turn into 10-30x slowdowns when another process shares the cores.
            threads = torch.get_num_threads()
            if self.device.type == "cpu":
                torch.set_num_threads(1)
            try:
                self._epochs(
                    position, r.train.head_epochs or r.train.epochs, -(-n_rank // bs),
                    feature_batches, method, optimizer, saved_optimizer, detector, method,
                    progress, lambda _v=val_feats: self._validate(method, _v), train_body=False,
                )  # fmt: skip
            finally:
                torch.set_num_threads(threads)
        return feats

    def _epochs(
        self,
        position: Position,
        epochs: int,
        steps_per_epoch: int,
        batches: Callable[[int, int], Iterator],
        learner: InferenceMethod,
        optimizer: torch.optim.Optimizer,
        saved_optimizer: dict | None,
        detector,
        method: InferenceMethod,
        progress: Progress,
        validate: Callable[[], dict[str, float]],
        *,
        train_body: bool,
    ) -> None:
        r = self.recipe
        phase = position.phase
        if saved_optimizer:
            optimizer.load_state_dict(saved_optimizer)
        # every parameter the optimiser updates (methods may add their own, e.g. ensemble members)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for epoch in range(position.epoch, epochs + 1):
            t_epoch = time.perf_counter()
            skip = position.step_in_epoch if epoch == position.epoch else 0
            sums = position.sums if epoch == position.epoch else dict.fromkeys(SUM_KEYS, 0.0)
            task = progress.add_task(
                f"{phase} {epoch}/{epochs}", total=steps_per_epoch, completed=skip, stats=""
            )
            detector.train()
            if not train_body:
                detector.backbone.eval()
                detector.attention.eval()
            step_in_epoch = skip
            for inputs, y, idx in batches(epoch, skip):
                y = y.to(self.device, non_blocking=True)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    if not train_body:
                        features = inputs
                    else:
                        features = (self.forward_features or detector.features)(inputs)
                    parts = learner.training_loss(features, y, idx.to(self.device))
                if not torch.isfinite(parts.loss):
                    raise BnnkitError(
                        f"loss became {parts.loss.item()} in {phase} epoch {epoch}, step "
                        f"{step_in_epoch + 1}; training stopped. The last good checkpoint is in "
                        f"{self.run_dir}",
                        hint="lower train.lr or set train.grad_clip (e.g. 1.0)",
                    )
                optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(parts.loss).backward()
                self.scaler.unscale_(optimizer)
                average_gradients(params, self.dist)
                if r.train.grad_clip > 0 and learner.clip_gradients:
                    torch.nn.utils.clip_grad_norm_(params, r.train.grad_clip)
                self.scaler.step(optimizer)
                self.scaler.update()
                self.step += 1
                step_in_epoch += 1
                learner.after_step(self.step)
                n = y.shape[0]
                sums["loss"] += parts.loss.item() * n
                sums["nll"] += float(parts.nll) * n
                sums["kl"] += float(parts.kl) * n
                sums["correct"] += (parts.logits.argmax(-1) == y).sum().item()
                sums["n"] += n
                progress.update(task, advance=1, stats=epoch_stats(sums))
                if self._should_stop():
                    here = Position(phase, epoch, step_in_epoch, sums)
                    self._checkpoint(detector, method, optimizer, here, tag=f"s{self.step}")
                    self._interrupted(phase, epoch, step_in_epoch)
            learner.after_epoch(epoch)
            sums = sum_across(sums, self.dist, self.device)
            m = max(sums["n"], 1)
            row: dict[str, Any] = {
                "phase": phase,
                "epoch": epoch,
                "loss": sums["loss"] / m,
                "nll": sums["nll"] / m,
                "kl": sums["kl"] / m,
                "train_acc": sums["correct"] / m,
            }
            row.update(validate() if self.dist.is_main else {})
            row["seconds"] = time.perf_counter() - t_epoch
            self.history.append(row)
            if self.dist.is_main:
                progress.update(task, stats=f"{epoch_stats(sums)} val_acc {row['val_acc']:.3f}")
                self._write_history()
                if self.tensorboard is not None:
                    for key, value in row.items():
                        if key not in ("phase", "epoch"):
                            self.tensorboard.add_scalar(f"{phase}/{key}", value, epoch)
                    self.tensorboard.flush()
            nxt = Position(phase, epoch + 1)
            self._checkpoint(detector, method, optimizer, nxt, tag=f"s{self.step}")
            if self._should_stop():
                self._interrupted(phase, epoch + 1, 0)

    def _should_stop(self) -> bool:
        """A signal seen by any rank stops every rank at the same step."""
        if not self.dist.enabled:
            return self.stop_signal is not None
        flag = torch.tensor([float(self.stop_signal or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.stop_signal is None:
            self.stop_signal = int(flag.item())
        return bool(flag.item())

    def _interrupted(self, phase: str, epoch: int, step: int) -> None:
        name = signal.Signals(self.stop_signal).name
        exc = TrainingInterrupted(
            f"{name}: stopped after {phase} epoch {epoch} step {step}; checkpoint saved in "
            f"{self.run_dir}",
            hint=f"resume with: bnnkit train --resume {self.run_dir}",
        )
        exc.exit_code = 128 + int(self.stop_signal)
        raise exc

    def _finish(self, detector, method, train_plain, progress, feats: Features | None = None):
        if method.needs_train_features:
            if feats is None:
                feats = self._features(detector, train_plain, "train", progress)
            method.after_training(feats.features.to(self.device), feats.labels.to(self.device))
        else:
            method.after_training(None, None)
        self._checkpoint(detector, method, None, Position("done"), tag="final", complete=True)
        if self.dist.enabled:
            gathered: list = [None] * self.dist.world
            torch.distributed.all_gather_object(gathered, self.broken)
            for part in gathered:
                self.broken.update(part)
        broken = [{"path": p, "reason": why} for p, why in sorted(self.broken.items())]
        if broken and self.dist.is_main:
            atomic_write_text(self.run_dir / "broken_files.json", json.dumps(broken, indent=2))
        seconds = self.elapsed_before + time.perf_counter() - self.t_start
        return TrainResult(self.run_dir, self.history, seconds, broken)

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

    def _checkpoint(
        self, detector, method, optimizer, position: Position, *, tag: str, complete: bool = False
    ) -> None:
        if not self.dist.is_main:  # rank 0 alone writes the run directory
            return
        state = {
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "method": method.extra_state(),
            "rng": {"torch": torch.get_rng_state()},
        }
        meta = {
            "position": position.__dict__,
            "step": self.step,
            "complete": complete,
            "num_train": method.num_train,
            "feature_dim": detector.feature_dim,
            "normalisation": detector.normalisation.to_dict(),
            "method": self.recipe.inference.name,
            "method_meta": method.extra_meta(),
            "train_seconds": self.elapsed_before + time.perf_counter() - self.t_start,
            "history": self.history,
            "broken": self.broken,
            "bnnkit": __version__,
        }
        save_checkpoint(self.run_dir, detector, state, meta, tag=tag)
