"""The β sweep's measurements of one model that the full evaluation does not make: the KL spectrum, the distortion
at one fixed decoder σ (so that points whose learned σ differs compare), and how visible a traversal is. Pure
functions on tensors; each returns its number with a 95% bootstrap interval over the images."""
from __future__ import annotations

import math

import torch

from vaelab.intervals import bootstrap, mean_interval, with_interval
from vaelab.loss import gaussian_nll
from vaelab.model import VAE


def effective_units(kl_dims: torch.Tensor) -> float:
    """exp H(p), p_j = KL_j / Σ KL of the mean KL per dimension (D,): 1 when one unit holds all the rate, D when
    every unit holds the same share."""
    p = kl_dims.double().clamp_min(0) / kl_dims.double().clamp_min(0).sum()
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def units_for_mass(kl_dims: torch.Tensor, mass: float = 0.9) -> int:
    """The fewest units whose KL (D,) holds `mass` of the total rate."""
    sorted_kl = kl_dims.double().clamp_min(0).sort(descending=True).values
    share = sorted_kl.cumsum(0) / sorted_kl.sum()
    return int((share < mass - 1e-12).sum()) + 1


def spectrum(kl_dims: torch.Tensor, mass: float, reps: int, seed: int) -> dict[str, float]:
    """effective_units and units_90 (for mass = 0.9) of per-image KL per dimension (N, D), with intervals."""
    key = f"units_{round(100 * mass)}"
    out = with_interval("effective_units", effective_units(kl_dims.mean(0)),
                        bootstrap(lambda i: effective_units(kl_dims[i].mean(0)), [len(kl_dims)], reps, seed))
    return out | with_interval(key, units_for_mass(kl_dims.mean(0), mass),
                               bootstrap(lambda i: units_for_mass(kl_dims[i].mean(0), mass), [len(kl_dims)], reps,
                                         seed))


@torch.no_grad()
def fixed_sigma_distortion(x: torch.Tensor, recon: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log p(x | x̂) in nats per image (N,) under the discretized Gaussian of fixed `sigma` ([-1, 1] pixel scale)
    around the reconstruction: images and reconstructions uint8 (N, 3, 32, 32)."""
    def unit(t: torch.Tensor) -> torch.Tensor:
        return t.float() / 127.5 - 1.0
    return gaussian_nll(unit(x), unit(recon), torch.tensor([math.log(sigma)])).double()


@torch.no_grad()
def traversal_change(model: VAE, mu: torch.Tensor, dims: list[int], span: float) -> torch.Tensor:
    """Per image (N,): the mean absolute pixel change, on the [0, 1] scale, between its code with z_j = -span and
    with z_j = +span (prior standard deviations), averaged over the dimensions `dims`."""
    device = next(model.parameters()).device
    change = torch.zeros(len(mu), dtype=torch.float64)
    for j in dims:
        lo, hi = mu.clone(), mu.clone()
        lo[:, j], hi[:, j] = -span, span
        a, b = model.decode(lo.to(device)).float().cpu(), model.decode(hi.to(device)).float().cpu()
        change += ((a - b).abs() / 2).flatten(1).mean(1).double()  # [-1, 1] -> [0, 1] scale
    return change / len(dims)


def traversal_visibility(model: VAE, mu: torch.Tensor, kl_dims: torch.Tensor, n_dims: int, span: float, reps: int,
                         seed: int) -> dict[str, float]:
    """traversal_change of the n_dims highest-KL dimensions (by mean KL (D,)), mean over images with interval."""
    dims = kl_dims.argsort(descending=True)[:n_dims].tolist()
    return with_interval("traversal_change", *mean_interval(traversal_change(model, mu, dims, span), reps, seed))
