"""How the latent space is organised: total correlation of the aggregate posterior (a Gaussian estimate that does
not saturate with the rate, and the sampled estimate with its validity), KL per dimension against the trained
prior, active units at several thresholds. Every number comes with a bootstrap interval over the test images."""
from __future__ import annotations

import math

import torch

from vaelab.intervals import bootstrap, with_interval
from vaelab.loss import log_normal


def aggregate_covariance(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Covariance (D, D) of the aggregate posterior q(z) = (1/N) sum_n N(mu_n, diag sigma_n^2) of codes (N, D):
    Cov_n(mu_n) + mean_n diag(sigma_n^2) (law of total covariance)."""
    mu = mu.double()
    return torch.cov(mu.T, correction=0) + torch.diag(logvar.double().exp().mean(0))


def gaussian_total_correlation(cov: torch.Tensor) -> float:
    """Total correlation of a Gaussian with covariance `cov` (D, D), in nats: KL(N(0, C) || prod_j N(0, C_jj)) =
    -1/2 log det R with R the correlation matrix. 0 for independent dimensions; it depends on the correlations
    only, not on how much information each dimension carries, so it does not grow with the rate."""
    sd = cov.diagonal().clamp_min(1e-300).sqrt()
    corr = cov / (sd[:, None] * sd[None, :])
    return float(-0.5 * torch.linalg.slogdet(corr).logabsdet)


def sampled_total_correlation(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int, seed: int = 0,
                              chunk: int = 64) -> tuple[float, float]:
    """Sampled total correlation KL(q(z) || prod_j q(z_j)) in nats, and the mean self-weight of the estimate.

    Minibatch-weighted sampling (Chen et al. 2018): one z_i ~ q(z|x_i) per code; within a minibatch B of M codes
    log q(z_i) ~ logsumexp_{n in B} log q(z_i|x_n) - log M, and the same per dimension for log q(z_ij) (the
    paper's constant (D - 1) log N is left out, so independent codes give about 0). The self-weight is the mean
    share q(z_i|x_i) / sum_n q(z_i|x_n) of the code's own posterior in its joint density: near 1, the M codes do not
    cover the aggregate posterior, log q(z_i) collapses to log q(z_i|x_i) - log M and the estimate tracks the
    rate instead of the dependence; it is valid only where the self-weight is small."""
    gen = torch.Generator().manual_seed(seed)
    mu, logvar = mu.float(), logvar.float()
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
    order = torch.randperm(len(mu), generator=gen)
    m = min(batch_size, len(mu))
    total, self_weight, count = 0.0, 0.0, 0
    for start in range(0, len(mu) - m + 1, m):  # whole minibatches only
        batch = order[start : start + m]
        mu_b, lv_b = mu[batch].unsqueeze(0), logvar[batch].unsqueeze(0)  # (1, M, D)
        for i in range(0, m, chunk):
            zi = z[batch[i : i + chunk]].unsqueeze(1)  # (c, 1, D)
            lq = log_normal(zi, mu_b, lv_b)  # (c, M, D)
            joint = lq.sum(-1)  # (c, M)
            log_joint = torch.logsumexp(joint, dim=1) - math.log(m)  # (c,)
            log_marginals = (torch.logsumexp(lq, dim=1) - math.log(m)).sum(-1)  # (c,)
            total += float((log_joint - log_marginals).double().sum())
            own = joint[torch.arange(len(zi)), torch.arange(i, i + len(zi))]  # log q(z_i | x_i), (c,)
            self_weight += float((own - torch.logsumexp(joint, dim=1)).exp().double().sum())
            count += len(zi)
    return total / count, self_weight / count


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al. 2015: number of latent dimensions j with Cov_x(E[z_j | x]) > threshold; mu: (N, z)."""
    return int((mu.double().var(dim=0) > threshold).sum())


def threshold_key(threshold: float) -> str:
    """The eval.json key of the active-unit count at a threshold: active_units_0p01 for 0.01 (no dots: DVC reads
    dotted keys as nesting)."""
    return "active_units_" + f"{threshold:g}".replace(".", "p").replace("-", "m")


def organisation_metrics(mu: torch.Tensor, logvar: torch.Tensor, thresholds: tuple[float, ...], reps: int,
                         seed: int) -> dict[str, float]:
    """Gaussian total correlation of the aggregate posterior and active-unit counts at each threshold, of test
    codes mu, logvar (N, D), each with its bootstrap interval over the test images."""
    out = with_interval("total_correlation", gaussian_total_correlation(aggregate_covariance(mu, logvar)),
                        bootstrap(lambda i: gaussian_total_correlation(aggregate_covariance(mu[i], logvar[i])),
                                  [len(mu)], reps, seed))
    for t in thresholds:
        out |= with_interval(threshold_key(t), active_units(mu, t),
                             bootstrap(lambda i, t=t: active_units(mu[i], t), [len(mu)], reps, seed))
    return out
