"""Method: ``kflaplace``, last-layer Kronecker-factored Laplace (Ritter et al. 2018, Laplace Redux).

Training is MAP on a ``linear`` head (cross-entropy + weight decay). After training, laplace-torch
fits a KFAC Gauss-Newton to the head on the training features and tunes the prior precision by
maximising the marginal likelihood (``prior_precision = "marglik"``) unless the recipe gives a
number. With ``train.backbone = "finetune"`` the detector is first fine-tuned with MAP, then the
head continues on the frozen features and the Laplace fit runs on them.

laplace-torch's convention (checked on 0.3 with its default curvlinops backend), for
``nn.Linear(D, C)`` with weight ``W [C, D]`` flattened row-major, then the bias:

- weight block: Kronecker factors ``(G [C, C], A [D, D])``; ``G`` sums the output Hessians
  ``diag(p) - p p^T`` over the N training points and ``A = mean x x^T`` (inputs *not* augmented
  with a 1: the bias is its own block);
- bias block: a single full factor ``G [C, C]``;
- posterior precision per block (``h = 1 / (sigma_noise^2 temperature)``, ``d`` = prior precision):
  ``h G (x) A + d I`` for the weight, eigen-decomposed as ``Q_G (x) Q_A`` with eigenvalues
  ``h l_G l_A^T + d`` (exact, not the damped matrix normal ``(G + sqrt(d) I)^-1 (x)
  (A + sqrt(d) I)^-1``: laplace-torch 0.3's ``damping=True`` is lost when its ``KronDecomposed``
  is scaled or shifted, so its posterior and marginal likelihood are always the undamped ones, and
  we match those); ``h G_bias + d I`` for the bias.

The factors are saved uninverted (``extra_state``), with the prior precision, N and the noise
facts (``extra_meta``), so the prior changes at evaluation time without refitting:
``set_prior_precision(p)`` in Python, or ``prior_precision = <number>`` in the run's
``recipe.toml`` ``[inference]`` table before ``bnnkit evaluate``. Only eigenvalues are shifted;
the eigen-decomposition is reused.

``sample(features, k)`` draws ``k`` weight matrices ``W = M + Q_G (S * Z) Q_A^T`` (``Z`` standard
normal, ``S`` the eigenvalues to the power -1/2) and biases in one vectorised call, then one einsum
gives ``k`` logit samples. Written here rather than calling ``KronLaplace.sample``: that needs
the fitted ``Laplace`` object (rebuilt from a model and data at every load), returns flat parameter
vectors, and applies the full ``P^-1/2`` (rotating the noise into the eigenbasis first, which does
not change the distribution). The tests check our draws against its covariance and predictive.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnnkit import hookimpl
from bnnkit.hookspecs import RegisterPart
from bnnkit.methods.base import InferenceMethod
from bnnkit.model.heads import Head
from bnnkit.options import Field, PluginOptions

PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def _linear_of(head: Head) -> nn.Linear:
    """The head's single ``nn.Linear`` (the layer the Laplace approximation is over)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ValueError(f"kflaplace needs a head with exactly one nn.Linear, found {len(linears)}")
    return linears[0]


class KronPosterior:
    """Gaussian posterior over ``(W [C, D], b [C])`` in laplace-torch's Kronecker layout.

    ``kfacs`` are laplace-torch's uninverted factors for ``[weight, bias]``: ``[[G, A], [G_b]]``.
    Each factor is eigen-decomposed once (in its own dtype, as laplace-torch does; or pass
    laplace-torch's ``decomposed = (eigenvalues, eigenvectors)`` to reuse its decomposition); the
    prior precision and the Hessian factor only shift and scale eigenvalues.
    """

    def __init__(
        self,
        kfacs: Sequence[Sequence[Tensor]],
        *,
        prior_precision: float | Sequence[float],
        h_factor: float = 1.0,
        decomposed: tuple[Sequence[Sequence[Tensor]], Sequence[Sequence[Tensor]]] | None = None,
    ) -> None:
        if len(kfacs) != 2 or len(kfacs[0]) != 2 or len(kfacs[1]) != 1:
            shapes = [[tuple(f.shape) for f in block] for block in kfacs]
            raise ValueError(f"expected factors [[G, A], [G_bias]] of a linear layer, got {shapes}")
        self.kfacs = [[f.detach() for f in block] for block in kfacs]
        self.h_factor = float(h_factor)
        if decomposed is None:
            self._eig = [[torch.linalg.eigh(f, UPLO="U") for f in block] for block in self.kfacs]
        else:
            values, vectors = decomposed
            self._eig = [
                [(v.detach(), q.detach()) for v, q in zip(vs, qs, strict=True)]
                for vs, qs in zip(values, vectors, strict=True)
            ]
        self.set_prior_precision(prior_precision)

    @property
    def shapes(self) -> tuple[int, int]:
        """``(C, D)``."""
        return self.kfacs[0][0].shape[0], self.kfacs[0][1].shape[0]

    def set_prior_precision(self, prior_precision: float | Sequence[float]) -> None:
        """Scalar, or one value per block (weight, bias), as laplace-torch allows."""
        values = (
            [float(prior_precision)]
            if isinstance(prior_precision, int | float)
            else [float(v) for v in prior_precision]
        )
        if len(values) not in (1, 2) or not all(v > 0 and math.isfinite(v) for v in values):
            raise ValueError(f"prior precision must be 1 or 2 positive numbers, got {values}")
        self.prior_precision = values
        self.deltas = values * 2 if len(values) == 1 else values

    def eigenvalues(self) -> tuple[Tensor, Tensor]:
        """Posterior-precision eigenvalues of the weight block ``[C, D]`` and the bias ``[C]``."""
        h, (d_w, d_b) = self.h_factor, self.deltas
        (l_g, _), (l_a, _) = self._eig[0]
        # negative round-off in a PSD factor's spectrum would give sqrt(<0) below
        l_g, l_a = l_g.clamp_min(0), l_a.clamp_min(0)
        weight = h * torch.outer(l_g, l_a) + d_w
        bias = h * self._eig[1][0][0].clamp_min(0) + d_b
        return weight, bias

    def covariance(self) -> Tensor:
        """Dense posterior covariance over ``[vec_rowmajor(W), b]`` (for tests; small layers)."""
        (_, q_g), (_, q_a) = self._eig[0]
        _, q_b = self._eig[1][0]
        lam_w, lam_b = (lam.double() for lam in self.eigenvalues())
        q_g, q_a, q_b = q_g.double(), q_a.double(), q_b.double()
        q = torch.kron(q_g, q_a)
        cov_w = q @ torch.diag(lam_w.flatten().reciprocal()) @ q.T
        cov_b = q_b @ torch.diag(lam_b.reciprocal()) @ q_b.T
        return torch.block_diag(cov_w, cov_b)

    def sample(
        self,
        k: int,
        *,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``k`` zero-mean draws ``(dW [k, C, D], db [k, C])``: ``dW = Q_G (S * Z) Q_A^T``."""
        c, d = self.shapes
        (_, q_g), (_, q_a) = self._eig[0]
        _, q_b = self._eig[1][0]
        lam_w, lam_b = self.eigenvalues()
        q_g, q_a, q_b = q_g.to(dtype), q_a.to(dtype), q_b.to(dtype)
        scale_w, scale_b = lam_w.rsqrt().to(dtype), lam_b.rsqrt().to(dtype)
        dev = q_a.device
        z = torch.randn(k, c, d, generator=generator, dtype=dtype, device=dev)
        dw = q_g @ (z * scale_w) @ q_a.T
        zb = torch.randn(k, c, generator=generator, dtype=dtype, device=dev)
        db = (zb * scale_b) @ q_b.T
        return dw, db

    def to(self, device: torch.device) -> KronPosterior:
        self.kfacs = [[f.to(device) for f in block] for block in self.kfacs]
        self._eig = [[(v.to(device), q.to(device)) for v, q in block] for block in self._eig]
        return self


class KFLaplace(InferenceMethod):
    heads = ("linear",)
    joint_finetune = False
    post_hoc = True  # train.epochs = 0 wraps a released head ([model.head] init)
    needs_train_features = True
    summary = "last-layer KFAC Laplace (laplace-torch), prior precision by marginal likelihood"

    class Options(PluginOptions):
        prior_precision: Literal["marglik"] | PositiveFinite = Field(
            "marglik", description="prior precision; 'marglik' = tuned by marginal likelihood"
        )

    def __init__(self, head: Head, *, num_train: int, **options: Any) -> None:
        super().__init__(head, num_train=num_train, **options)
        self.linear = _linear_of(head)
        prior = self.opts.prior_precision
        self.prior_override: float | None = None if prior == "marglik" else float(prior)
        self.posterior: KronPosterior | None = None
        self.facts: dict[str, Any] = {}

    # -- fit ------------------------------------------------------------------------------------
    def after_training(self, features: Tensor | None, targets: Tensor | None) -> None:
        if features is None or targets is None or features.shape[0] == 0:
            raise ValueError("kflaplace needs the training features to fit the Laplace posterior")
        with warnings.catch_warnings():
            # laplace-torch's import pulls in a dependency using torch.jit.script (deprecated)
            warnings.simplefilter("ignore", FutureWarning)
            from laplace import Laplace
        from torch.utils.data import DataLoader, TensorDataset

        was_training = self.head.training
        self.head.eval()
        # "all" weights of a one-layer model = the last layer; laplace-torch's last_layer mode
        # would need last_layer_name and a feature-extractor hook for nothing.
        model = nn.Sequential(self.linear)
        la = Laplace(
            model,
            "classification",
            subset_of_weights="all",
            hessian_structure="kron",
            prior_precision=self.prior_override or 1.0,
        )
        loader = DataLoader(TensorDataset(features.detach(), targets.detach()), batch_size=1024)
        with torch.enable_grad():
            la.fit(loader)
            if self.prior_override is None:
                with warnings.catch_warnings():
                    # about link_approx, which only matters for method="gridsearch"
                    warnings.filterwarnings("ignore", message=".*link_approx.*")
                    la.optimize_prior_precision(method="marglik")
        self.head.train(was_training)
        prior = [float(v) for v in la.prior_precision.detach().flatten()]
        sigma = float(torch.as_tensor(la.sigma_noise).flatten()[0])
        self.facts = {
            "n_data": int(la.n_data),
            "sigma_noise": sigma,
            "temperature": float(la.temperature),
            "prior_precision_fitted": prior,
            "prior_precision_source": "marglik" if self.prior_override is None else "recipe",
            "log_marginal_likelihood": float(la.log_marginal_likelihood().detach()),
            "laplace_layout": "linear: [[G, A], [G_bias]] (curvlinops KFAC)",
        }
        self.posterior = KronPosterior(
            la.H_facs.kfacs,
            prior_precision=prior,
            h_factor=1.0 / (sigma**2 * float(la.temperature)),
            decomposed=(la.H.eigenvalues, la.H.eigenvectors),  # the D x D eigh is the cost
        )

    def set_prior_precision(self, prior_precision: float | Sequence[float]) -> None:
        """Change the prior precision of the fitted posterior (no refit)."""
        if self.posterior is None:
            raise RuntimeError("kflaplace: no fitted posterior yet (train, or load a run)")
        self.posterior.set_prior_precision(prior_precision)

    @property
    def prior_precision(self) -> list[float] | None:
        return None if self.posterior is None else list(self.posterior.prior_precision)

    # -- prediction -----------------------------------------------------------------------------
    def sample_logits(self, features: Tensor, k: int) -> Tensor:
        """``logits[k, B, C]`` from ``k`` weight draws; MAP (repeated) before the fit."""
        mean_w, mean_b = self.linear.weight, self.linear.bias
        if self.posterior is None:
            logits = F.linear(features, mean_w, mean_b)
            return logits.unsqueeze(0).expand(k, *logits.shape)
        dw, db = self.posterior.sample(k, dtype=mean_w.dtype)
        w = mean_w.detach().unsqueeze(0) + dw
        b = mean_b.detach().unsqueeze(0) + db
        return torch.einsum("bd,kcd->kbc", features.to(w.dtype), w) + b.unsqueeze(1)

    def to(self, device: torch.device) -> KFLaplace:
        if self.posterior is not None:
            self.posterior.to(device)
        return self

    # -- persistence ----------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        if self.posterior is None:
            return {}
        (g, a), (g_b,) = self.posterior.kfacs
        return {"kron_G": g, "kron_A": a, "kron_G_bias": g_b}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if not state:
            self.posterior = None
            return
        expected = {"kron_G", "kron_A", "kron_G_bias"}
        if set(state) != expected:
            raise ValueError(f"kflaplace state needs {sorted(expected)}, got {sorted(state)}")
        c, d = self.linear.out_features, self.linear.in_features
        g, a, g_b = state["kron_G"], state["kron_A"], state["kron_G_bias"]
        if g.shape != (c, c) or a.shape != (d, d) or g_b.shape != (c, c):
            raise ValueError(
                f"kflaplace factors {tuple(g.shape)}, {tuple(a.shape)}, {tuple(g_b.shape)} do "
                f"not fit a linear head with {d} inputs and {c} classes"
            )
        # the prior is set properly by load_extra_meta; 1.0 is a placeholder
        self.posterior = KronPosterior([[g, a], [g_b]], prior_precision=[1.0])

    def extra_meta(self) -> dict[str, Any]:
        if self.posterior is None:
            return {}
        return {
            **self.facts,
            "prior_precision": list(self.posterior.prior_precision),
            "h_factor": self.posterior.h_factor,
        }

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        if self.posterior is None:
            return
        self.facts = {k: v for k, v in meta.items() if k not in ("prior_precision", "h_factor")}
        self.posterior.h_factor = float(meta.get("h_factor", 1.0))
        # a number in the recipe (e.g. edited in RUN/recipe.toml) overrides the fitted prior
        prior = self.prior_override or meta.get("prior_precision") or [1.0]
        self.posterior.set_prior_precision(prior)


@hookimpl
def register_methods(register: RegisterPart) -> None:
    register("kflaplace", KFLaplace)
