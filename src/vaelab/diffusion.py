"""A denoising diffusion prior over latent codes, the second stage of a two-stage VAE (Dai & Wipf 2019): fitted to
the frozen encoder's posterior means of the training images, sampled in place of N(0, I). An MLP of residual blocks
sees standardised codes x mixed with noise ε (DDPM, Ho et al. 2020; cosine schedule, Nichol & Dhariwal 2021) and
predicts v = √ᾱ·ε − √(1−ᾱ)·x (Salimans & Ho 2022) or ε itself; sampling runs the deterministic DDIM update (Song et
al. 2021) over a few tens of the training timesteps.

Why v by default: the cosine schedule ends at ᾱ ≈ 2e-9, where an ε-predictor's estimate of the clean code,
(x_t − √(1−ᾱ)·ε̂)/√ᾱ, multiplies the network's error by ~2·10⁴. On the 128-d codes of a β = 1 model its draws came
out three times too spread even with that estimate clipped, a v-predictor's within 6% of the codes' own
(docs/metrics.md, *The samplers*; tests/test_diffusion.py holds the known answer)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.params import DiffusionConfig


def cosine_alpha_bar(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """ᾱ_t for t = 1..T (T,) in float64: the share of the signal's variance left at step t, strictly falling from ~1
    to ~0 (each step's β_t = 1 − ᾱ_t/ᾱ_{t−1} capped at 0.999, as Nichol & Dhariwal do)."""
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, dim=0)


def _target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """What the network learns to output for clean codes x0 (B, D) noised by eps at ᾱ = ab (B, 1)."""
    return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0


def _clean_estimate(prediction: str, x_t: torch.Tensor, out: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The clean code (B, D) that the network's output `out` implies for x_t at ᾱ = ab."""
    if prediction == "eps":
        return (x_t - (1 - ab).sqrt() * out) / ab.sqrt()
    return ab.sqrt() * x_t - (1 - ab).sqrt() * out


def _time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the timestep (B,) -> (B, dim), as in the Transformer's positions."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    angle = t.float()[:, None] * freq[None]  # (B, half)
    return torch.cat([angle.sin(), angle.cos()], dim=1)


class _Block(nn.Module):
    """x + MLP(LayerNorm(x) + time): a pre-norm residual block conditioned on the timestep's features."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.time = nn.Linear(hidden, hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.fc2 = nn.Linear(2 * hidden, hidden)
        nn.init.zeros_(self.fc2.weight)  # starts as the identity
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h) + self.time(temb))))


class DiffusionPrior(nn.Module):
    """The v- (or ε-) prediction network on standardised codes, with the code statistics and the noise schedule it
    was fitted with: everything needed to sample codes (B, D) on the encoder's scale."""

    def __init__(self, dim: int, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(dim, cfg.hidden)
        self.temb = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.hidden))
        self.blocks = nn.ModuleList([_Block(cfg.hidden) for _ in range(cfg.blocks)])
        self.out = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, dim))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        # The largest |standardised code| seen in the fit: sampling clips its estimate of the clean code to it, as
        # image diffusion clips to the pixel range (a guard: a v-predictor's estimates stay inside it).
        self.register_buffer("bound", torch.tensor(float("inf")))
        self.register_buffer("alpha_bar", cosine_alpha_bar(cfg.timesteps).float())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted v (or ε) (B, D) of standardised noisy codes x_t (B, D) at integer timesteps t (B,) in [0, T)."""
        temb = self.temb(_time_embedding(t, self.cfg.hidden))
        h = self.inp(x_t)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h)


def fit(codes: torch.Tensor, cfg: DiffusionConfig, seed: int) -> DiffusionPrior:
    """Fit the prior to codes (N, D): each step draws a batch, a timestep and noise per code and regresses v (or
    the noise) by mean squared error (the DDPM simple loss). Deterministic for a seed on one device."""
    codes = codes.float()
    n, dim = codes.shape
    if n < 2:
        raise ValueError(f"a diffusion prior needs at least 2 codes, got {n}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the initial weights
    prior = DiffusionPrior(dim, cfg)
    prior.mean.copy_(codes.mean(0))
    prior.std.copy_(codes.std(0).clamp_min(1e-6))
    x = (codes - prior.mean) / prior.std  # (N, D), unit variance per dimension
    prior.bound.copy_(x.abs().max())
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.train_steps // 20)
    # Linear warm-up, then a cosine decay to zero.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(i, cfg.train_steps) / cfg.train_steps))))
    prior.train()
    for _ in range(cfg.train_steps):
        idx = torch.randint(n, (min(cfg.batch_size, n),), generator=g)
        t = torch.randint(cfg.timesteps, (len(idx),), generator=g)
        eps = torch.randn(len(idx), dim, generator=g)
        ab = prior.alpha_bar[t][:, None]  # (B, 1)
        x_t = ab.sqrt() * x[idx] + (1 - ab).sqrt() * eps
        loss = F.mse_loss(prior(x_t, t), _target(cfg.prediction, x[idx], eps, ab))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return prior.eval()


def loss(prior: DiffusionPrior, codes: torch.Tensor, seed: int) -> float:
    """The fitted objective on codes (N, D): mean squared error of the predicted v (or noise) over random timesteps
    (a held-out value near the training one means the prior did not memorise its codes)."""
    g = torch.Generator().manual_seed(seed)
    x = (codes.float() - prior.mean) / prior.std
    t = torch.randint(prior.cfg.timesteps, (len(x),), generator=g)
    eps = torch.randn(x.shape, generator=g)
    ab = prior.alpha_bar[t][:, None]
    with torch.no_grad():
        out = prior((ab.sqrt() * x + (1 - ab).sqrt() * eps), t)
        return float(F.mse_loss(out, _target(prior.cfg.prediction, x, eps, ab)))


@torch.no_grad()
def sample(prior: DiffusionPrior, n: int, generator: torch.Generator, steps: int | None = None,
           temperature: float | None = None) -> torch.Tensor:
    """n codes (n, D) on the encoder's scale by DDIM (η = 0) from N(0, temperature² I) over `steps` evenly spaced
    timesteps (defaults: the config's), each step's clean-code estimate clipped to the fitted codes' range."""
    steps = steps or prior.cfg.sample_steps
    temperature = prior.cfg.temperature if temperature is None else temperature
    T = prior.cfg.timesteps
    ts = torch.linspace(T - 1, 0, min(steps, T)).round().long().unique_consecutive()  # descending timesteps
    x = temperature * torch.randn(n, len(prior.mean), generator=generator)
    ab = prior.alpha_bar.double()
    for i, t in enumerate(ts):
        a_t = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
        x0 = _clean_estimate(prior.cfg.prediction, x.double(), prior(x, t.expand(n)).double(), a_t)
        x0 = x0.clamp(-float(prior.bound), float(prior.bound))
        eps = (x.double() - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise that the clipped x0 implies
        x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()
    return x * prior.std + prior.mean
