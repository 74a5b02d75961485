"""The trainer: one recipe -> one run directory, resumable at any step.

It orchestrates the parts of a run, each in its own module: the phase plan
(:mod:`~bnnkit.engine.train.phases`: ``finetune`` / ``finetune-map`` / ``head`` from
``train.backbone`` and the method), the data (:mod:`~bnnkit.engine.train.data`), the epoch loop
(:mod:`~bnnkit.engine.train.epochs`), acceleration
(:class:`~bnnkit.engine.device.Acceleration`), signals (:mod:`~bnnkit.engine.train.signals`),
data parallelism
(:mod:`~bnnkit.engine.train.distributed`), the training log (:mod:`bnnkit.run.log`) and
checkpoints (:mod:`bnnkit.run.checkpoint`).

The method hears of each phase (``begin_phase``), of every step and epoch, then
``after_training`` and, when it asks for them, ``calibrate`` on the validation features; the
run's last epoch is validated after those, so ``history.csv``, the summary and the report show
the posterior that is saved.

Resuming is exact on the CPU: each epoch's data order comes from a generator seeded by
(seed, phase, epoch), the global RNG state is saved in every checkpoint, and a checkpoint taken
mid-epoch (on SIGINT/SIGTERM) records how many batches of the epoch are done. With DataLoader
workers, augmentation randomness lives in the workers, so a mid-epoch resume is then close but
not bit-identical (an epoch-boundary resume still is).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import Tensor

from bnnkit._version import __version__
from bnnkit.data.dataset import Normalisation
from bnnkit.engine.build import build
from bnnkit.engine.device import Acceleration
from bnnkit.engine.features.loop import Features, posterior_samples, predict_features
from bnnkit.engine.features.standardise import standardised, standardises
from bnnkit.engine.train.data import Datasets, TrainData
from bnnkit.engine.train.distributed import DistInfo, average_gradients, data_parallel_loss
from bnnkit.engine.train.epochs import EpochLoop, PhaseRun
from bnnkit.engine.train.phases import Phase, plan_phases
from bnnkit.engine.train.signals import StopSignals
from bnnkit.engine.train.state import (
    Position,
    TrainResult,
    environment,
    progress_bar,
    seed_everything,
)
from bnnkit.errors import UsageError
from bnnkit.methods.base import InferenceMethod
from bnnkit.methods.sgmcmc import SGMCMCMethod
from bnnkit.model.adapt import base_reference, checkpoint_keys, trainable
from bnnkit.recipe import Recipe, dump_recipe
from bnnkit.run.checkpoint import (
    disk_full_error,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from bnnkit.run.fileio import atomic_write_text, is_disk_full
from bnnkit.run.layout import RunLayout
from bnnkit.run.log import TrainingLog


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
        data: TrainData | None = None,
    ) -> None:
        self.recipe = recipe
        self.run_dir = run_dir
        self.layout = RunLayout(run_dir)
        self.device = device
        self.device_note = device_note
        self.console = console
        self.resume = resume
        self.dist = dist or DistInfo()
        self.accel = Acceleration.from_recipe(recipe.train, device)
        # ``data``: e.g. a whole-detector ensemble member's bootstrap resample (train.members)
        self.data = data or TrainData(recipe, device, self.dist, cache_dir or Path(".bnnkit-cache"))
        self.log = TrainingLog(
            run_dir, writes=self.dist.is_main, tensorboard="tensorboard" in recipe.train.log
        )
        self.stop = StopSignals(self.dist, device)
        self.elapsed_before = 0.0
        self.t_start = 0.0
        self.loop: EpochLoop | None = None
        self._val_feats: Features | None = None  # of the head phase (the detector is final)

    # -- main ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        r = self.recipe
        seed_everything(r.seed)
        splits = self.data.splits()
        detector, method = build(r, num_train=len(splits[0]))
        if isinstance(method, SGMCMCMethod):  # one chain on every rank, global-batch burn-in
            method.chain_seed, method.world_size = r.seed, self.dist.world
        phases = plan_phases(
            r.train.backbone, method.joint_finetune, r.train.epochs, r.train.head_epochs
        )
        position, saved_optimizer, resumed_from, step = Position(phases[0].name), None, None, 0
        if self.resume and has_checkpoint(self.run_dir):
            position, saved_optimizer, step = self._restore(detector, method)
            resumed_from = f"{position.phase} epoch {position.epoch} step {position.step_in_epoch}"
        datasets = self.data.datasets(splits, detector.normalisation)
        if self.dist.enabled and resumed_from is None:
            torch.manual_seed(r.seed + self.dist.rank)  # same init everywhere, own augmentations
        detector.to(self.device)
        self.forward_features = self.accel.prepare(detector)
        method.to(self.device)
        if not self.resume and self.dist.is_main:
            self.layout.recipe.write_text(dump_recipe(r), encoding="utf-8")
            atomic_write_text(
                self.layout.env, json.dumps(environment(r, self.device_note), indent=2)
            )
        self.t_start = time.perf_counter()
        self.loop = EpochLoop(
            self.device, self.accel, self.dist, r.train.grad_clip, detector, self.log, self.stop,
            self.run_dir, lambda opt, pos: self._checkpoint(detector, method, opt, pos), step,
        )  # fmt: skip
        try:
            with self.stop, progress_bar(self.console) as progress:
                feats = self._run_phases(
                    phases, position, saved_optimizer, detector, method, datasets, progress
                )
                result = self._finish(detector, method, datasets, progress, feats)
        except OSError as exc:  # a full disk while writing the log (checkpoints say it themselves)
            if not is_disk_full(exc):
                raise
            raise disk_full_error(self.run_dir, exc.filename or "the run directory", None) from None
        finally:
            self.log.close()
        result.resumed_from = resumed_from
        return result

    def _restore(self, detector: Any, method: InferenceMethod) -> tuple[Position, dict | None, int]:
        """Load the run's checkpoint: (position, optimiser state, steps done)."""
        state, meta = load_checkpoint(self.run_dir, detector)
        method.load_extra_state(state.get("method", {}))
        method.load_extra_meta(meta.get("method_meta", {}))
        if meta.get("complete"):
            raise UsageError(f"{self.run_dir} is already complete; nothing to resume")
        self.log.rows = list(meta["history"])
        self.data.broken = dict(meta.get("broken", {}))
        self.elapsed_before = meta["train_seconds"]
        torch.set_rng_state(state["rng"]["torch"].to(torch.uint8))
        # what the run was trained with (ImageNet's for a run from before it was recorded)
        detector.normalisation = Normalisation.from_dict(meta.get("normalisation"))
        return Position(**meta["position"]), state.get("optimizer") or None, int(meta["step"])

    def _run_phases(
        self,
        phases: list[Phase],
        position: Position,
        saved_optimizer: dict | None,
        detector: Any,
        method: InferenceMethod,
        ds: Datasets,
        progress: Progress,
    ) -> Features | None:
        """Every phase from ``position`` on; returns the head phase's training features."""
        assert self.loop is not None
        names = [p.name for p in phases]
        feats = None
        for phase in phases[names.index(position.phase) :]:
            if phase.name != position.phase:
                position, saved_optimizer = Position(phase.name), None
            if phase.trains_backbone:
                run = self._backbone_phase(phase, detector, method, ds)
            else:
                feats, run = self._head_phase(phase, detector, method, ds, progress)
            run.defer_last_validation = phase is phases[-1]
            self._load_optimizer(run.optimizer, saved_optimizer)
            # The head's ops are tiny: on a CPU, more than one thread only adds OpenMP
            # hand-offs, which turn into 10-30x slowdowns when another process shares the cores.
            threads = torch.get_num_threads()
            if not phase.trains_backbone and self.device.type == "cpu":
                torch.set_num_threads(1)
            try:
                self.loop.run(run, position, progress)
            finally:
                torch.set_num_threads(threads)
            del run  # under torchrun: drops DDP and its gradient hooks before the next phase
        return feats

    def _optimizer(self, learner: InferenceMethod, groups: list[dict]) -> torch.optim.Optimizer:
        t = self.recipe.train
        return learner.configure_optimizer(
            groups, optimizer=t.optimizer, lr=t.lr, weight_decay=t.weight_decay
        )

    def _backbone_phase(
        self, phase: Phase, detector: Any, method: InferenceMethod, ds: Datasets
    ) -> PhaseRun:
        """``finetune`` (the method's loss) or ``finetune-map`` (MAP's): images in, the whole
        detector learns; gradients averaged by DistributedDataParallel under torchrun."""
        t = self.recipe.train
        learner = (
            method
            if phase.uses_method_loss
            else InferenceMethod(detector.head, num_train=len(ds.train_aug))
        )
        steps = self.data.steps_per_epoch(len(ds.train_aug))
        method.begin_phase(phase.name, phase.epochs, steps)
        body = trainable([*detector.frontend.parameters(), *detector.backbone.parameters(),
                          *detector.attention.parameters()], detector)  # fmt: skip
        optimizer = self._optimizer(
            learner,
            [{"params": list(detector.head.parameters())},
             {"params": body, "lr": t.lr * t.backbone_lr_scale}],
        )  # fmt: skip
        if self.dist.enabled:
            params = [q for group in optimizer.param_groups for q in group["params"]]
            loss: Any = data_parallel_loss(
                detector, learner, self.forward_features, params, self.device
            )
        else:

            def loss(images: Tensor, targets: Tensor, indices: Tensor) -> Any:
                return learner.training_loss(self.forward_features(images), targets, indices)

        val_loader = self.data.loader(ds.val, self.recipe.eval.batch_size)

        def validate() -> dict[str, float]:
            return self._validate(learner, self.data.plain_features(detector, val_loader))

        return PhaseRun(
            phase.name, phase.epochs, steps,
            batches=lambda epoch, skip: self.data.image_batches(
                ds.train_aug, phase.name, epoch, skip, self.accel
            ),
            loss=loss, learner=learner, optimizer=optimizer,
            reduce_gradients=lambda params: None,  # DDP's backward did it (or one process)
            validate=validate, train_body=True,
        )  # fmt: skip

    def _head_phase(
        self, phase: Phase, detector: Any, method: InferenceMethod, ds: Datasets, progress: Progress
    ) -> tuple[Features, PhaseRun]:
        """The method on pooled features, extracted once (cached when the backbone is frozen);
        gradients averaged by one explicit all-reduce (see
        :mod:`bnnkit.engine.train.distributed`)."""
        for p in [*detector.frontend.parameters(), *detector.backbone.parameters(),
                  *detector.attention.parameters()]:  # fmt: skip
            p.requires_grad_(False)
        feats, val_feats = self._head_features(detector, ds, progress)
        self._val_feats = val_feats
        steps = self.data.steps_per_epoch(feats.labels.shape[0], images=False)
        method.begin_phase(phase.name, phase.epochs, steps)
        method.begin_head_phase(feats.features, self.data.targets(feats.labels, feats.generators))
        optimizer = self._optimizer(method, [{"params": list(detector.head.parameters())}])
        return feats, PhaseRun(
            phase.name, phase.epochs, steps,
            batches=lambda epoch, skip: self.data.feature_batches(feats, epoch, skip),
            loss=method.training_loss, learner=method, optimizer=optimizer,
            reduce_gradients=lambda params: average_gradients(params, self.dist),
            validate=lambda: self._validate(method, val_feats), train_body=False,
        )  # fmt: skip

    def _head_features(
        self, detector: Any, ds: Datasets, progress: Progress
    ) -> tuple[Features, Features]:
        """The head phase's (train, val) features: raw (the cache stores raw features), then,
        when ``model.standardise`` says so (:func:`standardises`), standardised with the mean
        and std of the training features alone, which the detector keeps for every later use."""
        detector.standardiser.reset()  # a resume fits the same statistics again
        feats = self.data.features(detector, ds.train_plain, "train", progress)
        val = self.data.features(detector, ds.val, "val", progress)
        if not standardises(self.recipe):
            return feats, val
        detector.standardiser.fit(feats.features)
        return standardised(detector, feats), standardised(detector, val)

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, saved: dict | None) -> None:
        if not saved:
            return
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as exc:
            raise UsageError(
                f"cannot resume {self.run_dir}: its saved optimiser state does not fit the "
                f"optimiser this bnnkit builds for {self.recipe.inference.name} ({exc})",
                hint="the run was saved by an older bnnkit whose optimiser had other parameter "
                "groups (e.g. a bbb run from before blitz's duplicated parameters were fixed); "
                "train it again instead of resuming",
            ) from None

    # -- the end ---------------------------------------------------------------------------------
    def _finish(
        self,
        detector: Any,
        method: InferenceMethod,
        ds: Datasets,
        progress: Progress,
        feats: Features | None,
    ) -> TrainResult:
        if method.needs_train_features:
            if feats is None:
                feats = self.data.features(detector, ds.train_plain, "train", progress)
            targets = self.data.targets(feats.labels, feats.generators)
            method.after_training(feats.features.to(self.device), targets.to(self.device))
        else:
            method.after_training(None, None)
        val = self._val_feats
        if val is None and (self.dist.is_main or method.needs_val_features):
            val = self.data.plain_features(
                detector, self.data.loader(ds.val, self.recipe.eval.batch_size)
            )
        if method.needs_val_features:  # the calibration split; a run without one: val
            cal = self.data.calibration_features(detector, detector.normalisation, progress)
            fit = cal if cal is not None else val
            assert fit is not None
            method.head.eval()
            targets = self.data.targets(fit.labels, fit.generators)
            method.calibrate(fit.features.to(self.device), targets.to(self.device))
        if self.dist.is_main and val is not None and self.log.last is not None:
            self.log.complete_last(self._validate(method, val))  # the posterior that is saved
        elif self.dist.is_main and val is not None and not method.trains:
            # training-free: no epoch ran; one row says how the calibrated detector validates
            self.log.append({"phase": "head", "epoch": 0, **self._validate(method, val)})
        self._checkpoint(detector, method, None, Position("done"), tag="final", complete=True)
        broken = self.data.broken
        if self.dist.enabled:
            gathered: list = [None] * self.dist.world
            torch.distributed.all_gather_object(gathered, broken)
            for part in gathered:
                broken.update(part)
        listed = [{"path": p, "reason": why} for p, why in sorted(broken.items())]
        if listed and self.dist.is_main:
            atomic_write_text(self.layout.broken, json.dumps(listed, indent=2))
        seconds = self.elapsed_before + time.perf_counter() - self.t_start
        return TrainResult(self.run_dir, self.log.rows, seconds, listed)

    @torch.no_grad()
    def _validate(self, method: InferenceMethod, feats: Features) -> dict[str, float]:
        if feats.labels.numel() == 0:
            return {"val_acc": float("nan"), "val_nll": float("nan")}
        k = posterior_samples(self.recipe, "validate")
        pred = predict_features(method, feats.features, k, self.device)
        y = feats.labels
        acc = ((pred.p_fake >= 0.5).long() == y).float().mean().item()
        p_true = torch.where(y == 1, pred.p_fake, 1 - pred.p_fake).clamp_min(1e-12)
        return {"val_acc": acc, "val_nll": (-p_true.log()).mean().item()}

    def _checkpoint(
        self,
        detector: Any,
        method: InferenceMethod,
        optimizer: torch.optim.Optimizer | None,
        position: Position,
        *,
        tag: str | None = None,
        complete: bool = False,
    ) -> None:
        if not self.dist.is_main:  # rank 0 alone writes the run directory
            return
        assert self.loop is not None
        state = {
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "method": method.extra_state(),
            "rng": {"torch": torch.get_rng_state()},
        }
        meta = {
            "position": position.__dict__,
            "step": self.loop.step,
            "complete": complete,
            "num_train": method.num_train,
            "feature_dim": detector.feature_dim,
            "normalisation": detector.normalisation.to_dict(),
            "method": self.recipe.inference.name,
            "method_meta": method.extra_meta(),
            "train_seconds": self.elapsed_before + time.perf_counter() - self.t_start,
            "history": self.log.rows,
            "broken": self.data.broken,
            "bnnkit": __version__,
        }
        if self.recipe.train.backbone == "frozen":  # evaluate takes clean features from there
            meta["feature_cache"] = str(self.data.cache_dir.resolve())
        if (base := base_reference(detector)) is not None:  # lora/partial: what trains alone
            meta["base"] = base
        save_checkpoint(self.run_dir, detector, state, meta, tag=tag or f"s{self.loop.step}",
                        only=checkpoint_keys(detector))  # fmt: skip
