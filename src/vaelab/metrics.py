"""Test-set measurements of a trained VAE: negative ELBO (bits/dim), rate and distortion (nats), MSE/PSNR,
per-dimension KL and active units, importance-weighted bound, total correlation, a linear probe, and the
judge's sample-quality numbers (FCD, KID, confidence, class entropy)."""
from __future__ import annotations

import math

import torch

from vaelab.data import batch_indices, to_uint8, to_unit
from vaelab.loss import bits_per_dim, kl_divergence, kl_normal, log_normal, recon_nll
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
        rate += float(kl_divergence(out).sum())
        # Per dimension against N(0, 1): the rate itself when the prior is N(0, I). A flow prior's KL does not
        # split by dimension, so there this only says how much each dimension is used, not what it costs.
        kl_dims += kl_normal(out["mu"], out["logvar"]).double().sum(0).cpu()
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


def total_correlation(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int, seed: int = 0,
                      chunk: int = 64) -> float:
    """Total correlation KL(q(z) || prod_j q(z_j)) of the aggregate posterior, in nats.

    Minibatch-weighted sampling (Chen et al. 2018): one z_i ~ q(z|x_i) per code; within a minibatch B of M
    codes, log q(z_i) ~ logsumexp_{n in B} log q(z_i|x_n) - log M, and the same per dimension for log q(z_ij).
    With M = N this is the exact aggregate posterior of the N inputs. (The paper's 1/(NM) weights add the
    constant (D - 1) log N to the estimate; it is left out, so independent codes give TC ~ 0.)
    """
    gen = torch.Generator().manual_seed(seed)
    mu, logvar = mu.float(), logvar.float()
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
    order = torch.randperm(len(mu), generator=gen)
    m = min(batch_size, len(mu))
    total, count = 0.0, 0
    for start in range(0, len(mu) - m + 1, m):  # whole minibatches only
        batch = order[start : start + m]
        mu_b, lv_b = mu[batch].unsqueeze(0), logvar[batch].unsqueeze(0)  # (1, M, D)
        for i in range(0, m, chunk):
            zi = z[batch[i : i + chunk]].unsqueeze(1)  # (c, 1, D)
            lq = log_normal(zi, mu_b, lv_b)  # (c, M, D)
            log_joint = torch.logsumexp(lq.sum(-1), dim=1) - math.log(m)  # (c,)
            log_marginals = (torch.logsumexp(lq, dim=1) - math.log(m)).sum(-1)  # (c,)
            total += float((log_joint - log_marginals).double().sum())
            count += len(zi)
    return total / count


def linear_probe(train_feats: torch.Tensor, train_y: torch.Tensor, test_feats: torch.Tensor,
                 test_y: torch.Tensor, l2: float = 1e-4, steps: int = 300, n_classes: int = 10) -> float:
    """Test accuracy of multinomial logistic regression trained (full-batch L-BFGS, L2 penalty `l2` on the
    weights) on standardised train features (N, D); both feature sets use the train mean and std."""
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
        return float(((xte @ w + b).argmax(1) == test_y).double().mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, F) and b (M, F) (FID's formula):
    |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    c_a, c_b = torch.cov(a.T), torch.cov(b.T)
    # Tr (C_a C_b)^(1/2) = sum sqrt(eig(C_a^(1/2) C_b C_a^(1/2))), a symmetric PSD matrix: stable via eigh.
    evals, evecs = torch.linalg.eigh(c_a)
    sqrt_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ c_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(c_a) + torch.trace(c_b) - 2 * cross)


def kernel_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / F + 1)^3, mean and standard
    deviation over `subsets` random subsets of `subset_size` from each set (capped at the smaller set)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    f = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        k_xx, k_yy, k_xy = ((x @ x.T) / f + 1) ** 3, ((y @ y.T) / f + 1) ** 3, ((x @ y.T) / f + 1) ** 3
        # Unbiased: the diagonals (k(x, x)) are left out of the within-set means.
        mmd = ((k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())) / (m * (m - 1)) \
            - 2 * k_xy.mean()
        values.append(float(mmd))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def class_entropy(probs: torch.Tensor, n_classes: int = 10) -> float:
    """Entropy in bits of the histogram of predicted classes (argmax of probs (N, C)); log2(C) = all classes
    equally often, 0 = one class."""
    p = torch.bincount(probs.argmax(1), minlength=n_classes).double() / len(probs)
    p = p[p > 0]
    return max(0.0, float(-(p * p.log2()).sum()))  # max: no "-0.0"


def sample_quality(feats: torch.Tensor, probs: torch.Tensor, ref_feats: torch.Tensor, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """The judge's verdict on a set of images: fcd and kid (+ kid_std) of their features against reference
    features, judge_confidence (mean max softmax) and class_entropy (bits)."""
    kid, kid_std = kernel_distance(feats, ref_feats, kid_subsets, kid_subset_size, seed)
    return {"fcd": frechet_distance(feats, ref_feats), "kid": kid, "kid_std": kid_std,
            "judge_confidence": float(probs.max(1).values.mean()), "class_entropy": class_entropy(probs)}
