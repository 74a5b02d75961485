"""The pytorch-ood wrappers ``rel_mahalanobis``, ``gmm`` and ``vim`` against plain numpy
computations of the papers' definitions, on a small full-rank example (the projection keeps
every direction, ``dims`` = the feature dimension, so it changes nothing the definitions see).

- RMD (Ren et al. 2021): ``min_k (z - mu_k)' S^-1 (z - mu_k) - (z - mu_0)' S_0^-1 (z - mu_0)``,
  ``S`` the within-class scatter over N (shared), ``S_0`` the total scatter over N;
- GMM (Gaussian discriminant analysis, DDU): ``-log sum_c pi_c N(z | mu_c, S_c)``, ``S_c`` the
  class scatter over N_c, ``pi_c = N_c / N``;
- ViM (Wang et al. 2022): origin ``o = -pinv(W) b``, residual of ``z - o`` outside the top-d
  eigenvectors of the training ``(z - o)``'s second moment, ``alpha`` = mean max-logit / mean
  residual norm, score = softmax probability of the virtual logit ``alpha |res|`` (bnnkit
  reports its log-odds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnkit.scores import ScoreInputs
from bnnkit.scores.store import build_score, load_fit, save_fit, stale_reason

D = 4


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two correlated, unequal Gaussian classes in 4-d (70 and 50 points) and 12 test points,
    some far outside."""
    rng = np.random.default_rng(7)
    mix = rng.normal(size=(D, D))
    x0 = rng.normal(size=(70, D)) @ mix + np.array([1.0, 0, -1, 2])
    x1 = rng.normal(size=(50, D)) @ (mix * [1.5, 0.7, 1, 1.2]) + np.array([3.0, 1, 0, -1])
    train = np.concatenate([x0, x1])
    labels = np.array([0] * 70 + [1] * 50)
    test = np.concatenate([rng.normal(size=(8, D)) @ mix * 1.5, rng.normal(size=(4, D)) * 9])
    return train, labels, test


def _inputs(x: np.ndarray, logits: np.ndarray | None = None) -> ScoreInputs:
    z = torch.tensor(x, dtype=torch.float32)
    lg = torch.zeros(1, len(x), 2) if logits is None else torch.tensor(logits)[None].float()
    return ScoreInputs(z, lg, lg.softmax(-1))


def _fitted(name: str, options: dict, train, labels, logits=None):
    score = build_score(name, options)
    score.fit(_inputs(train, logits), torch.tensor(labels))
    return score


def _mahalanobis_sq(z: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    diff = z - mu
    return np.einsum("bi,bi->b", diff, np.linalg.solve(cov, diff.T).T)


def _close(got: torch.Tensor, want: np.ndarray, rtol: float = 1e-4) -> None:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=rtol * scale)


def test_rel_mahalanobis_equals_the_paper_definition():
    train, labels, test = _data()
    n = len(train)
    mus = [train[labels == k].mean(0) for k in (0, 1)]
    within = sum((train[labels == k] - mus[k]).T @ (train[labels == k] - mus[k]) for k in (0, 1))
    mu0 = train.mean(0)
    total = (train - mu0).T @ (train - mu0)
    md0 = _mahalanobis_sq(test, mu0, total / n)
    want = np.min([_mahalanobis_sq(test, mu, within / n) - md0 for mu in mus], axis=0)

    score = _fitted("rel_mahalanobis", {"dims": D}, train, labels)
    assert score.meta()["dims"] == D
    _close(score(_inputs(test)), want)


def test_gmm_equals_the_class_conditional_gaussian_density():
    train, labels, test = _data()
    log_terms = []
    for k in (0, 1):
        xk = train[labels == k]
        mu = xk.mean(0)
        cov = (xk - mu).T @ (xk - mu) / len(xk)
        _, logdet = np.linalg.slogdet(cov)
        log_pdf = -0.5 * (_mahalanobis_sq(test, mu, cov) + logdet + D * np.log(2 * np.pi))
        log_terms.append(np.log(len(xk) / len(train)) + log_pdf)
    want = -np.logaddexp(*log_terms)

    score = _fitted("gmm", {"dims": D, "reg": 1e-12}, train, labels)  # ridge ~ 0: the definition
    assert score.meta()["dims"] == D
    # the density of the features themselves, not of their whitened image
    _close(score(_inputs(test)), want, rtol=1e-6)


def _vim_reference(train, w, b, test, d):
    o = -np.linalg.pinv(w) @ b
    x = train - o
    _, vecs = np.linalg.eigh(x.T @ x)  # ascending eigenvalues
    null = vecs[:, : D - d]  # outside the top-d principal subspace

    def residual(z):
        return np.linalg.norm((z - o) @ null, axis=1)

    alpha = (train @ w.T + b).max(1).mean() / residual(train).mean()
    logits = test @ w.T + b
    virtual = alpha * residual(test)
    prob = np.exp(virtual) / (np.exp(logits).sum(1) + np.exp(virtual))  # the paper's score
    log_odds = virtual - np.logaddexp.reduce(logits, axis=1)
    return prob, log_odds


def test_vim_is_the_log_odds_of_the_virtual_logit_probability():
    train, labels, test = _data()
    w = np.array([[0.3, -0.2, 0.5, 0.1], [-0.4, 0.6, 0.2, -0.3]])
    b = np.array([0.2, -0.5])
    logits = train @ w.T + b  # affine in the features: the score's least-squares W, b are exact
    score = _fitted("vim", {"d": 2}, train, labels, logits)
    got = score(_inputs(test))
    prob, log_odds = _vim_reference(train, w, b, test, 2)
    _close(got, log_odds)
    assert score.meta()["alpha"] == pytest.approx(
        float((train @ w.T + b).max(1).mean()) / float(np.mean(_vim_residual(train, w, b, 2))),
        rel=1e-4,
    )
    # the same ranking as the paper's probability
    assert (np.argsort(got.numpy(), kind="stable") == np.argsort(prob, kind="stable")).all()


def _vim_residual(train, w, b, d):
    o = -np.linalg.pinv(w) @ b
    _, vecs = np.linalg.eigh((train - o).T @ (train - o))
    return np.linalg.norm((train - o) @ vecs[:, : D - d], axis=1)


@pytest.mark.parametrize("name", ["rel_mahalanobis", "gmm"])
def test_a_fit_saved_before_the_value_correction_is_stale(tmp_path: Path, name: str):
    train, labels, _ = _data()
    save_fit(tmp_path, name, _fitted(name, {"dims": D}, train, labels), "fp")
    assert load_fit(tmp_path, name, fingerprint="fp") is not None
    info = tmp_path / "scores" / f"{name}.json"
    saved = json.loads(info.read_text())
    del saved["meta"]["values"]  # as an older bnnkit wrote it
    info.write_text(json.dumps(saved))
    assert load_fit(tmp_path, name, fingerprint="fp") is None
    assert "stale" in (stale_reason(tmp_path, name, fingerprint="fp") or "")
