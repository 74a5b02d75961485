"""Method: ``wepe`` (Nie et al., NeurIPS 2025, "Epistemic Uncertainty for Generated Image
Detection"): perturb the weights of a backbone trained on natural images P times; an image's
features are its P feature disagreements ``1 - cos(clean, perturbed)`` (fakes move more),
calibrated on real training images only. Training-free (``train.epochs = 0``); see
:mod:`bnnkit.methods.training_free`.

Perturbation ``k`` adds ``sigma * rms(W) * eps`` to each selected weight tensor ``W`` of the
backbone (``layers``: fnmatch patterns of its parameter names; default every weight of two or
more dimensions, i.e. convolution kernels and linear/attention matrices, not biases or norms).
The head ``wepe`` (registered here, the only head this method accepts) is the calibration.
"""

from __future__ import annotations

from bnnkit.methods.training_free import WeightPerturbation, plugin_hooks

register_heads, register_methods = plugin_hooks("wepe", WeightPerturbation)
