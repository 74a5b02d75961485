"""Head: ``gp``, one variational inducing-point Gaussian process per logit on the pooled
features (DUE: van Amersfoort et al. 2021, "On Feature Collapse and Deep Kernel Learning for
Single Forward Pass Uncertainty"), built with gpytorch; trained by the ``gp`` method
(``plugins/method_gp.py``).

``[model.head]`` options: one independent GP per logit (gpytorch
``IndependentMultitaskVariationalStrategy`` over a ``VariationalStrategy`` with a
``CholeskyVariationalDistribution``, batch shape ``[C]``), each with its own ``num_inducing``
inducing points (default 20, learnt), a constant mean and a scaled ``rbf`` or ``matern``
(nu = 5/2) kernel. Far from the inducing points the predictive of every logit reverts to the
prior (constant mean, variance = the kernel's output scale), so the mutual information of its
samples grows with distance from the training features (``tests/test_distance_aware.py``).

Initialisation (as DUE): inducing points = k-means centres (scikit-learn ``KMeans``) of training
features, the kernel lengthscale = the mean pairwise distance of those features
(:meth:`GPHead.initialise`; when it runs: ``plugins/method_gp.py``). A persistent buffer
``initialised`` records it, so a resumed or loaded run never re-initialises. Under torchrun each
rank initialises on its own rows (its own draw, or its own first batch) and then takes rank 0's
head (a broadcast), so the replicas start, and stay, equal.

The head's ``forward`` returns the predictive mean of the logits; ``sample_logits`` draws ``k``
logits from each image's marginal predictive ``N(mean_c(x), var_c(x))`` (independent across
images: the scores are per image), ``[k, B, C]``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions


def import_gpytorch() -> Any:
    with warnings.catch_warnings():
        # gpytorch's import pulls in a dependency using torch.jit.script (deprecated)
        warnings.simplefilter("ignore", FutureWarning)
        import gpytorch
    return gpytorch


def _make_gp(in_features: int, num_classes: int, num_inducing: int, kernel: str) -> nn.Module:
    gpytorch = import_gpytorch()
    from gpytorch.variational import (
        CholeskyVariationalDistribution,
        IndependentMultitaskVariationalStrategy,
        VariationalStrategy,
    )

    class _GP(gpytorch.models.ApproximateGP):
        def __init__(self) -> None:
            batch = torch.Size([num_classes])
            inducing = torch.randn(num_classes, num_inducing, in_features)
            dist = CholeskyVariationalDistribution(num_inducing, batch_shape=batch)
            strategy = IndependentMultitaskVariationalStrategy(
                VariationalStrategy(self, inducing, dist, learn_inducing_locations=True),
                num_tasks=num_classes,
            )
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
            base = (
                gpytorch.kernels.RBFKernel(batch_shape=batch)
                if kernel == "rbf"
                else gpytorch.kernels.MaternKernel(nu=2.5, batch_shape=batch)
            )
            self.covar_module = gpytorch.kernels.ScaleKernel(base, batch_shape=batch)

        def forward(self, x: Tensor) -> Any:
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    return _GP()


def _make_likelihood() -> nn.Module:
    """Categorical over the softmax of the C GP outputs (the logits). gpytorch's own
    ``SoftmaxLikelihood`` is not used: it takes a batch of exactly C images for its legacy
    ``(tasks x data)`` layout and transposes it (1.15), so a last batch of 2 images would be
    read wrongly in a binary run."""
    gpytorch = import_gpytorch()

    class _Softmax(gpytorch.likelihoods.Likelihood):
        def forward(self, function_samples: Tensor, *args: Any, **kwargs: Any) -> Any:
            return torch.distributions.Categorical(logits=function_samples)

    return _Softmax()


class GPHead(Head):
    """C independent variational GPs over the pooled features (see the module docstring)."""

    plugin_name = "gp"
    deterministic = False

    class Options(PluginOptions):
        num_inducing: int = Field(20, ge=1, le=4096, description="inducing points per logit")
        kernel: Literal["rbf", "matern"] = Field("rbf", description="rbf, or matern (nu = 5/2)")

    def __init__(self, in_features: int, num_classes: int, **options: Any) -> None:
        super().__init__(in_features, num_classes, **options)
        o = self.opts
        self.num_inducing = o.num_inducing
        self.gp = _make_gp(in_features, num_classes, o.num_inducing, o.kernel)
        self.likelihood = _make_likelihood()
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def variational_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())  # the ELBO regularises all of them

    @torch.no_grad()
    def initialise(self, features: Tensor) -> None:
        """Inducing points from k-means on ``features [N, d]``, lengthscale from their mean
        pairwise distance (DUE's initialisation)."""
        from sklearn.cluster import KMeans

        x = features.detach().to("cpu", torch.float64)
        m = self.num_inducing
        distinct = torch.unique(x, dim=0)
        n_clusters = min(m, distinct.shape[0])
        km = KMeans(n_clusters=n_clusters, n_init=3, random_state=0).fit(distinct.numpy())
        centres = torch.as_tensor(km.cluster_centers_)
        if n_clusters < m:
            picks = distinct[torch.randint(distinct.shape[0], (m - n_clusters,))]
            noise = 0.1 * x.std(0, unbiased=False).clamp_min(1e-3) * torch.randn_like(picks)
            centres = torch.cat([centres, picks + noise])
        sample = x[torch.randperm(x.shape[0])[:1000]]
        dist = torch.pdist(sample) if sample.shape[0] > 1 else torch.ones(1)
        ell = float(dist.mean()) if dist.numel() and float(dist.mean()) > 0 else 1.0
        strategy = self.gp.variational_strategy.base_variational_strategy
        ip = strategy.inducing_points
        ip.copy_(centres.to(ip.dtype).expand(self.num_classes, m, -1))
        base = self.gp.covar_module.base_kernel
        base.lengthscale = torch.full_like(base.lengthscale, ell)
        if not strategy.variational_params_initialized.item():  # what gpytorch does on the
            q = strategy._variational_distribution  # first call (random mean), done here so
            q.initialize_variational_distribution(strategy.prior_distribution)  # it is shared
            strategy.variational_params_initialized.fill_(1)
        self.initialised.fill_(True)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():  # torchrun: every rank calls this
            for tensor in self.state_dict().values():  # on its own batch; rank 0's wins
                dist.broadcast(tensor, src=0)

    def predictive(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Marginal predictive of the logits: mean and variance ``[B, C]``."""
        dist = self.gp(features.to(self.initialised.device, torch.float32))
        return dist.mean, dist.variance.clamp_min(0)

    def forward(self, features: Tensor) -> Tensor:
        return self.predictive(features)[0]

    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        mean, var = self.predictive(features)
        z = torch.randn(k, *mean.shape, dtype=mean.dtype, device=mean.device)
        return mean.unsqueeze(0) + var.sqrt().unsqueeze(0) * z


@hookimpl
def register_heads(register: RegisterPart) -> None:
    register("gp", GPHead, summary="variational inducing-point GP per logit (gpytorch)")
