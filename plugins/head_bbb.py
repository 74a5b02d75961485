"""Head: ``bbb``, a Bayes-by-Backprop linear layer built on blitz's ``BayesianLinear``.

Posterior: factorised Gaussian q(w) = N(mu, softplus(rho)^2). blitz's default ``rho = -7`` gives
sigma ~ 9e-4, i.e. almost no uncertainty, so we default to ``rho = -4`` (sigma ~ 0.018).

Priors (``[model.head] prior = ...``), on every weight and bias independently:

- ``"gaussian"``: N(0, prior_sigma_1^2);
- ``"scale_mixture"``: prior_pi N(0, prior_sigma_1^2) + (1 - prior_pi) N(0, prior_sigma_2^2)
  (Blundell et al., 2015; defaults are the reference's spike-and-slab 0.75 / 0.1 / 0.0005);
- ``"laplace"``: Laplace(0, prior_b), density exp(-|w| / b) / (2 b) (reference: b = 0.1). It has
  its own scale option rather than reusing prior_sigma_1, so switching prior never silently
  reinterprets a sigma as a Laplace scale.

The KL is the usual one-sample Monte Carlo estimate log q(w) - log p(w) on the weights drawn in
the latest ``forward``, summed over weights; the method weights it (1/N by default).

Why the densities are ours and not blitz's (checked in blitz 0.2.8's ``weight_sampler.py``):
``PriorWeightDistribution.log_prior`` returns ``sum(log(pi p1(w) + (1-pi) p2(w) + 1e-6) - 0.5)``,
i.e. it floors every density at 1e-6 (so far in the tails, e.g. a Laplace(0.1) prior at |w| > 1.4,
the prior stops pulling weights back: zero gradient) and mixes in probability space (underflow),
and its ``log_posterior`` adds the same arbitrary -0.5 per weight. We use :class:`ExactPrior`
(exact ``torch.distributions`` log-densities, mixtures via logsumexp) and compute log q(w) with
``torch.distributions.Normal``, so the estimate is unbiased everywhere.

Why the sampling is ours too: blitz's ``TrainableRandomDistribution`` wraps ``weight_mu`` /
``weight_rho`` a second time as ``weight_sampler.mu`` / ``.rho`` (same storage, distinct
``nn.Parameter`` objects), so ``parameters()`` yields each storage twice (an optimiser updates it
twice; ``.to(device)`` or ``.double()`` even splits the copies apart) and log q(w) differentiates
one copy while the sampled w differentiates the other. It also refills its noise buffer in place
(``eps_w.data.normal_()``), so with several ELBO samples per step autograd reuses the last draw
for every sample. Here blitz's ``BayesianLinear`` is only the parameter container: its samplers'
``mu``/``rho`` are made the *same* ``Parameter`` objects as the layer's (so the state dict keeps
blitz's keys, ``weight_sampler.mu`` included, and old checkpoints load), and ``forward`` draws
``w = mu + softplus(rho) * eps`` itself with fresh noise ``eps`` as a new tensor, keeping that
noise for :meth:`BBBHead.kl`. blitz's own ``forward`` and ``eps_w`` buffers are not used (the
buffers stay in the state dict for compatibility only).

``sample_logits`` draws ``k`` weight matrices in one vectorised call from the same parameters
instead of ``k`` forwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from blitz.modules import BayesianLinear
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Laplace, MixtureSameFamily, Normal

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions

Prior = Literal["gaussian", "scale_mixture", "laplace"]
PRIORS: tuple[str, ...] = get_args(Prior)


class ExactPrior(nn.Module):
    """A factorised prior over weights with exact log-densities.

    Drop-in for blitz's ``PriorWeightDistribution`` (same ``log_prior(w) -> sum`` interface) and
    holds no tensors: the ``torch.distributions`` object is built on the weights' device and
    dtype at each call, so it follows the head to any device without changing its state dict.
    """

    def __init__(self, kind: str, *, sigma_1: float, sigma_2: float, pi: float, b: float) -> None:
        super().__init__()
        if kind not in PRIORS:  # the values themselves are checked by BBBHead.Options
            raise ValueError(f"unknown prior {kind!r}; choose one of {PRIORS}")
        self.kind, self.sigma_1, self.sigma_2, self.pi, self.b = kind, sigma_1, sigma_2, pi, b

    def distribution(
        self, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> Distribution:
        def t(*values: float) -> Tensor:
            return torch.tensor(
                values if len(values) > 1 else values[0], device=device, dtype=dtype
            )

        if self.kind == "gaussian":
            return Normal(t(0.0), t(self.sigma_1))
        if self.kind == "laplace":
            return Laplace(t(0.0), t(self.b))
        return MixtureSameFamily(
            Categorical(probs=t(self.pi, 1.0 - self.pi)),
            Normal(t(0.0, 0.0), t(self.sigma_1, self.sigma_2)),
        )

    def log_prob(self, w: Tensor) -> Tensor:
        """Elementwise log-density of ``w``."""
        return self.distribution(w.device, w.dtype).log_prob(w)

    def log_prior(self, w: Tensor) -> Tensor:
        """Summed log-density (blitz's interface)."""
        return self.log_prob(w).sum()

    def extra_repr(self) -> str:
        if self.kind == "gaussian":
            return f"gaussian, sigma={self.sigma_1}"
        if self.kind == "laplace":
            return f"laplace, b={self.b}"
        return f"scale_mixture, pi={self.pi}, sigma_1={self.sigma_1}, sigma_2={self.sigma_2}"


class BBBHead(Head):
    plugin_name = "bbb"
    deterministic = False

    class Options(PluginOptions):
        prior: Prior = Field("gaussian", description="prior on every weight and bias")
        prior_sigma_1: float = Field(
            0.1, gt=0, description="gaussian sd; scale_mixture's first component sd"
        )
        prior_sigma_2: float = Field(0.0005, gt=0, description="scale_mixture's second sd")
        prior_pi: float = Field(0.75, ge=0, le=1, description="scale_mixture's first weight")
        prior_b: float = Field(0.1, gt=0, description="laplace prior's scale b")
        posterior_rho_init: float = Field(
            -4.0, description="initial rho of q; sigma = softplus(rho) (-4: sigma ~ 0.018)"
        )

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        o = self.opts
        self.prior = ExactPrior(
            o.prior, sigma_1=o.prior_sigma_1, sigma_2=o.prior_sigma_2, pi=o.prior_pi, b=o.prior_b
        )
        self.layer = BayesianLinear(
            in_features,
            num_classes,
            prior_sigma_1=o.prior_sigma_1,
            prior_sigma_2=o.prior_sigma_2,
            prior_pi=o.prior_pi,
            posterior_rho_init=o.posterior_rho_init,
        )
        # Exact priors in place of blitz's floored ones (see the module docstring). Plain
        # attribute swap of parameter-free modules: the state dict is unchanged.
        self.layer.weight_prior_dist = self.prior
        self.layer.bias_prior_dist = self.prior
        self._tie_aliases()
        for sampler in (self.layer.weight_sampler, self.layer.bias_sampler):
            sampler.eps_w.zero_()  # unused; was uninitialised memory, now saves deterministically
        # blitz initialises mu ~ N(0, 0.1) regardless of fan-in; use the usual linear init scale.
        with torch.no_grad():
            bound = 1.0 / in_features**0.5
            self.layer.weight_mu.uniform_(-bound, bound)
            self.layer.bias_mu.uniform_(-bound, bound)
        # the noise of the latest forward (plain leaf tensors, so copy.deepcopy keeps working)
        self._noise: tuple[Tensor, Tensor] | None = None

    def _tie_aliases(self) -> None:
        """One Parameter object per storage: the samplers' aliases become the layer's own
        parameters, so ``parameters()`` (which deduplicates by object) yields each once, while
        the state dict keeps its ``weight_sampler.mu``-style keys."""
        layer = self.layer
        layer.weight_sampler.mu, layer.weight_sampler.rho = layer.weight_mu, layer.weight_rho
        layer.bias_sampler.mu, layer.bias_sampler.rho = layer.bias_mu, layer.bias_rho

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> BBBHead:
        # ``.to()``/``.double()`` keep a Parameter's identity when they can (CPU <-> CUDA), but
        # replace it by a new object per module key otherwise (e.g. to "meta", or with torch's
        # overwrite/swap-on-conversion flags): tie the aliases again afterwards.
        super()._apply(fn, recurse)
        self._tie_aliases()
        self._noise = None  # drawn for the old device/dtype; the next forward draws anew
        return self

    def variational_parameters(self) -> list[nn.Parameter]:
        layer = self.layer
        return [layer.weight_mu, layer.weight_rho, layer.bias_mu, layer.bias_rho]

    def _weights(self, eps_w: Tensor, eps_b: Tensor) -> tuple[Tensor, Tensor]:
        """The reparameterised sample ``mu + softplus(rho) * eps`` of weight and bias."""
        w_std, b_std = self.posterior_std()
        return self.layer.weight_mu + w_std * eps_w, self.layer.bias_mu + b_std * eps_b

    def forward(self, features: Tensor) -> Tensor:
        """Logits under one fresh posterior sample (in eval mode too, as blitz does)."""
        mu_w, mu_b = self.layer.weight_mu, self.layer.bias_mu
        self._noise = (torch.randn_like(mu_w), torch.randn_like(mu_b))  # new tensors per call
        weight, bias = self._weights(*self._noise)
        return F.linear(features, weight, bias)

    def last_sample(self) -> tuple[Tensor, Tensor]:
        """The weight and bias drawn in the latest ``forward`` (a function of the parameters)."""
        if self._noise is None:
            raise RuntimeError("kl() needs a forward pass first (it uses that pass's weights)")
        return self._weights(*self._noise)

    def posterior_std(self) -> tuple[Tensor, Tensor]:
        return F.softplus(self.layer.weight_rho), F.softplus(self.layer.bias_rho)

    def log_posterior(self, weight: Tensor, bias: Tensor) -> Tensor:
        """log q(weight, bias), summed (exact Gaussian log-density)."""
        w_std, b_std = self.posterior_std()
        return (
            Normal(self.layer.weight_mu, w_std).log_prob(weight).sum()
            + Normal(self.layer.bias_mu, b_std).log_prob(bias).sum()
        )

    def log_prior(self, weight: Tensor, bias: Tensor) -> Tensor:
        """log p(weight, bias), summed (exact prior log-density)."""
        return self.prior.log_prior(weight) + self.prior.log_prior(bias)

    def kl(self) -> Tensor:
        """One-sample MC estimate of KL(q || p) on the weights drawn in the latest forward.

        The sample is rebuilt from that forward's noise and the current parameters, so its
        gradient is the full reparameterisation gradient (through w and through q's mu, sigma).
        """
        weight, bias = self.last_sample()
        return self.log_posterior(weight, bias) - self.log_prior(weight, bias)

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        w_std, b_std = self.posterior_std()
        mu_w, mu_b = self.layer.weight_mu, self.layer.bias_mu
        weights = mu_w + w_std * torch.randn((k, *mu_w.shape), device=mu_w.device, dtype=mu_w.dtype)
        biases = mu_b + b_std * torch.randn((k, *mu_b.shape), device=mu_b.device, dtype=mu_b.dtype)
        return torch.einsum("bi,koi->kbo", features, weights) + biases[:, None, :]


@hookimpl
def register_heads(register: RegisterPart) -> None:
    register(
        "bbb",
        BBBHead,
        summary="Bayes-by-Backprop linear layer (blitz); prior gaussian | scale_mixture | laplace",
    )
