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

from bnnkit.model.detector import Detector, FeatureStandardiser, select_pool
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

    def use_cls_token(self) -> None:
        """``model.pool = "cls"``: the base backbone's CLS readout (a ``ValueError`` if it
        has none; the plain detector around the base already switched it)."""
        select_pool(self.base, "cls")

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Refuse a checkpoint whose perturbations differ from this module's (an evaluation
        ``--set inference.perturbations|sigma|layers`` on a run), instead of silently taking
        the checkpoint's: the run was calibrated for its own."""
        seeds, sigma, spec = (state_dict.get(prefix + n) for n in ("seeds", "sigma", "spec"))
        if seeds is not None and seeds.numel() != self.seeds.numel():
            raise _fixed("perturbations", self.seeds.numel(), seeds.numel())
        if sigma is not None and float(sigma) != float(self.sigma):
            raise _fixed("sigma", float(self.sigma), float(sigma))
        if spec is not None and spec.numel() > 1 and int(spec[1]) != int(self.spec[1]):
            raise _fixed("layers", "other layers", "its own")
        super()._load_from_state_dict(state_dict, prefix, *args)


def _fixed(key: str, asked: Any, made: Any) -> ValueError:
    """The error for a training-free option that differs from the run's."""
    return ValueError(
        f"inference.{key} = {asked}: this training-free run was built and calibrated with "
        f"{made}; its perturbations and calibration are fixed when it is made (evaluate and "
        f"predict cannot change them). Train a new run with --set inference.{key}=... "
        "(nothing is optimised: it costs one pass over the training images)"
    )


class PerturbedDetector(Detector):
    """Base of the training-free detectors: pooled features = P disagreements (see the module
    docstring); subclasses implement :meth:`perturbed_features`."""

    backbone: PerturbedBackbone

    def __init__(
        self, backbone: PerturbedBackbone, attention: nn.Module, head: Head, pool: str = "avg",
        frontend: nn.Module | str = "none",
    ) -> None:  # fmt: skip
        super().__init__(backbone, attention, head, pool, frontend)
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
        return self.pool_raw(self.attention(self.backbone(self.frontend(images))))

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
        frontend: nn.Module | str = "none", *, layers: Sequence[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(backbone, attention, head, pool, frontend)
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
        filtered = self.frontend(images)
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
    """Calibration of the P disagreements: per perturbation ``k``, ``z_k = (s_k - location_k) /
    scale_k`` and the logits are ``(-z_k / 2, z_k / 2)`` (real, fake), so ``p_k(fake) =
    sigmoid(z_k)`` and a logit-reading score (energy, max-logit) treats both classes alike.
    ``sample_logits`` returns the P rows whatever ``k`` (P perturbations are the posterior's
    equally weighted members); ``forward`` is their mean. Nothing is learned by gradient:
    :meth:`fit` sets the buffers from real images' disagreements, so that the posterior-mean
    ``p(fake)`` (the mean of the P ``p_k``, what evaluate and predict report) is 0.5 at the
    reals' ``quantile``."""

    def __init__(self, in_features: int, num_classes: int = 2) -> None:
        if num_classes != 2:
            raise ValueError(f"a perturbation head has 2 classes (real, fake), not {num_classes}")
        super().__init__(in_features, num_classes)
        self.register_buffer("location", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))

    def standardised(self, features: Tensor) -> Tensor:
        """``z``, ``(P, B)``: each perturbation's calibrated disagreement."""
        return ((features - self.location) / self.scale).t()

    def per_perturbation(self, features: Tensor) -> Tensor:
        """Logits ``(P, B, 2)`` of each perturbation: ``(-z / 2, z / 2)``."""
        half = 0.5 * self.standardised(features)
        return torch.stack([-half, half], dim=-1)

    def forward(self, features: Tensor) -> Tensor:
        return self.per_perturbation(features).mean(0)

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        return self.per_perturbation(features)

    @torch.no_grad()
    def fit(self, reals: Tensor, quantile: float) -> float:
        """Fit on real images' disagreements ``(n, P)``; return the shift (see below).

        Per perturbation, the reals' ``quantile`` and robust spread (1.4826 x the median
        absolute deviation; the std where that is 0) standardise ``s_k``. An image is at the
        reals' quantile for one perturbation but not for all, so the mean of the P sigmoids
        would reach 0.5 on far fewer reals than ``1 - quantile``; one shift ``b`` of every
        ``z_k`` (folded into ``location``: ``location_k += b * scale_k``) is then set so that
        the posterior-mean ``p(fake)`` is 0.5 at the reals' ``quantile``: ``b`` is the
        ``quantile`` of each real's own shift ``b_i`` (where its mean of
        ``sigmoid(z_ik - b_i)`` is 0.5), and a real is at or above 0.5 exactly when
        ``b_i >= b``."""
        reals = reals.float()
        location = torch.quantile(reals, quantile, dim=0)
        median = reals.median(dim=0).values
        scale = 1.4826 * (reals - median).abs().median(dim=0).values
        scale = torch.where(scale > 0, scale, reals.std(dim=0))
        floor = 1e-6 * location.abs().clamp_min(1e-12)
        scale = torch.maximum(scale.nan_to_num(0.0), floor)
        z = ((reals - location) / scale).double()  # (n, P)
        shift = float(torch.quantile(_half_shifts(z), quantile))
        self.location.copy_(location + shift * scale)
        self.scale.copy_(scale)
        return shift


def _half_shifts(z: Tensor) -> Tensor:
    """Per row ``i`` of ``z (n, P)``, the ``b_i`` where ``mean_k sigmoid(z_ik - b_i) = 0.5``
    (bisection; the mean is decreasing in ``b`` and crosses 0.5 between min and max of the
    row, so the root is bracketed)."""
    low, high = z.min(dim=1).values, z.max(dim=1).values
    for _ in range(64):
        mid = 0.5 * (low + high)
        above = torch.sigmoid(z - mid[:, None]).mean(dim=1) >= 0.5
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return 0.5 * (low + high)
