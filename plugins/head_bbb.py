"""Head: ``bbb``, a Bayes-by-Backprop linear layer built on blitz's ``BayesianLinear``.

Posterior: factorised Gaussian q(w) = N(mu, softplus(rho)^2). blitz's default ``rho = -7`` gives
sigma ~ 9e-4, i.e. almost no uncertainty, so we default to ``rho = -4`` (sigma ~ 0.018). blitz's
KL is a one-sample Monte Carlo estimate (log q(w) - log p(w)) summed over weights, computed in
``forward``; the method weights it (1/N by default). ``sample_logits`` draws ``k`` weight
matrices in one vectorised call from the same parameters instead of ``k`` blitz forwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from blitz.modules import BayesianLinear
from torch import Tensor

from bnnkit import hookimpl
from bnnkit.model.heads import Head


class BBBHead(Head):
    deterministic = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        prior_sigma_1: float = 0.1,
        prior_sigma_2: float = 0.4,
        prior_pi: float = 1.0,
        posterior_rho_init: float = -4.0,
    ) -> None:
        super().__init__(in_features, num_classes)
        self.layer = BayesianLinear(
            in_features,
            num_classes,
            prior_sigma_1=prior_sigma_1,
            prior_sigma_2=prior_sigma_2,
            prior_pi=prior_pi,
            posterior_rho_init=posterior_rho_init,
        )
        # blitz initialises mu ~ N(0, 0.1) regardless of fan-in; use the usual linear init scale.
        with torch.no_grad():
            bound = 1.0 / in_features**0.5
            self.layer.weight_mu.uniform_(-bound, bound)
            self.layer.bias_mu.uniform_(-bound, bound)

    def forward(self, features: Tensor) -> Tensor:
        return self.layer(features)

    def kl(self) -> Tensor:
        # Set by blitz during the latest forward pass (a one-sample MC estimate of the KL).
        return self.layer.log_variational_posterior - self.layer.log_prior

    def posterior_std(self) -> tuple[Tensor, Tensor]:
        return F.softplus(self.layer.weight_rho), F.softplus(self.layer.bias_rho)

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        w_std, b_std = self.posterior_std()
        mu_w, mu_b = self.layer.weight_mu, self.layer.bias_mu
        weights = mu_w + w_std * torch.randn((k, *mu_w.shape), device=mu_w.device, dtype=mu_w.dtype)
        biases = mu_b + b_std * torch.randn((k, *mu_b.shape), device=mu_b.device, dtype=mu_b.dtype)
        return torch.einsum("bi,koi->kbo", features, weights) + biases[:, None, :]


def create_bbb(
    in_features: int,
    num_classes: int,
    *,
    prior_sigma_1: float = 0.1,
    prior_sigma_2: float = 0.4,
    prior_pi: float = 1.0,
    posterior_rho_init: float = -4.0,
) -> Head:
    return BBBHead(
        in_features,
        num_classes,
        prior_sigma_1=prior_sigma_1,
        prior_sigma_2=prior_sigma_2,
        prior_pi=prior_pi,
        posterior_rho_init=posterior_rho_init,
    )


@hookimpl
def register_heads(register):
    register("bbb", create_bbb, summary="Bayes-by-Backprop linear layer (blitz BayesianLinear)")
