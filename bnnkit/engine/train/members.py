"""Deep ensembles of whole detectors: M member runs, one after another, inside one run directory.

A method whose class answers ``detector_members(options) -> M > 0`` (``ensemble`` with
``inference.members = "detectors"``) is trained here instead of by one
:class:`~bnnkit.engine.train.trainer.Trainer`:

- member ``i`` is an ordinary MAP run in ``RUN/members/m<i>/`` (the existing trainer: its own
  checkpoints, ``history.csv``, resumable at any step), with seed ``seed + 1000 * i`` (member 0
  has the recipe's own) and, with ``bootstrap = true``, its own bootstrap resample of the N
  training images (N draws with replacement, seeded by the member's seed; validation is shared);
- ``RUN/members.json`` records every member's seed and whether it is finished; a member whose
  run holds a complete checkpoint is never trained again, so ``bnnkit train --resume RUN``
  after a kill skips the finished members and resumes the interrupted one from its checkpoint;
- once all are finished, the members' weights are loaded into the method's
  :class:`~bnnkit.model.ensemble.EnsembleDetector`, validated together and saved as the run's
  ordinary checkpoint (``train_seconds``: the members' sum), so ``evaluate``, ``predict`` and
  ``load_run`` need nothing special: M backbone passes per image.

With ``train.backbone = "frozen"`` and pretrained weights every member would have the same
backbone (only the heads would differ: that is ``members = <int>``), so it is refused;
``pretrained = false`` is allowed (each member's random backbone differs).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from bnnkit._version import __version__
from bnnkit.data.dataset import Normalisation
from bnnkit.engine.build import build, check_recipe, ensemble_size
from bnnkit.engine.features.loop import posterior_samples, predict_features
from bnnkit.engine.train.data import TrainData
from bnnkit.engine.train.distributed import DistInfo
from bnnkit.engine.train.signals import TrainingInterrupted
from bnnkit.engine.train.state import Position, TrainResult, environment
from bnnkit.engine.train.trainer import Trainer
from bnnkit.errors import UsageError
from bnnkit.metrics.classification import accuracy, nll
from bnnkit.options import options_model
from bnnkit.plugins import get_registry
from bnnkit.recipe import Recipe, dump_recipe
from bnnkit.recipe_schema import PluginRef
from bnnkit.report.history import ENSEMBLE_PHASE, member_phase
from bnnkit.run.checkpoint import (
    is_complete,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from bnnkit.run.fileio import atomic_write_text
from bnnkit.run.layout import MEMBERS_DIR, RunLayout
from bnnkit.run.log import format_history

DEFAULT_CACHE = Path(".bnnkit-cache")
#: what every member detector is trained with
MEMBER_METHOD = "map"
#: member i trains with seed ``recipe.seed + SEED_STRIDE * i``
SEED_STRIDE = 1000


def member_seed(seed: int, index: int) -> int:
    return seed + SEED_STRIDE * index


def member_recipe(recipe: Recipe, index: int) -> Recipe:
    """Member ``index``'s recipe: the ensemble's, as a MAP detector with the member's seed."""
    return recipe.model_copy(
        update={
            "name": f"{recipe.name}-m{index}",
            "seed": member_seed(recipe.seed, index),
            "inference": PluginRef(name=MEMBER_METHOD),
        }
    )


def member_of(run_dir: Path) -> Path | None:
    """The ensemble run that ``run_dir`` is a member of (``ENSEMBLE/members/m<i>``), else None."""
    run_dir = Path(run_dir)
    parent = run_dir.parent
    if parent.name == MEMBERS_DIR and RunLayout(parent.parent).members_record.is_file():
        return parent.parent
    return None


@dataclass
class MemberData(TrainData):
    """A member's training data: with ``resample``, a bootstrap resample of the training split
    (sorted by position, so each generator's images stay together for the feature cache)."""

    resample: bool = False

    def splits(self) -> tuple[list, list]:
        train, val = super().splits()
        if not self.resample:
            return train, val
        g = torch.Generator().manual_seed(self.recipe.seed)
        picks = torch.randint(0, len(train), (len(train),), generator=g).sort().values
        return [train[i] for i in picks.tolist()], val


@dataclass
class EnsembleTrainer:
    """Built like :class:`~bnnkit.engine.train.trainer.Trainer` (same arguments, in the same order);
    ``run()`` -> TrainResult of the whole ensemble."""

    recipe: Recipe
    run_dir: Path
    device: torch.device
    device_note: str
    console: Console | None = None
    cache_dir: Path = DEFAULT_CACHE
    resume: bool = False
    dist: DistInfo = field(default_factory=DistInfo)

    def __post_init__(self) -> None:
        self.layout = RunLayout(self.run_dir)
        self.size = ensemble_size(self.recipe)
        method_cls = get_registry().get("method", self.recipe.inference.name).obj
        opts = options_model(method_cls).parse(self.recipe.inference.options(), "inference")
        self.bootstrap = bool(getattr(opts, "bootstrap", False))

    # -- the members -----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        r, root = self.recipe, self.layout.root
        check_recipe(r)
        if self.resume and is_complete(root):
            raise UsageError(f"{root} is already complete; nothing to resume")
        if self.dist.is_main and not self.resume:
            self.layout.recipe.write_text(dump_recipe(r), encoding="utf-8")
            atomic_write_text(
                self.layout.env, json.dumps(environment(r, self.device_note), indent=2)
            )
        resumed_from = "all members finished" if self.resume else None
        first = True
        try:
            for i in range(self.size):
                sub = self.layout.member(i)
                if is_complete(sub):
                    continue
                self._write_record()
                done = self._train_member(i, sub)
                if self.resume and first:  # where training picked up again
                    at = f", {done.resumed_from}" if done.resumed_from else ""
                    resumed_from = f"member {i + 1} of {self.size}{at}"
                first = False
        except KeyboardInterrupt:  # Ctrl-C between members (inside one, the trainer stops)
            finished = sum(is_complete(self.layout.member(i)) for i in range(self.size))
            stop = TrainingInterrupted(
                f"SIGINT: stopped between members; {finished} of {self.size} finished and kept",
                hint=f"resume with: bnnkit train --resume {root}",
            )
            stop.exit_code = 128 + signal.SIGINT
            raise stop from None
        self._write_record()
        result = self._assemble() if self.dist.is_main else TrainResult(root)
        result.resumed_from = resumed_from
        return result

    def _train_member(self, index: int, sub: Path) -> TrainResult:
        mrec = member_recipe(self.recipe, index)
        if self.console is not None:
            self.console.print(f"member {index + 1}/{self.size}: seed {mrec.seed}, {sub}")
        sub.mkdir(parents=True, exist_ok=True)
        data = MemberData(mrec, self.device, self.dist, self.cache_dir, resample=self.bootstrap)
        started = RunLayout(sub).recipe.is_file()
        try:
            return Trainer(
                mrec, sub, self.device, self.device_note, console=self.console,
                cache_dir=self.cache_dir, resume=started, dist=self.dist, data=data,
            ).run()  # fmt: skip
        except TrainingInterrupted as exc:  # resume the ensemble, not the member alone
            again = TrainingInterrupted(
                f"member {index + 1} of {self.size}: {exc.message}",
                hint=f"resume with: bnnkit train --resume {self.layout.root}",
            )
            again.exit_code = exc.exit_code
            raise again from None

    def _write_record(self) -> None:
        if not self.dist.is_main:
            return
        members = [
            {
                "index": i,
                "dir": str(self.layout.member(i).relative_to(self.layout.root)),
                "seed": member_seed(self.recipe.seed, i),
                "complete": is_complete(self.layout.member(i)),
            }
            for i in range(self.size)
        ]
        record = {"size": self.size, "bootstrap": self.bootstrap, "members": members}
        atomic_write_text(self.layout.members_record, json.dumps(record, indent=2))

    # -- the ensemble ----------------------------------------------------------------------------
    def _assemble(self) -> TrainResult:
        """Load the finished members into the ensemble detector, validate, checkpoint."""
        t0 = time.perf_counter()
        r = self.recipe
        metas = [read_meta(self.layout.member(i)) for i in range(self.size)]
        num_train = int(metas[0].get("num_train", 1))
        detector, method = build(r, num_train, pretrained=False)
        for i in range(self.size):
            sub = self.layout.member(i)
            detector.load_member(i, lambda member, sub=sub: load_checkpoint(sub, member))
        detector.normalisation = Normalisation.from_dict(metas[0].get("normalisation"))
        detector.to(self.device)
        method.to(self.device)
        data = TrainData(r, self.device, self.dist, self.cache_dir)
        datasets = data.datasets(data.splits(), detector.normalisation)
        val = data.plain_features(detector, data.loader(datasets.val, r.eval.batch_size))
        rows = [
            {**row, "phase": member_phase(i, row["phase"])} for i, m in enumerate(metas)
            for row in m.get("history", [])
        ]  # fmt: skip
        row: dict[str, Any] = {"phase": ENSEMBLE_PHASE, "epoch": 1}
        if val.labels.numel():
            pred = predict_features(method, val.features, posterior_samples(r, "validate"))
            y = val.labels
            row.update(val_acc=accuracy(pred.p_fake, y), val_nll=nll(pred.p_fake, y))
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        broken = {p: why for m in metas for p, why in m.get("broken", {}).items()}
        broken.update(data.broken)
        seconds = sum(float(m.get("train_seconds", 0.0)) for m in metas) + row["seconds"]
        meta: dict[str, Any] = {
            "position": Position("done").__dict__,
            "step": sum(int(m.get("step", 0)) for m in metas),
            "complete": True,
            "num_train": num_train,
            "feature_dim": detector.feature_dim,
            "normalisation": detector.normalisation.to_dict(),
            "method": r.inference.name,
            "method_meta": method.extra_meta(),
            "train_seconds": seconds,
            "member_train_seconds": [m.get("train_seconds") for m in metas],
            "history": rows,
            "broken": broken,
            "bnnkit": __version__,
        }
        if r.train.backbone == "frozen":  # evaluate takes clean features from there
            meta["feature_cache"] = str(self.cache_dir.resolve())
        state = {"optimizer": {}, "method": method.extra_state(),
                 "rng": {"torch": torch.get_rng_state()}}  # fmt: skip
        save_checkpoint(self.layout.root, detector, state, meta, tag="final")
        atomic_write_text(self.layout.history, format_history(rows))
        listed = [{"path": p, "reason": why} for p, why in sorted(broken.items())]
        if listed:
            atomic_write_text(self.layout.broken, json.dumps(listed, indent=2))
        return TrainResult(self.layout.root, rows, seconds, listed)
