"""Training-free methods (``wepe``, ``rigid``): a backbone trained on natural images, perturbed P
times; fakes move more. Nothing is optimised.

The detector (:mod:`bnnkit.model.perturbed`, built by :meth:`TrainingFreeMethod.build_detector`)
turns each image into P disagreements ``s_k = 1 - cos(clean, perturbed_k)``: those are the
pooled features, so the frozen-feature cache, streaming evaluation, the feature-space scores and
``predict`` work on them unchanged, and each image costs P + 1 backbone passes. With a ViT-style
backbone, ``model.pool = "cls"`` makes the features of the disagreement the CLS embedding, as
both papers use (DINOv2's); the bundled ViT recipes set it. The head (``PerturbationHead``,
registered under the method's own name) is a calibration fitted in
:meth:`~TrainingFreeMethod.after_training` on **real** images only (the calibration reals the
trainer hands it): per perturbation, ``s_k`` is standardised by the reals' ``quantile`` and
robust spread into ``z_k``, and ``p_k(fake) = sigmoid(z_k)`` (logits ``(-z_k / 2, z_k / 2)``),
with one shift of every ``z_k`` so that the posterior-mean ``p(fake)`` (the mean of the P
``p_k``) is 0.5 at the reals' ``quantile``. The P perturbations are the posterior's members
(``sample`` returns P rows whatever ``k``), so the epistemic part (mutual information) is how
much the perturbations disagree about an image.

A recipe of a training-free method says ``train.epochs = 0`` (validation insists): the trainer
then plans one ``head`` phase of no epochs (:func:`bnnkit.engine.train.phases.plan_phases`):
features are extracted (and cached with ``train.backbone = "frozen"``), ``after_training``
calibrates, and the checkpoint is a run that ``evaluate`` and ``predict`` accept.

Seeds: ``inference.seed``, or else the recipe's ``seed`` (the trainer seeds torch with it before
building; :func:`torch.initial_seed` reads it back), gives P seeds
(:func:`~bnnkit.model.perturbed.perturbation_seeds`). They are buffers of the detector's backbone,
saved in the checkpoint, so a loaded run redraws the same perturbations; ``checkpoint.json``'s
``method_meta`` shows them with the calibration. They, ``quantile`` and ``calibration_images``
are fixed when the run is made: ``evaluate``/``predict`` with another value (``--set
inference.sigma=...``) is refused (a :class:`~bnnkit.errors.UsageError`), not silently replaced
by the checkpoint's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from bnnkit.errors import UsageError
from bnnkit.hookspecs import RegisterPart, hookimpl
from bnnkit.methods.base import InferenceMethod, LossParts
from bnnkit.model.detector import Detector, build_detector
from bnnkit.model.perturbed import (
    InputPerturbedDetector,
    PerturbationHead,
    PerturbedBackbone,
    PerturbedDetector,
    WeightPerturbedDetector,
    perturbation_seeds,
)
from bnnkit.options import Field, PluginOptions, options_model


class TrainingFreeOptions(PluginOptions):
    """The options both training-free methods take (each adds its ``sigma``)."""

    perturbations: int = Field(
        8, ge=1, le=1024, description="P perturbed passes per image (P + 1 backbone passes)"
    )
    seed: int | None = Field(None, description="seed of the perturbations; default: the recipe's")
    quantile: float = Field(
        0.95,
        gt=0,
        lt=1,
        description="the calibration reals' quantile where the posterior-mean p(fake) = 0.5 "
        "(0.95: 5 % of them are called fake)",
    )
    calibration_images: int = Field(
        0, ge=0, description="real training images the calibration uses (spread evenly); 0 = all"
    )


class TrainingFreeMethod(InferenceMethod):
    """Base of ``wepe`` and ``rigid``: see the module docstring."""

    trains = False
    joint_finetune = False
    needs_train_features = True
    Options: ClassVar[type[PluginOptions]] = TrainingFreeOptions
    #: ``"weights"`` or ``"input"``
    kind: ClassVar[str] = ""

    @classmethod
    def make_detector(cls, plain: Detector, head: PerturbationHead, seed: int, opts: Any) -> Any:
        """The perturbed detector around ``plain``'s backbone and attention."""
        raise NotImplementedError

    @classmethod
    def build_detector(
        cls, model_cfg: Any, head_name: str, registry: Any, options: dict[str, Any]
    ) -> Detector:
        opts = options_model(cls).parse(options, "inference", owner=cls.__name__)
        plain = build_detector(model_cfg, head_name, registry)
        head_opts = model_cfg.head.options() if model_cfg.head is not None else {}
        head = registry.get("head", head_name).obj(opts.perturbations, 2, **head_opts)
        if not isinstance(head, PerturbationHead):
            raise ValueError(f"{head_name} is not a perturbation head")
        seed = opts.seed if opts.seed is not None else torch.initial_seed()
        detector = cls.make_detector(plain, head, seed, opts)
        head.describe_detector = detector.describe  # for extra_meta (a plain attribute)
        return detector

    def __init__(self, head: Any, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        self.calibrated_on = 0  # real images the calibration was fitted on
        self.shift = 0.0  # the shift of every z_k (PerturbationHead.fit)

    def training_loss(
        self, features: Tensor, targets: Tensor, indices: Tensor | None = None
    ) -> LossParts:
        raise UsageError(
            f"{type(self).__name__} is training-free: it has no loss (train.epochs must be 0)"
        )

    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        """Calibrate the head on the real images among ``features`` (fakes are never used):
        the features the trainer hands it, which are the calibration reals."""
        if features is None or targets is None:
            raise UsageError(f"{type(self).__name__} needs the training features to calibrate")
        reals = features[targets == 0]
        n = self.opts.calibration_images
        if n and n < reals.shape[0]:
            reals = reals[torch.linspace(0, reals.shape[0] - 1, n).round().long()]
        if reals.shape[0] < 2:
            raise UsageError(
                f"{type(self).__name__}: calibration needs at least 2 real training images, "
                f"got {reals.shape[0]}",
                hint="add real images to the training generators or raise calibration_images",
            )
        self.shift = self.head.fit(reals, self.opts.quantile)
        self.calibrated_on = int(reals.shape[0])

    def extra_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "calibration": {
                "images": self.calibrated_on,
                "quantile": self.opts.quantile,
                "images_asked": self.opts.calibration_images,
                "shift": self.shift,
                "location": [float(v) for v in self.head.location.tolist()],
                "scale": [float(v) for v in self.head.scale.tolist()],
            }
        }
        describe = getattr(self.head, "describe_detector", None)
        if describe is not None:
            meta["perturbation"] = describe()
        return meta

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        """Restore the calibration facts; refuse options that differ from the run's (an
        evaluation-time ``--set inference.seed|quantile|calibration_images``: the checkpoint
        would silently win; ``sigma``, ``perturbations`` and ``layers`` are refused when the
        checkpoint loads, :meth:`PerturbedBackbone._load_from_state_dict`)."""
        calibration = meta.get("calibration", {})
        made = {
            "seed": meta.get("perturbation", {}).get("seed"),
            "quantile": calibration.get("quantile"),
            "calibration_images": calibration.get("images_asked"),
        }
        asked = {
            "seed": None if self.opts.seed is None else int(self.opts.seed) % 2**63,
            "quantile": self.opts.quantile,
            "calibration_images": self.opts.calibration_images,
        }
        for key, value in asked.items():
            if value is not None and made[key] is not None and value != made[key]:
                raise UsageError(
                    f"inference.{key} = {value}: this {type(self).__name__} run was built and "
                    f"calibrated with {key} = {made[key]}; its perturbations and calibration "
                    "are fixed when it is made (evaluate and predict cannot change them)",
                    hint=f"train a new run with --set inference.{key}={value} (nothing is "
                    "optimised: it costs one pass over the calibration images)",
                )
        self.calibrated_on = int(calibration.get("images", 0))
        self.shift = float(calibration.get("shift", 0.0))


class WeightPerturbation(TrainingFreeMethod):
    kind = "weights"
    heads = ("wepe",)
    summary = "WePe: weight-perturbed backbone, feature disagreement (training-free)"

    class Options(TrainingFreeOptions):
        sigma: float = Field(
            0.05, gt=0, description="noise std relative to each weight tensor's root mean square"
        )
        layers: list[str] = Field(
            default_factory=list,
            description="fnmatch patterns choosing the perturbed weights (>= 2 dims) by "
            "name (timm: 'model.blocks.*'); [] = all of them",
        )

    @classmethod
    def make_detector(
        cls, plain: Detector, head: PerturbationHead, seed: int, opts: Any
    ) -> PerturbedDetector:
        seeds = perturbation_seeds(seed, opts.perturbations, cls.kind)
        selection = "\n".join(opts.layers)
        backbone = PerturbedBackbone(plain.backbone, cls.kind, seed, seeds, opts.sigma, selection)
        return WeightPerturbedDetector(
            backbone, plain.attention, head, plain.pool, plain.frontend,
            layers=opts.layers,
        )  # fmt: skip


class InputPerturbation(TrainingFreeMethod):
    kind = "input"
    heads = ("rigid",)
    summary = "RIGID: Gaussian noise on the image, embedding disagreement (training-free)"

    class Options(TrainingFreeOptions):
        sigma: float = Field(0.05, gt=0, description="noise std on the 0-1 pixel scale")

    @classmethod
    def make_detector(
        cls, plain: Detector, head: PerturbationHead, seed: int, opts: Any
    ) -> PerturbedDetector:
        seeds = perturbation_seeds(seed, opts.perturbations, cls.kind)
        backbone = PerturbedBackbone(plain.backbone, cls.kind, seed, seeds, opts.sigma)
        return InputPerturbedDetector(backbone, plain.attention, head, plain.pool, plain.frontend)


def plugin_hooks(name: str, method: type[TrainingFreeMethod]) -> tuple[Callable, Callable]:
    """``(register_heads, register_methods)`` of a training-free method's plugin module: the
    method under ``name`` and its calibration head (:class:`PerturbationHead`) under the same
    name, the only head the method accepts (``heads = (name,)``)."""

    @hookimpl
    def register_heads(register: RegisterPart) -> None:
        register(name, PerturbationHead, summary=f"calibration of {name}'s P disagreements")

    @hookimpl
    def register_methods(register: RegisterPart) -> None:
        register(name, method)

    return register_heads, register_methods
