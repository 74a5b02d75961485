"""How an approximate-inference method learns and samples the head's posterior.

A method owns: which heads it accepts, its training loss, its optimiser, what it does after
training (a Laplace fit, kept SG-MCMC samples, ensemble members), and ``sample(features, k)``.
The engine drives it; it never sees images, only pooled features, so it works the same whether
the backbone is fine-tuned or frozen and cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from bnnkit.model.detector import Detector, build_detector
from bnnkit.model.heads import Head
from bnnkit.options import NoOptions, PluginOptions, options_model


@dataclass
class LossParts:
    """One step's objective and the parts the progress bar and ``history.csv`` show."""

    loss: Tensor
    nll: Tensor
    kl: Tensor
    logits: Tensor


def split_weight_decay(
    param_groups: list[dict[str, Any]], no_decay: Iterable[Tensor]
) -> list[dict[str, Any]]:
    """Each group split in two: its parameters not in ``no_decay`` (the group's options as
    given) and those in it (``weight_decay = 0``); empty parts are dropped, order is kept.

    Variational parameters (BBB's and LRT's mu and rho) must not be decayed: the KL to the prior
    already regularises them, decoupled (AdamW) decay on rho pulls sigma = softplus(rho) towards
    softplus(0) = ln 2, and decay on mu adds a second, unscaled prior. Groups without any of
    them come back unchanged, so optimiser states of MAP-style runs keep their layout.
    """
    skip = {id(p) for p in no_decay}
    out: list[dict[str, Any]] = []
    for group in param_groups:
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        decayed = [p for p in params if id(p) not in skip]
        variational = [p for p in params if id(p) in skip]
        if decayed or not variational:
            out.append({**group, "params": decayed})
        if variational:
            out.append({**group, "params": variational, "weight_decay": 0.0})
    return out


class InferenceMethod:
    """Base class for inference methods (register subclasses with ``register_methods``).

    Class attributes a subclass sets:

    - ``heads``: names of the head plugins it accepts; ``default_head`` (default: the first of
      ``heads``) when a recipe names none.
    - ``Options``: the declaration of the recipe options (``[inference]`` keys besides
      ``name``): a :class:`bnnkit.options.PluginOptions` subclass (type, default, range, help).
    - ``joint_finetune``: True when the backbone can learn jointly with this method's loss
      (``train.backbone = "finetune"``). False means: fine-tune with MAP first, then run the
      method on frozen features (SG-MCMC, Laplace, head ensembles).
    - ``needs_train_features``: ``after_training`` receives the training set's features.
    - ``needs_val_features``: :meth:`calibrate` receives the calibration split's features (a
      post-hoc fit, e.g. temperature scaling, on data the method did not train on).
    - ``clip_gradients``: whether ``train.grad_clip`` applies (False for SG-MCMC samplers).
    - ``trains``: False for a training-free method (``wepe``, ``rigid``): its recipe has
      ``train.epochs = 0``, the run extracts features and calls ``after_training`` only.
    - ``post_hoc``: ``train.epochs = 0`` is also allowed with a released head
      (``[model.head] init``): the run extracts features and calls ``after_training`` only.

    With ``train.backbone = "frozen"`` every method trains on cached pooled features.
    ``train.head_epochs`` (default: ``train.epochs``) sets the epochs of that head-only phase.
    """

    heads: ClassVar[tuple[str, ...]] = ("linear",)
    default_head: ClassVar[str] = "linear"
    Options: ClassVar[type[PluginOptions]] = NoOptions
    joint_finetune: ClassVar[bool] = True
    needs_train_features: ClassVar[bool] = False
    needs_val_features: ClassVar[bool] = False
    #: False for samplers, whose dynamics ``train.grad_clip`` would bias.
    clip_gradients: ClassVar[bool] = True
    #: False for training-free methods (``train.epochs = 0``: no optimisation at all).
    trains: ClassVar[bool] = True
    #: True when ``train.epochs = 0`` with a released head (``[model.head] init``) is a whole
    #: method: the head is kept as loaded and ``after_training`` fits what the method adds
    #: (kflaplace: the Laplace posterior on the training features; map: nothing).
    post_hoc: ClassVar[bool] = False
    summary: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "default_head" not in cls.__dict__ and cls.heads:
            cls.default_head = cls.heads[0]

    def __init__(self, head: Head, *, num_train: int, **options: Any) -> None:
        # validated against the one declaration (raises OptionsError, a ValueError)
        self.opts = options_model(type(self)).parse(options, "inference", owner=type(self).__name__)
        self.head = head
        self.num_train = max(int(num_train), 1)
        self.config = self.opts.model_dump()

    @classmethod
    def build_detector(
        cls, model_cfg: Any, head_name: str, registry: Any, options: dict[str, Any]
    ) -> Detector:
        """The detector this method predicts with, from the recipe's validated ``model``
        section, the head plugin's name, the plugin registry and the method's ``options`` (the
        recipe's ``[inference]`` keys). Default: :func:`bnnkit.model.detector.build_detector`.
        A method whose detector is not one backbone and one head overrides it (whole-detector
        ensembles, training-free methods that wrap the backbone)."""
        return build_detector(model_cfg, head_name, registry)

    # -- training -------------------------------------------------------------------------------
    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        """Default: mean NLL of one forward pass (MAP). ``indices`` are the samples' positions in
        the training set (stable across epochs), e.g. for bootstrap weights."""
        logits = self.head(features)
        nll = F.cross_entropy(logits, targets)
        return LossParts(loss=nll, nll=nll.detach(), kl=torch.zeros(()), logits=logits.detach())

    def configure_optimizer(
        self, param_groups: list[dict[str, Any]], *, optimizer: str, lr: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        """The optimiser over the given parameter groups; SG-MCMC methods return their sampler.

        The head's :meth:`~bnnkit.model.heads.Head.variational_parameters` get no weight decay
        (see :func:`split_weight_decay`); every other parameter, e.g. the backbone's in a joint
        fine-tune, keeps ``weight_decay``."""
        variational = getattr(self.head, "variational_parameters", list)()  # any nn.Module head
        param_groups = split_weight_decay(param_groups, variational)
        if optimizer == "sgd":
            return torch.optim.SGD(param_groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
        if optimizer == "adam":
            return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)

    def begin_phase(self, phase: str, epochs: int, steps_per_epoch: int) -> None:
        """Called when a training phase starts (again after a resume, mid-phase included).

        ``phase`` is ``"finetune"`` (the backbone learns on this method's loss),
        ``"finetune-map"`` (the backbone is fine-tuned with MAP; this method's
        ``training_loss`` is not used then) or ``"head"`` (this method on pooled features);
        ``epochs`` is the phase's length and ``steps_per_epoch`` its optimiser steps per epoch,
        the same on every torchrun rank (each step then averages all ranks' batches)."""

    def begin_head_phase(self, features: Any, targets: Tensor) -> None:
        """Called at the start of a head phase (again after a resume), right after
        :meth:`begin_phase` and before the first step, with the training set the phase trains
        on: ``features`` rows as the head sees them (standardised when
        the detector standardises), indexable like an ``[N, D]`` tensor (``features[idx]`` is a
        tensor; for a frozen backbone a lazy view of the feature cache: index the rows you
        need rather than materialising all), ``targets[N]`` the labels. On every torchrun rank
        with the full set. E.g. ``gp`` initialises its inducing points here. Default: nothing."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step (e.g. to keep an SG-MCMC sample)."""

    def after_epoch(self, epoch: int) -> None:
        """Called at the end of every epoch."""

    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        """Called once training ends; gets the training set when ``needs_train_features``
        (else ``None, None``).

        ``features[N, D]``: pooled features of the final detector, without augmentation, on the
        training device, detached (no graph to the backbone); row ``i`` is training image ``i``
        (the order of the training split, the ``indices`` ``training_loss`` saw; unreadable
        files are left out). ``targets[N]``: labels, 1 = fake, 0 = real. Called with autograd
        enabled, on every torchrun rank with the full training set."""

    def calibrate(self, features: Tensor, targets: Tensor) -> None:
        """A post-hoc fit on the calibration split, when ``needs_val_features``: called once,
        after :meth:`after_training`, before the final validation, checkpoint and summary.

        ``features[N, D]``: pooled features of the final detector (no augmentation) of the
        calibration images (``data.calibration``: carved out of the training folders, never
        trained on, :func:`bnnkit.data.splits.train_calibration_split`), on the training
        device, detached; unreadable files left out. A run without a calibration split
        (``data.calibration = 0``) passes the validation split's features instead
        (``data.val_limit`` and ``data.balance`` applied).
        ``targets[N]``: labels, 1 = fake, 0 = real. Autograd is enabled (e.g. to fit a
        temperature with an optimiser) and the head is in eval mode. Called on every torchrun
        rank with the same data; what it sets must be saved by :meth:`extra_state` /
        :meth:`extra_meta` to reach the run directory."""

    def to(self, device: torch.device) -> InferenceMethod:
        """Move tensors held outside the head (e.g. kept samples) to ``device``."""
        return self

    # -- prediction -----------------------------------------------------------------------------
    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        """Posterior samples of the logits ``[k, B, C]`` for pooled ``features[B, D]`` (the
        head's own draw by default). Logit-based scores (energy, max-logit) read these, so a
        method that draws its weights itself overrides this, not :meth:`sample`."""
        return self.head.sample_logits(features, k)

    def sample(self, features: Tensor, k: int) -> Tensor:
        """Posterior predictive samples ``probs[k, B, C]``: the softmax of :meth:`sample_logits`.
        A third-party method may override only this; its logits are then ``log probs``
        (:func:`bnnkit.engine.features.loop.head_outputs`), which softmax-based scores do not
        mind."""
        return torch.softmax(self.sample_logits(features, k), dim=-1)

    # -- persistence (beyond the head's own parameters, which live in the detector) ------------
    def extra_state(self) -> dict[str, Tensor]:
        """Tensors this method keeps besides the head (SG-MCMC samples, Laplace factors, ...)."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state, got {sorted(state)}")

    def extra_meta(self) -> dict[str, Any]:
        """JSON-serialisable facts about the fitted posterior (e.g. tuned prior precision)."""
        return {}

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        """Restore what ``extra_meta`` returned."""
