"""Method: ``rigid`` (He et al., 2024, "RIGID: A Training-free and Model-Agnostic Framework for
Robust AI-Generated Image Detection"): add small Gaussian noise to the image P times; an image's
features are its P embedding disagreements ``1 - cos(clean, noisy)`` (fakes move more),
calibrated on real training images only. Training-free (``train.epochs = 0``); see
:mod:`bnnkit.methods.training_free`.

Perturbation ``k`` is one fixed noise field of std ``sigma`` on the 0-1 pixel scale, drawn from
its seed (the same for every image, so a score does not depend on the batch it was in). The head
``rigid`` (registered here, the only head this method accepts) is the calibration.
"""

from __future__ import annotations

from bnnkit.methods.training_free import InputPerturbation, plugin_hooks

register_heads, register_methods = plugin_hooks("rigid", InputPerturbation)
