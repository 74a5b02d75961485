"""The phase plan of a training run, from ``train.backbone`` and the method.

- ``finetune`` backbone + a method with ``joint_finetune`` (MAP, BBB, LRT, MC-dropout): one
  phase ``finetune``: backbone, attention and head learn together on the method's loss.
- ``finetune`` backbone + a method without it (SG-MCMC, Laplace, head ensembles): phase
  ``finetune-map`` (the detector fine-tuned with cross-entropy), then phase ``head``: the method
  on the pooled features, extracted once.
- ``frozen`` backbone: phase ``head`` only, on features cached on disk.
- ``lora`` / ``partial`` (:mod:`bnnkit.model.adapt`): as ``finetune`` (``finetune``, or
  ``finetune-map`` then ``head``), with only the adapters / the last blocks of the backbone
  learning; the features change, so nothing is cached.
- ``train.epochs = 0`` (training-free methods only; recipe validation enforces it): one
  ``head`` phase of no epochs: the features are extracted (cached when frozen) and the method's
  ``after_training`` runs, nothing is optimised.

The backbone phases last ``train.epochs`` epochs; the head phase ``train.head_epochs``
(0 or unset: ``train.epochs``).
"""

from __future__ import annotations

from typing import NamedTuple

#: every phase name, in the order a run goes through them (also part of each epoch's data seed)
PHASES = ("finetune", "finetune-map", "head")
#: ``train.backbone`` values; all but ``frozen`` train the backbone (or part of it) on images
BACKBONE_MODES = ("finetune", "frozen", "lora", "partial")


class Phase(NamedTuple):
    """One phase of the plan: its name and number of epochs."""

    name: str
    #: its length; the head phase's is ``train.head_epochs`` or, when 0, ``train.epochs``
    epochs: int

    @property
    def trains_backbone(self) -> bool:
        """Backbone and attention learn (on images); else the head learns on pooled features."""
        return self.name != "head"

    @property
    def uses_method_loss(self) -> bool:
        """The method's own loss and optimiser; False for ``finetune-map`` (MAP's)."""
        return self.name != "finetune-map"


def plan_phases(
    backbone: str, joint_finetune: bool, epochs: int, head_epochs: int | None = None
) -> list[Phase]:
    """The phases of a run: ``backbone`` is ``train.backbone`` (``"finetune"``, ``"frozen"``,
    ``"lora"`` or ``"partial"``), ``joint_finetune`` the method's flag of that name."""
    if backbone not in BACKBONE_MODES:
        raise ValueError(
            f"train.backbone must be one of {', '.join(BACKBONE_MODES)}, got {backbone!r}"
        )
    if epochs == 0:  # a training-free method: features and after_training only
        return [Phase("head", 0)]
    head = Phase("head", head_epochs or epochs)
    if backbone == "frozen":
        return [head]
    if joint_finetune:
        return [Phase("finetune", epochs)]
    return [Phase("finetune-map", epochs), head]
