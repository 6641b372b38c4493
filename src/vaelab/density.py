"""Ex-post densities on latent codes: a full-covariance Gaussian mixture fitted by EM to the posterior means of
the training images, sampled in place of N(0, I) (Ghosh et al. 2020, "From Variational to Deterministic
Autoencoders"). Deterministic for a seed; computed in float64 for stable covariances."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from vaelab.storage import load_state


@dataclass(frozen=True)
class GaussianMixture:
    """weights (K,), means (K, D) and Cholesky factors of the covariances (K, D, D)."""

    weights: torch.Tensor
    means: torch.Tensor
    scale_tril: torch.Tensor

    @property
    def components(self) -> int:
        return len(self.weights)


def log_prob(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats of points x (N, D) under the mixture: (N,)."""
    return torch.logsumexp(_component_log_probs(gmm, x.double()), dim=1)


def _component_log_probs(gmm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """log w_k + log N(x | m_k, S_k) for every point and component: (N, K)."""
    d = x.shape[1]
    diff = x[None] - gmm.means[:, None]  # (K, N, D)
    white = torch.linalg.solve_triangular(gmm.scale_tril, diff.transpose(1, 2), upper=False)  # (K, D, N)
    maha = white.pow(2).sum(1)  # (K, N)
    log_det = 2 * gmm.scale_tril.diagonal(dim1=1, dim2=2).log().sum(1)  # (K,)
    out = gmm.weights.log()[:, None] - 0.5 * (maha + log_det[:, None] + d * math.log(2 * math.pi))
    return out.T


def fit_gmm(x: torch.Tensor, components: int, iterations: int = 100, seed: int = 0, reg: float = 1e-4,
            tol: float = 1e-3) -> GaussianMixture:
    """Fit a K-component full-covariance mixture to points x (N, D) by EM from k-means++ seeds; stops after
    `iterations` or when the mean log-likelihood moves less than `tol` nats per point (sklearn's rule). `reg`,
    relative to the data's mean variance, is added to every covariance's diagonal."""
    x = x.double()
    n, d = x.shape
    if not 1 <= components <= n:
        raise ValueError(f"a mixture of {components} components needs at least that many points, got {n}")
    g = torch.Generator().manual_seed(seed)
    eps = reg * x.var(0).mean()
    # k-means++ seeding: each new mean is a point drawn in proportion to its squared distance to the chosen ones.
    means = x[torch.randint(n, (1,), generator=g)]
    for _ in range(components - 1):
        dist = torch.cdist(x, means).min(1).values.pow(2)
        means = torch.cat([means, x[torch.multinomial(dist / dist.sum(), 1, generator=g)]])
    cov = torch.cov(x.T) + eps * torch.eye(d, dtype=x.dtype)
    gmm = GaussianMixture(torch.full((components,), 1.0 / components, dtype=x.dtype), means,
                          torch.linalg.cholesky(cov).expand(components, d, d).clone())
    previous = -math.inf
    for _ in range(iterations):
        lp = _component_log_probs(gmm, x)  # E step: (N, K)
        mean_ll = float(torch.logsumexp(lp, 1).mean())
        resp = (lp - torch.logsumexp(lp, 1, keepdim=True)).exp()
        nk = resp.sum(0) + 1e-10  # (K,)
        means = (resp.T @ x) / nk[:, None]  # M step: (K, D)
        diff = x[None] - means[:, None]  # (K, N, D)
        covs = torch.einsum("kn,kni,knj->kij", resp.T, diff, diff) / nk[:, None, None]
        covs = covs + eps * torch.eye(d, dtype=x.dtype)
        gmm = GaussianMixture(nk / n, means, torch.linalg.cholesky(covs))
        if abs(mean_ll - previous) < tol:
            break
        previous = mean_ll
    return gmm


def sample(gmm: GaussianMixture, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, D) float32 drawn from the mixture, in random component order."""
    comp = torch.multinomial(gmm.weights.float(), n, replacement=True, generator=generator)  # (n,)
    eps = torch.randn(n, gmm.means.shape[1], generator=generator, dtype=gmm.means.dtype)
    z = gmm.means[comp] + (gmm.scale_tril[comp] @ eps[:, :, None])[:, :, 0]  # (n, D)
    return z.float()


def to_state(gmm: GaussianMixture) -> dict[str, torch.Tensor]:
    """The mixture's tensors by name (what `storage.save_state` writes and `GaussianMixture(**state)` reads)."""
    return dataclasses.asdict(gmm)


class StaleSamplerError(RuntimeError):
    """A sampler file fitted with other settings or to another model's codes than the one asked for."""


def load_fitted(path: str | Path, model_md5: str, settings: Mapping[str, Any] | None = None) -> GaussianMixture:
    """The mixture saved in `path` by stage sampler@<β>, checked against the weights md5 of the model it must have
    been fitted to and (given) the settings it must have been fitted with; raises StaleSamplerError if either
    differs."""
    state, saved = load_state(path)
    check_fitted(path, saved, model_md5, settings)
    return GaussianMixture(**state)


def check_fitted(path: str | Path, saved: Mapping[str, Any], model_md5: str,
                 settings: Mapping[str, Any] | None = None) -> None:
    """Raise StaleSamplerError naming the keys that differ when a sampler file's saved settings are not those of
    the model `model_md5` and (given) `settings`."""
    expected = {"model_md5": model_md5, **(settings or {})}
    differ = sorted(k for k in expected if saved.get(k) != expected[k])
    if differ:
        shown = {k: v for k, v in saved.items() if not isinstance(v, Mapping)}  # nested settings stay out of view
        raise StaleSamplerError(f"{path} was fitted with {shown}, not with {expected} (differs in {', '.join(differ)})")
