"""Detectors of the training-free methods (``wepe``, ``rigid``): pooled features are the
disagreements of a clean and P perturbed forward passes, and the head calibrates them.

For an image ``x`` with clean pooled features ``f(x)`` (backbone -> attention -> pool) and P
perturbed ones ``f_k(x)``, feature ``k`` is ``s_k = 1 - cos(f(x), f_k(x))`` (computed as
``||u - u_k||^2 / 2`` of the unit vectors, which is the same number without the cancellation of
``1 - cos`` near 0). Perturbation ``k`` is drawn from ``seeds[k]`` on the CPU, so the same seeds
give the same features on any device and in any batch:

- :class:`WeightPerturbedDetector` (WePe, Nie et al., NeurIPS 2025): the backbone's selected
  weights ``W + sigma * rms(W) * eps`` (one Gaussian ``eps`` per tensor, scale relative to the
  tensor's root mean square), applied with :func:`torch.func.functional_call`;
- :class:`InputPerturbedDetector` (RIGID, He et al., 2024): the image plus a fixed Gaussian noise
  field of standard deviation ``sigma`` on the 0-1 pixel scale (divided by the input std, since
  the images arrive normalised).

The seeds, ``sigma`` and the selection live as buffers of :class:`PerturbedBackbone`: they are in
the run's checkpoint (the perturbed weights are never stored, they are redrawn from the seeds) and
in the frozen-feature cache key (which hashes the backbone's state). The perturbed weights are
drawn once and kept in memory (P copies of the selected tensors) until the state is reloaded.

``feature_map`` returns the disagreements as a ``(B, P, 1, 1)`` map, so the engine's one path
(``feature_map`` then ``pool_features``) gives ``(B, P)``: each image costs P + 1 backbone passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnkit.model.detector import Detector, FeatureStandardiser
from bnnkit.model.heads import Head

#: the perturbation kinds and their code in the ``spec`` buffer
KINDS = {"weights": 1, "input": 2}
_NORMALISATION_ATTRS = ("input_mean", "input_std", "input_interpolation")


def _digest64(text: str) -> int:
    """A signed 64-bit digest of ``text`` (to keep a string's identity in an int64 buffer)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def perturbation_seeds(seed: int, count: int, kind: str) -> list[int]:
    """``count`` seeds derived from ``seed`` (any int) for perturbations of ``kind``."""
    import numpy as np

    sequence = np.random.SeedSequence([int(seed) % 2**63, KINDS[kind]])
    return [int(s) for s in sequence.generate_state(count, dtype=np.uint32)]


class PerturbedBackbone(nn.Module):
    """A backbone plus the identity of its perturbations (buffers ``seeds [P]``, ``sigma`` and
    ``spec = [kind, selection digest, base seed]``); ``forward`` is the clean backbone's."""

    def __init__(
        self, base: nn.Module, kind: str, seed: int, seeds: Sequence[int], sigma: float,
        selection: str = "",
    ) -> None:  # fmt: skip
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"perturbation kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.base = base
        self.out_channels = int(base.out_channels)
        for name in _NORMALISATION_ATTRS:  # the detector reads the backbone's normalisation
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))
        self.register_buffer("seeds", torch.tensor(list(seeds), dtype=torch.int64))
        self.register_buffer("sigma", torch.tensor(float(sigma), dtype=torch.float64))
        spec = [KINDS[kind], _digest64(selection), int(seed) % 2**63]
        self.register_buffer("spec", torch.tensor(spec, dtype=torch.int64))

    def forward(self, images: Tensor) -> Tensor:
        return self.base(images)


class PerturbedDetector(Detector):
    """Base of the training-free detectors: pooled features = P disagreements (see the module
    docstring); subclasses implement :meth:`perturbed_features`."""

    backbone: PerturbedBackbone

    def __init__(
        self, backbone: PerturbedBackbone, attention: nn.Module, head: Head, pool: str = "avg",
        input_filter: str = "none",
    ) -> None:  # fmt: skip
        super().__init__(backbone, attention, head, pool, input_filter)
        self.standardiser = FeatureStandardiser(self.perturbations)  # of the P disagreements
        self._drawn: dict[Any, Any] = {}  # perturbations drawn from the seeds, per device
        self.register_load_state_dict_post_hook(lambda module, keys: module._drawn.clear())

    @property
    def perturbations(self) -> int:
        return int(self.backbone.seeds.numel())

    @property
    def feature_dim(self) -> int:
        return self.perturbations

    def seed_of(self, k: int) -> int:
        return int(self.backbone.seeds[k])

    def clean_features(self, images: Tensor) -> Tensor:
        """Pooled features of the unperturbed backbone and attention, ``(B, C)``."""
        return self.pool_raw(self.attention(self.backbone(self.input_filter(images))))

    def perturbed_features(self, images: Tensor, k: int) -> Tensor:
        """Pooled features under perturbation ``k``, ``(B, C)``."""
        raise NotImplementedError

    def disagreements(self, images: Tensor) -> Tensor:
        """``(B, P)``: ``1 - cos`` between the clean and each perturbed feature vector."""
        clean = F.normalize(self.clean_features(images).float(), dim=1)
        out = []
        for k in range(self.perturbations):
            moved = F.normalize(self.perturbed_features(images, k).float(), dim=1)
            out.append(0.5 * (clean - moved).pow(2).sum(dim=1))
        return torch.stack(out, dim=1)

    def feature_map(self, images: Tensor) -> Tensor:
        return self.disagreements(images)[:, :, None, None]

    def describe(self) -> dict[str, Any]:
        """JSON facts of the perturbations (recorded in ``checkpoint.json``)."""
        return {
            "kind": next(k for k, v in KINDS.items() if v == int(self.backbone.spec[0])),
            "seed": int(self.backbone.spec[2]),
            "seeds": [int(s) for s in self.backbone.seeds.tolist()],
            "sigma": float(self.backbone.sigma),
            "perturbations": self.perturbations,
        }


def select_parameters(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the parameters of ``module`` that weight perturbation changes, sorted: its
    floating-point parameters of 2 or more dimensions (convolution kernels, linear and
    attention matrices, embeddings; not biases, norms or scalars), with ``patterns`` those
    matching any of these ``fnmatch`` patterns. A pattern that matches none is an error."""
    weights = [n for n, p in module.named_parameters() if p.is_floating_point() and p.ndim >= 2]
    if not weights:
        raise ValueError("the backbone has no weight of 2 or more dimensions to perturb")
    if not patterns:
        return sorted(weights)
    unmatched = [pat for pat in patterns if not any(fnmatch(n, pat) for n in weights)]
    if unmatched:
        raise ValueError(
            f"inference.layers: {unmatched} match no backbone weight of >= 2 dimensions "
            f"(names look like: {', '.join(weights[:3])}, ...)"
        )
    return sorted(n for n in weights if any(fnmatch(n, pat) for pat in patterns))


class WeightPerturbedDetector(PerturbedDetector):
    """WePe: perturbation ``k`` adds ``sigma * rms(W) * eps_k`` to each selected weight ``W``."""

    def __init__(
        self, backbone: PerturbedBackbone, attention: nn.Module, head: Head, pool: str = "avg",
        input_filter: str = "none", *, layers: Sequence[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(backbone, attention, head, pool, input_filter)
        self.layers = tuple(layers)
        self.selected = select_parameters(backbone.base, self.layers)

    def _weights(self, k: int) -> dict[str, Tensor]:
        params = dict(self.backbone.base.named_parameters())
        device = params[self.selected[0]].device
        key = (k, str(device))
        if key not in self._drawn:
            sigma = float(self.backbone.sigma)
            g = torch.Generator().manual_seed(self.seed_of(k))
            drawn = {}
            for name in self.selected:  # sorted: the same draw for the same seed
                w = params[name].detach()
                w32 = w.float().cpu()
                scale = sigma * w32.pow(2).mean().sqrt()
                noise = torch.randn(w.shape, generator=g) * scale
                drawn[name] = (w32 + noise).to(device=device, dtype=w.dtype)
            self._drawn = {kk: v for kk, v in self._drawn.items() if kk[1] == str(device)}
            self._drawn[key] = drawn
        return self._drawn[key]

    def perturbed_features(self, images: Tensor, k: int) -> Tensor:
        filtered = self.input_filter(images)
        fmap = torch.func.functional_call(self.backbone.base, self._weights(k), (filtered,))
        return self.pool_raw(self.attention(fmap))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "layers": list(self.layers),
            "perturbed_tensors": len(self.selected),
            "perturbed_values": sum(
                p.numel()
                for n, p in self.backbone.base.named_parameters()
                if n in set(self.selected)
            ),
        }


class InputPerturbedDetector(PerturbedDetector):
    """RIGID: perturbation ``k`` adds a fixed Gaussian field (std ``sigma`` in 0-1 pixels)."""

    def _noise(self, k: int, like: Tensor) -> Tensor:
        std = tuple(float(s) for s in self.normalisation.std)
        key = (k, tuple(like.shape[1:]), str(like.device), like.dtype, std)
        if key not in self._drawn:
            g = torch.Generator().manual_seed(self.seed_of(k))
            field = torch.randn(like.shape[1:], generator=g) * float(self.backbone.sigma)
            if field.shape[0] == len(std):  # normalised input: pixel noise / std per channel
                field = field / torch.tensor(std).view(-1, *([1] * (field.ndim - 1)))
            self._drawn[key] = field.to(device=like.device, dtype=like.dtype)
        return self._drawn[key]

    def perturbed_features(self, images: Tensor, k: int) -> Tensor:
        return self.clean_features(images + self._noise(k, images))


class PerturbationHead(Head):
    """Calibration of the P disagreements: per perturbation ``k``, the logits are
    ``(0, (s_k - location_k) / scale_k)`` (real, fake), so ``p(fake) = 0.5`` at ``location_k``.
    ``sample_logits`` returns the P rows whatever ``k`` (P perturbations are the posterior's
    equally weighted members); ``forward`` is their mean. Nothing is learned by gradient:
    :meth:`fit` sets the buffers from real images' disagreements."""

    def __init__(self, in_features: int, num_classes: int = 2) -> None:
        if num_classes != 2:
            raise ValueError(f"a perturbation head has 2 classes (real, fake), not {num_classes}")
        super().__init__(in_features, num_classes)
        self.register_buffer("location", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))

    def per_perturbation(self, features: Tensor) -> Tensor:
        """Logits ``(P, B, 2)`` of each perturbation."""
        z = ((features - self.location) / self.scale).t()
        return torch.stack([torch.zeros_like(z), z], dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        return self.per_perturbation(features).mean(0)

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        return self.per_perturbation(features)

    @torch.no_grad()
    def fit(self, reals: Tensor, quantile: float) -> None:
        """``location`` = the reals' ``quantile`` per perturbation, ``scale`` = their robust
        spread (1.4826 x the median absolute deviation; the std where that is 0)."""
        reals = reals.float()
        location = torch.quantile(reals, quantile, dim=0)
        median = reals.median(dim=0).values
        scale = 1.4826 * (reals - median).abs().median(dim=0).values
        scale = torch.where(scale > 0, scale, reals.std(dim=0))
        floor = 1e-6 * location.abs().clamp_min(1e-12)
        self.location.copy_(location)
        self.scale.copy_(torch.maximum(scale.nan_to_num(0.0), floor))
