"""The exported model: a trained VAE with the ex-post sampler fitted to its codes, on the [0, 1] pixel scale."""
from __future__ import annotations

import torch
import torch.nn as nn

from vaelab import samplers
from vaelab.model import VAE


class Codec(nn.Module):
    """What is exported to MLflow and driven by the CLI: a trained VAE on the [0, 1] pixel scale, with the ex-post
    sampler (a mixture or a diffusion prior) fitted to its training codes when it has one.
    forward decodes prior draws: noise (B, z) ~ N(0, I), float32 -> images (B, 3, 32, 32) in [0, 1] (through the
    prior's flow when there is one); sample draws n images from the ex-post sampler (or from the prior without
    one); decode maps codes z (B, z) to images and encode maps images to posterior means."""

    def __init__(self, vae: VAE, sampler: samplers.Sampler | None = None):
        super().__init__()
        self.vae = vae
        self.sampler = sampler

    @property
    def latent_dim(self) -> int:
        return self.vae.cfg.latent_dim

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.decode(self.vae.codes(noise.float()))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images (n, 3, 32, 32) in [0, 1]: codes from the ex-post sampler, else the prior's decoded N(0, I)."""
        if self.sampler is None:
            return self(torch.randn(n, self.latent_dim, generator=generator))
        return self.decode(samplers.draw(self.sampler, n, generator))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, 32, 32) in [0, 1] of codes z (B, z)."""
        return (self.vae.decode(z.float()) + 1.0) / 2.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means mu (B, z) of images (B, 3, 32, 32) in [0, 1]."""
        mu, _ = self.vae.encoder(images.float() * 2.0 - 1.0)
        return mu
