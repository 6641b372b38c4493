"""Test-set measurements of a trained VAE: negative ELBO (bits/dim), rate and distortion (nats), MSE/PSNR and
per-dimension KL, each per image so that every mean gets a bootstrap interval; the importance-weighted bound and
a linear probe; encoding and decoding helpers for the sample-quality sets."""
from __future__ import annotations

import math

import torch

from vaelab.data import batch_indices, to_uint8, to_unit
from vaelab.intervals import bootstrap, with_interval
from vaelab.loss import bits_per_dim, kl_divergence, kl_normal, log_normal, recon_nll
from vaelab.model import VAE, mean_image
from vaelab.precision import autocast


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error on images scaled to [0, peak]."""
    return float("inf") if mse <= 0 else 10.0 * math.log10(peak**2 / mse)


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
def decode_uint8(model: VAE, z: torch.Tensor) -> torch.Tensor:
    """Decoder mean images of codes z (N, z) as uint8 (N, 3, 32, 32)."""
    model.eval()
    return to_uint8(model.decode(z.to(next(model.parameters()).device)).float().cpu())


@torch.no_grad()
def sample_uint8(model: VAE, noise: torch.Tensor) -> torch.Tensor:
    """Prior samples as uint8 (N, 3, 32, 32) from noise ~ N(0, I) (N, z), mapped to codes by the model's prior."""
    model.eval()
    return decode_uint8(model, model.codes(noise.to(next(model.parameters()).device)))


@torch.no_grad()
def per_image(model: VAE, x: torch.Tensor, device: torch.device, batch_size: int = 500, bf16: bool = True,
              seed: int = 0) -> dict[str, torch.Tensor]:
    """Per test image (N,): rate KL(q(z|x) || p(z)) and distortion -log p(x|z) in nats (one posterior sample), and
    the squared error of the reconstruction from the posterior mean on the [0, 1] scale; per image and latent
    dimension (N, D): mu, logvar and, for the N(0, I) prior, KL(q(z_j|x) || N(0, 1)) in nats, whose sum over j is
    the rate (with a flow prior the KL does not split by dimension; kl_dims is then against N(0, 1), not the prior)."""
    model.eval()
    torch.manual_seed(seed)  # the eps draws of z ~ q(z|x): evaluation is repeatable
    keys = ("rate", "distortion", "mse", "mu", "logvar", "kl_dims")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for idx in batch_indices(len(x), batch_size, None):
        xb = to_unit(x[idx].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            o = model(xb)
            rec = mean_image(model.decoder(o["mu"])).float()
        kl_dims = kl_normal(o["mu"], o["logvar"]).double()  # (B, D)
        # The rate of the N(0, I) prior is the sum of the per-dimension closed forms: one number, two views.
        rate = kl_dims.sum(1) if model.prior is None else kl_divergence(o).double()
        values = {"rate": rate, "distortion": recon_nll(xb, o["params"], model.cfg.likelihood, model.log_sigma),
                  "mse": ((rec - xb) / 2).pow(2).flatten(1).mean(1), "mu": o["mu"], "logvar": o["logvar"],
                  "kl_dims": kl_dims}
        for k in keys:
            out[k].append(values[k].double().cpu() if k != "mu" and k != "logvar" else values[k].float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def likelihood_metrics(images: dict[str, torch.Tensor], reps: int, seed: int) -> dict[str, float]:
    """Test-set means with 95% bootstrap intervals over the images (`_lo`, `_hi`): test_bpd (single-sample negative
    ELBO, beta = 1, bits/dim), rate_nats, distortion_nats, test_recon_mse and test_psnr (dB of the mean MSE)."""
    rate, dist, mse = images["rate"], images["distortion"].double(), images["mse"]
    stats = {
        "test_bpd": lambda i: float(bits_per_dim((rate[i] + dist[i]).mean())),
        "rate_nats": lambda i: float(rate[i].mean()),
        "distortion_nats": lambda i: float(dist[i].mean()),
        "test_recon_mse": lambda i: float(mse[i].mean()),
        "test_psnr": lambda i: psnr(float(mse[i].mean())),
    }
    every = torch.arange(len(rate))
    out: dict[str, float] = {}
    for key, stat in stats.items():
        out |= with_interval(key, stat(every), bootstrap(stat, [len(rate)], reps, seed))
    out["test_neg_elbo_nats"] = float((rate + dist).mean())
    return out


@torch.no_grad()
def iw_log_likelihood(model: VAE, x: torch.Tensor, device: torch.device, k: int = 64, batch_size: int = 500,
                      bf16: bool = True, seed: int = 0) -> torch.Tensor:
    """Importance-weighted lower bound on log p(x) (Burda et al. 2015) with k posterior samples, in nats per
    image: log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x). Returns (N,); k = 1 is the ELBO."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    per_chunk = max(1, batch_size // k)  # images per decoder call of k * per_chunk codes
    out = []
    for idx in batch_indices(len(x), per_chunk, None):
        xb = to_unit(x[idx].to(device)).contiguous(memory_format=torch.channels_last)
        b = len(idx)
        with autocast(device, bf16):
            mu, logvar = model.encoder(xb)
        mu, logvar = mu.float(), logvar.float()
        eps = torch.randn(k, b, mu.shape[1], generator=gen).to(device)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, b, z)
        with autocast(device, bf16):
            params = model.decoder(z.reshape(k * b, -1))  # (k*b, C, 32, 32)
        x_rep = xb.repeat(k, 1, 1, 1)  # (k*b, 3, 32, 32), same order as z.reshape
        log_px_z = -recon_nll(x_rep, params.float(), model.cfg.likelihood, model.log_sigma).view(k, b)
        log_pz = model.log_prior(z.reshape(k * b, -1)).view(k, b)
        log_qz = log_normal(z, mu, logvar).sum(-1)
        out.append((torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k)).cpu())
    return torch.cat(out)


def linear_probe(train_feats: torch.Tensor, train_y: torch.Tensor, test_feats: torch.Tensor,
                 test_y: torch.Tensor, l2: float = 1e-4, steps: int = 300, n_classes: int = 10) -> torch.Tensor:
    """Per test image (M,), 1.0 where multinomial logistic regression trained (full-batch L-BFGS, L2 penalty `l2`
    on the weights) on standardised train features (N, D) classifies it correctly (its mean is the probe accuracy);
    both feature sets use the train mean and std."""
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    xtr = ((train_feats - mean) / std).double()
    xte = ((test_feats - mean) / std).double()
    w = torch.zeros(xtr.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return ((xte @ w + b).argmax(1) == test_y).double()
