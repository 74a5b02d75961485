"""A deep ensemble of whole detectors as one :class:`~bnnkit.model.detector.Detector`.

M complete detectors (backbone -> attention -> pool -> head, Lakshminarayanan et al. 2017),
each trained on its own, are combined so that every path that takes a detector (streaming
evaluation, predict, the frozen-feature cache, feature-space scores, tiles) works unchanged:

- :meth:`EnsembleDetector.feature_map` concatenates the members' attention-output maps along
  the channel axis, ``[B, M*D, H, W]``; global pooling is per channel, so the pooled features
  are the members' pooled features side by side, ``[B, M*D]`` (member m owns columns
  ``m*D .. (m+1)*D``). Every image costs M backbone passes, an honest price.
- :class:`EnsembleHead` maps slice m through member m's head: ``sample_logits`` returns
  ``[M, B, C]``, one row per member (the equal-weight mixture exactly, whatever K), and
  ``forward`` the log of the mixture's mean probabilities ``[B, C]``.

The parameters live under ``backbone.<m>.``, ``attention.<m>.`` and ``head.heads.<m>.``, so the
combined weights are one ordinary checkpoint; :meth:`EnsembleDetector.member` is member m as a
plain :class:`Detector` sharing those modules (its keys are a single detector's), and
:meth:`EnsembleDetector.load_member` loads a member run's checkpoint through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.model.detector import Detector
from bnnkit.model.heads import Head


class EnsembleHead(Head):
    """M member heads ``D -> C`` over concatenated features ``[B, M*D]``."""

    def __init__(self, heads: Sequence[Head]) -> None:
        if not heads:
            raise ValueError("an ensemble needs at least one member head")
        d, c = heads[0].in_features, heads[0].num_classes
        if any(h.in_features != d or h.num_classes != c for h in heads):
            raise ValueError("ensemble member heads must share in_features and num_classes")
        super().__init__(d * len(heads), c)
        self.heads = nn.ModuleList(heads)
        self.member_dim = d
        self.deterministic = all(h.deterministic for h in heads)

    @property
    def num_members(self) -> int:
        return len(self.heads)

    def member_logits(self, features: Tensor) -> Tensor:
        """``[M, B, C]``: member m's head on its own slice of ``features[B, M*D]``."""
        if features.shape[-1] != self.in_features:
            raise ValueError(
                f"ensemble head expects {self.num_members} x {self.member_dim} = "
                f"{self.in_features} features, got {features.shape[-1]}"
            )
        slices = features.split(self.member_dim, dim=-1)
        return torch.stack([head(f) for head, f in zip(self.heads, slices, strict=True)])

    def forward(self, features: Tensor) -> Tensor:
        """The mixture's log mean probability per class, ``[B, C]`` (its predictive logits)."""
        log_probs = torch.log_softmax(self.member_logits(features), dim=-1)
        return torch.logsumexp(log_probs, dim=0) - math.log(self.num_members)

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        """One row per member, ``[M, B, C]``, whatever ``k`` (see the module docstring)."""
        if k < 1:
            raise ValueError(f"need k >= 1 posterior samples, got {k}")
        return self.member_logits(features)


class MemberModules(nn.ModuleList):
    """The M members' backbones (or attention blocks); ``out_channels``: their sum."""

    @property
    def out_channels(self) -> int:
        return sum(int(m.out_channels) for m in self)


class EnsembleDetector(Detector):
    """M detectors of one architecture behind the :class:`Detector` interface. The input
    filter (parameter-free, the recipe's) is shared; the feature standardiser is one of
    ``M*D`` features whose slice m is member m's (:meth:`load_member` copies it in)."""

    def __init__(self, members: Sequence[Detector]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member detector")
        first = members[0]
        if any(m.pool != first.pool or m.feature_dim != first.feature_dim for m in members):
            raise ValueError("ensemble members must share pooling and feature size")
        super().__init__(
            MemberModules(m.backbone for m in members),
            nn.ModuleList(m.attention for m in members),
            EnsembleHead([m.head for m in members]),
            first.pool,
            frontend=first.frontend,  # one frontend pass per image, shared by the members
        )
        self.normalisation = first.normalisation

    @property
    def num_members(self) -> int:
        return len(self.backbone)

    def member(self, index: int) -> Detector:
        """Member ``index`` as a plain detector sharing this ensemble's backbone, attention and
        head modules (its standardiser is its own: see :meth:`load_member`)."""
        member = Detector(
            self.backbone[index], self.attention[index], self.head.heads[index], self.pool,
            frontend=self.frontend,
        )  # fmt: skip
        member.normalisation = self.normalisation
        return member

    def load_member(self, index: int, load: Callable[[Detector], Any]) -> Any:
        """``load(member)`` (e.g. a member run's checkpoint into :meth:`member`), then member
        ``index``'s feature standardisation copied into this detector's slice; returns what
        ``load`` returned."""
        member = self.member(index)
        out = load(member)
        d = self.head.member_dim
        with torch.no_grad():
            for name in ("mean", "std"):
                getattr(self.standardiser, name)[index * d : (index + 1) * d].copy_(
                    getattr(member.standardiser, name)
                )
        return out

    def feature_map(self, images: Tensor) -> Tensor:
        """The members' feature maps side by side on the channel axis, ``[B, M*D, H, W]``."""
        x = self.frontend(images)
        maps = [att(bb(x)) for bb, att in zip(self.backbone, self.attention, strict=True)]
        return torch.cat(maps, dim=1)
