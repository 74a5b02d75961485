"""The head interface every head plugin implements.

A head maps pooled features ``(B, D)`` to logits ``(B, num_classes)``. Bayesian heads draw one
posterior sample per ``forward`` in training and expose ``sample_logits(features, k)``, which draws
``k`` samples in one vectorised call: the backbone has already run once, only the head is sampled.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bnnkit.options import NoOptions, OptionsError, PluginOptions


class Head(nn.Module):
    """Base class: subclasses implement ``forward``; Bayesian ones ``kl`` and ``sample_logits``."""

    #: True when ``forward`` is a deterministic function of the features in eval mode.
    deterministic: bool = True
    #: the option declaration (:mod:`bnnkit.options`): ``__init__`` parses the recipe's
    #: ``[model.head]`` options against it into ``self.opts`` (a wrong one names its key path)
    Options: ClassVar[type[PluginOptions]] = NoOptions
    #: the registered name, for those messages (``head 'bbb'``)
    plugin_name: ClassVar[str] = ""

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        owner = f"head '{self.plugin_name or type(self).__name__}'"
        try:
            self.opts = self.Options.parse(options, "model.head", owner=owner)
        except OptionsError:
            if options:
                raise
            # a head that parses its own options (required ones) after super().__init__(in, n)
            self.opts = None

    def kl(self) -> Tensor:
        """KL(q || prior) of the variational posterior, summed over parameters (0 if none)."""
        return torch.zeros((), device=self._device())

    def variational_parameters(self) -> list[nn.Parameter]:
        """Parameters of a variational posterior (means, scales), which the ELBO's KL already
        regularises: the optimiser gives them no weight decay. Default: none."""
        return []

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        """``k`` posterior samples of the logits, shape ``(k, B, num_classes)``.

        The default suits deterministic heads (every sample is the same); stochastic heads override
        it with a vectorised draw.
        """
        logits = self(features)
        return logits.unsqueeze(0).expand(k, *logits.shape)

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")
