"""Test-set measurements of a trained VAE: negative ELBO (bits/dim), rate and distortion (nats), MSE/PSNR,
per-dimension KL and active units."""
from __future__ import annotations

import math

import torch

from vaelab.data import batch_indices, to_unit
from vaelab.loss import bits_per_dim, kl_normal, recon_nll
from vaelab.model import VAE, mean_image
from vaelab.train import autocast


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on images scaled to [0, peak]."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak**2 / mse)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Burda et al. 2015: number of latent dimensions j with Cov_x(E[z_j | x]) > threshold; mu: (N, z)."""
    return int((mu.double().var(dim=0) > threshold).sum())


@torch.no_grad()
def encode(model: VAE, x: torch.Tensor, device: torch.device, batch_size: int = 500, bf16: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances (N, z) of uint8 images x (N, 3, 32, 32)."""
    model.eval()
    mus, logvars = [], []
    for idx in batch_indices(len(x), batch_size, None):
        xb = to_unit(x[idx].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            mu, logvar = model.encoder(xb)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def evaluate(
    model: VAE,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = 500,
    active_threshold: float = 0.01,
    bf16: bool = True,
    seed: int = 0,
) -> tuple[dict[str, float], list[float]]:
    """Test-set metrics (flat dict) and the mean KL of each latent dimension (nats).

    test_bpd is the single-sample negative ELBO (beta = 1) in bits/dim; rate_nats is KL(q(z|x) || p(z)) and
    distortion_nats is -log p(x|z), both per image; recon MSE and PSNR compare the decoder's mean image with
    the input on the [0, 1] scale.
    """
    model.eval()
    torch.manual_seed(seed)  # the eps draws of z ~ q(z|x): evaluation is repeatable
    n = len(x)
    rate = distortion = sq_err = 0.0
    kl_dims = torch.zeros(model.cfg.latent_dim, dtype=torch.float64)
    mus = []
    for idx in batch_indices(n, batch_size, None):
        xb = to_unit(x[idx].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            out = model(xb)
        kl = kl_normal(out["mu"], out["logvar"])  # (B, z)
        rate += float(kl.sum())
        kl_dims += kl.double().sum(0).cpu()
        distortion += float(recon_nll(xb, out["params"], model.cfg.likelihood, model.log_sigma).sum())
        # MSE of the reconstruction from the posterior mean, on the [0, 1] scale.
        with autocast(device, bf16):
            rec = mean_image(model.decoder(out["mu"])).float()
        sq_err += float(((rec - xb) / 2).pow(2).flatten(1).mean(1).sum())
        mus.append(out["mu"].float().cpu())
    rate, distortion, mse = rate / n, distortion / n, sq_err / n
    metrics = {
        "test_bpd": float(bits_per_dim(torch.tensor(rate + distortion))),
        "test_neg_elbo_nats": rate + distortion,
        "rate_nats": rate,
        "distortion_nats": distortion,
        "test_recon_mse": mse,
        "test_psnr": psnr(mse),
        "active_units": active_units(torch.cat(mus), active_threshold),
        "latent_dim": model.cfg.latent_dim,
        "n_test_images": n,
    }
    return metrics, (kl_dims / n).tolist()
