"""The convolutional VAE: encoder -> (mu, log sigma^2), reparameterisation, decoder -> likelihood parameters."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.params import ModelConfig


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(silu(conv(silu(x)))), 3x3 convolutions."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # starts as the identity: deep stacks train from step one
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _stage(ch: int, n_blocks: int) -> list[nn.Module]:
    return [ResBlock(ch) for _ in range(n_blocks)]


class Encoder(nn.Module):
    """(B, 3, 32, 32) images in [-1, 1] -> (mu, logvar), each (B, z)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w0, w1, w2 = cfg.widths
        self.net = nn.Sequential(
            nn.Conv2d(3, w0, 4, stride=2, padding=1),  # 32 -> 16
            *_stage(w0, cfg.res_blocks),
            nn.SiLU(),
            nn.Conv2d(w0, w1, 4, stride=2, padding=1),  # 16 -> 8
            *_stage(w1, cfg.res_blocks),
            nn.SiLU(),
            nn.Conv2d(w1, w2, 4, stride=2, padding=1),  # 8 -> 4
            *_stage(w2, cfg.res_blocks),
            nn.SiLU(),
            nn.Flatten(),  # (B, w2*4*4)
        )
        self.head = nn.Linear(w2 * 16, 2 * cfg.latent_dim)
        self.logvar_min = cfg.logvar_min

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.net(x)).float()  # (B, 2*z)
        mu, logvar = h.chunk(2, dim=1)  # (B, z) each
        # Clamping keeps exp(logvar) finite and the KL bounded when a batch goes wrong.
        return mu, logvar.clamp(self.logvar_min, 8.0)


class Decoder(nn.Module):
    """(B, z) codes -> (B, C, 32, 32) likelihood parameters (C = 6 for logistic, 3 for gaussian)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w0, w1, w2 = cfg.widths
        out_ch = 6 if cfg.likelihood == "logistic" else 3
        self.w2 = w2
        self.fc = nn.Linear(cfg.latent_dim, w2 * 16)
        self.net = nn.Sequential(
            *_stage(w2, cfg.res_blocks),
            nn.SiLU(),
            nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1),  # 4 -> 8
            *_stage(w1, cfg.res_blocks),
            nn.SiLU(),
            nn.ConvTranspose2d(w1, w0, 4, stride=2, padding=1),  # 8 -> 16
            *_stage(w0, cfg.res_blocks),
            nn.SiLU(),
        )
        self.out = nn.ConvTranspose2d(w0, out_ch, 4, stride=2, padding=1)  # 16 -> 32

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.w2, 4, 4)  # (B, w2, 4, 4)
        h = self.net(h)
        # The output layer runs in fp32: bf16 resolves ~1/256 relative, as coarse as one intensity bin.
        with torch.autocast(h.device.type, enabled=False):
            return self.out(h.float())


class VAE(nn.Module):
    """Encoder, reparameterisation z = mu + sigma * eps, decoder; likelihood parameters are read by `loss`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Global log-sigma of the Gaussian decoder (sigma-VAE style, learned); unused by the logistic one.
        self.log_sigma = nn.Parameter(torch.full((1,), -2.0), requires_grad=cfg.likelihood == "gaussian")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 32, 32) in [-1, 1] -> mu, logvar, z (B, z) and decoder params (B, C, 32, 32)."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        return {"mu": mu, "logvar": logvar, "z": z, "params": self.decoder(z)}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image in [-1, 1], (B, 3, 32, 32), for codes z (B, z)."""
        return mean_image(self.decoder(z))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I); gradients flow to mu and logvar."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def mean_image(params: torch.Tensor) -> torch.Tensor:
    """The decoder's image (location of the per-pixel distribution), clamped to [-1, 1]: (B, 3, 32, 32)."""
    return params[:, :3].clamp(-1.0, 1.0)


class Codec(nn.Module):
    """What is exported to MLflow and driven by the CLI: a trained VAE on the [0, 1] pixel scale.
    forward decodes codes (B, z) float32 -> images (B, 3, 32, 32) in [0, 1]; encode maps images in [0, 1]
    to posterior means (B, z)."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    @property
    def latent_dim(self) -> int:
        return self.vae.cfg.latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.vae.decode(z.float()) + 1.0) / 2.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means mu (B, z) of images (B, 3, 32, 32) in [0, 1]."""
        mu, _ = self.vae.encoder(images.float() * 2.0 - 1.0)
        return mu


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
