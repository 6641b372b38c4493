"""The VAE objective as named terms: reconstruction -log p(x|z), perceptual distance and KL, in nats per image,
and bits/dim."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.precision import autocast

N_DIMS = 3 * 32 * 32
HALF_BIN = 1.0 / 255.0  # half the width of one of 256 intensity bins on the [-1, 1] scale


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per latent dimension, in nats: (B, z)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; mu, exp(logvar)) in nats (broadcasting); sum over the last axis for a diagonal
    Gaussian. With mu = logvar = 0 it is the standard-normal prior."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def kl_divergence(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(q(z|x) || p(z)) per image in nats, (B,), from a model output. For the N(0, I) prior it is the closed form;
    with a learned prior (out["log_pz"] = log p(z) at the sampled z) it is the single-sample estimate
    -H[q(z|x)] - log p(z), with the Gaussian entropy H in closed form (lower variance than log q(z) - log p(z))."""
    if "log_pz" not in out:
        return kl_normal(out["mu"], out["logvar"]).sum(1)
    entropy = 0.5 * (1.0 + math.log(2 * math.pi) + out["logvar"]).sum(1)  # (B,)
    return -entropy - out["log_pz"]


def _discretized_log_prob(
    x: torch.Tensor,
    log_pdf_mid: torch.Tensor,
    cdf_plus: torch.Tensor,
    cdf_min: torch.Tensor,
    log_cdf_plus: torch.Tensor,
    log_sf_min: torch.Tensor,
) -> torch.Tensor:
    """log P(bin of x) from the continuous CDF/density evaluated at the bin edges (elementwise, nats)."""
    delta = cdf_plus - cdf_min
    # Interior bins: log(CDF(x + h) - CDF(x - h)); where that underflows, the density times the bin width.
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid + math.log(2 * HALF_BIN))
    # The edge bins take the whole tail, so the 256 probabilities sum to one.
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_sf_min, inner))


def logistic_nll(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) under a per-pixel discretized logistic (256 bins), in nats per image: (B,).

    x: (B, 3, 32, 32) in [-1, 1] on the 256-level grid; params: (B, 6, 32, 32) = means and log-scales.
    """
    mean, log_scale = params[:, :3], params[:, 3:].clamp(min=-7.0)
    inv_s = torch.exp(-log_scale)
    c = x - mean
    plus_in, min_in, mid_in = inv_s * (c + HALF_BIN), inv_s * (c - HALF_BIN), inv_s * c
    log_p = _discretized_log_prob(
        x,
        log_pdf_mid=mid_in - log_scale - 2.0 * F.softplus(mid_in),
        cdf_plus=torch.sigmoid(plus_in),
        cdf_min=torch.sigmoid(min_in),
        log_cdf_plus=plus_in - F.softplus(plus_in),
        log_sf_min=-F.softplus(min_in),
    )
    return -log_p.flatten(1).sum(1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) under a discretized Gaussian with one global sigma (256 bins), in nats per image: (B,).

    x, mean: (B, 3, 32, 32) in [-1, 1]; log_sigma: anything broadcasting to x: (1,) global, (3, 1, 1) per
    channel, (B, 3, 32, 32) per pixel.
    """
    log_sigma = log_sigma.clamp(min=-7.0)
    inv_s = torch.exp(-log_sigma)
    c = x - mean[:, :3]
    plus_in, min_in, mid_in = inv_s * (c + HALF_BIN), inv_s * (c - HALF_BIN), inv_s * c
    log_p = _discretized_log_prob(
        x,
        log_pdf_mid=-0.5 * mid_in.pow(2) - log_sigma - 0.5 * math.log(2 * math.pi),
        cdf_plus=torch.special.ndtr(plus_in),
        cdf_min=torch.special.ndtr(min_in),
        log_cdf_plus=torch.special.log_ndtr(plus_in),
        log_sf_min=torch.special.log_ndtr(-min_in),
    )
    return -log_p.flatten(1).sum(1)


def recon_nll(x: torch.Tensor, params: torch.Tensor, likelihood: str, log_sigma: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) in nats per image (B,) for the configured decoder likelihood."""
    if likelihood == "logistic":
        return logistic_nll(x, params)
    if likelihood == "gaussian":
        # Six channels: the decoder predicts a log-sigma per pixel (model.sigma = pixel) beside the means.
        return gaussian_nll(x, params, params[:, 3:] if params.shape[1] == 6 else log_sigma)
    raise ValueError(f"unknown likelihood {likelihood!r}")


def bits_per_dim(nats_per_image: torch.Tensor) -> torch.Tensor:
    """Convert nats per image to bits per dimension (3072 dims)."""
    return nats_per_image / (N_DIMS * math.log(2.0))


def mmd_imq(z: torch.Tensor, scales: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)) -> torch.Tensor:
    """Unbiased MMD^2 between a batch of codes z (B, d) and as many fresh N(0, I) draws: how far the aggregate
    posterior is from the prior (0 = indistinguishable). Inverse multiquadratic kernels C / (C + |a - b|^2) with
    C = 2 d s for each scale s, as in WAE (Tolstikhin et al. 2018), whose heavy tails keep gradients alive
    for codes far from the prior."""
    z = z.float()
    n, d = z.shape
    p = torch.randn_like(z)
    both = torch.cat([z, p])  # (2B, d)
    sq = torch.cdist(both, both).pow(2)  # (2B, 2B)
    k = sum(2 * d * s / (2 * d * s + sq) for s in scales)
    off = 1.0 - torch.eye(n, device=z.device)  # the unbiased estimate leaves out k(a, a)
    kzz, kpp, kzp = k[:n, :n], k[n:, n:], k[:n, n:]
    return ((kzz * off).sum() + (kpp * off).sum()) / (n * (n - 1)) - 2.0 * kzp.mean()


Activations = Callable[[torch.Tensor], list[torch.Tensor]]


def feature_activations(net: nn.Module, device: torch.device, bf16: bool) -> Activations:
    """A frozen feature network (its `activations`: images in [0, 1] -> three layers) as the perceptual term reads
    it: images in [-1, 1] -> its three layers' activations (float32), under bf16 autocast where that runs."""

    def activations(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(device, bf16):
            return [a.float() for a in net.activations((x + 1.0) / 2.0)]

    return activations


def perceptual_distance(x: torch.Tensor, y: torch.Tensor, activations: Activations) -> torch.Tensor:
    """D_feat(x, y) per image, (B,), unitless: for each layer of a frozen feature network, the squared Euclidean
    distance between the unit-normalised channel vectors of x and y, averaged over positions; summed over layers
    (LPIPS without its learned layer weights; Zhang et al. 2018). 0 for identical images, at most 4 per layer.
    x (the target) gets no gradient; y (the reconstruction) does."""
    with torch.no_grad():
        fx = activations(x)
    d = torch.zeros(len(y), device=y.device)
    for a, b in zip(fx, activations(y)):
        a = a.float() / (a.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-8)  # (B, C, H, W), unit over C
        b = b.float() / (b.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-8)
        d = d + (a - b).pow(2).sum(1).mean((1, 2))
    return d


def vae_loss(
    x: torch.Tensor, out: dict[str, torch.Tensor], beta: float, likelihood: str, log_sigma: torch.Tensor,
    mmd_weight: float = 0.0, perceptual: Activations | None = None, perceptual_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Batch-mean named terms: loss = recon + perceptual_weight * perceptual + beta * kl + mmd_weight * mmd
    (perceptual: D_feat(x, decoder mean) through the feature network's `perceptual` activations, computed only when
    its weight is > 0; mmd of out["noise"] when the model has a flow prior, else of the codes z); elbo terms use
    beta = 1 and no perceptual part. All in nats per image except bpd (bits/dim of the negative ELBO), perceptual
    and mmd (unitless distances)."""
    recon = recon_nll(x, out["params"], likelihood, log_sigma)  # (B,)
    kl = kl_divergence(out)  # (B,)
    recon_m, kl_m = recon.mean(), kl.mean()
    # InfoVAE / MMD-VAE (Zhao et al. 2019): a batch-level pull of the aggregate posterior onto N(0, I), which
    # the per-image KL cannot give, so that prior samples land where the decoder has seen codes. With a flow prior
    # it acts on the noise side, f^-1(z): a sample-based check beside the KL's mass-covering fit of the flow.
    mmd = mmd_imq(out.get("noise", out["z"]))
    # DFC-VAE (Hou et al. 2017): a distance in a classifier's feature space rewards edges and texture that the
    # pixel likelihood, averaging over plausible images, blurs away.
    perc = (perceptual_distance(x, out["params"][:, :3], perceptual).mean()
            if perceptual is not None and perceptual_weight > 0 else torch.zeros((), device=x.device))
    return {
        "loss": recon_m + perceptual_weight * perc + beta * kl_m + mmd_weight * mmd,  # beta multiplies the KL only
        "recon": recon_m,
        "perceptual": perc,
        "kl": kl_m,
        "mmd": mmd,
        "neg_elbo": recon_m + kl_m,
        "bpd": bits_per_dim(recon_m + kl_m),
    }
