"""The convolutional VAE: encoder -> (mu, log sigma^2), reparameterisation, decoder -> likelihood parameters, and its
prior p(z): N(0, I) itself or N(0, I) pushed through a learned normalizing flow."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.loss import log_normal
from vaelab.params import ModelConfig, from_dict
from vaelab.storage import load_state


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


def _dense(n_in: int, n_out: int, hidden: int) -> nn.Module:
    """The map between the 4x4 feature map and the code: linear, or with one SiLU hidden layer of `hidden` units
    (Burgess et al. 2018's dense layers: a linear map cannot place one small object anywhere in the image)."""
    if hidden == 0:
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


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
        self.head = _dense(w2 * 16, 2 * cfg.latent_dim, cfg.mlp_hidden)
        self.logvar_min = cfg.logvar_min

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.net(x)).float()  # (B, 2*z)
        mu, logvar = h.chunk(2, dim=1)  # (B, z) each
        # Clamping keeps exp(logvar) finite and the KL bounded when a batch goes wrong.
        return mu, logvar.clamp(self.logvar_min, 8.0)


def _upsample(c_in: int, c_out: int, how: str) -> nn.Module:
    """x2 upsampling from c_in to c_out channels: a 4x4 stride-2 transposed convolution, or nearest-neighbour x2
    then a 3x3 convolution (no checkerboard pattern from uneven kernel overlap; Odena et al. 2016)."""
    if how == "nearest":
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1))
    return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)


class Decoder(nn.Module):
    """(B, z) codes -> (B, C, 32, 32) likelihood parameters: C = 3 means, or 6 = means and per-pixel log-scales
    (logistic likelihood, or Gaussian with model.sigma = pixel)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w0, w1, w2 = cfg.decoder_widths or cfg.widths
        out_ch = 6 if cfg.likelihood == "logistic" or cfg.sigma == "pixel" else 3
        blocks = cfg.res_blocks + cfg.decoder_res_blocks
        self.w2 = w2
        self.fc = _dense(cfg.latent_dim, w2 * 16, cfg.mlp_hidden)
        self.net = nn.Sequential(
            *_stage(w2, blocks),
            nn.SiLU(),
            _upsample(w2, w1, cfg.upsample),  # 4 -> 8
            *_stage(w1, blocks),
            nn.SiLU(),
            _upsample(w1, w0, cfg.upsample),  # 8 -> 16
            *_stage(w0, blocks),
            nn.SiLU(),
        )
        self.out = _upsample(w0, out_ch, cfg.upsample)  # 16 -> 32

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.w2, 4, 4)  # (B, w2, 4, 4)
        h = self.net(h)
        # The output layer runs in fp32: bf16 resolves ~1/256 relative, as coarse as one intensity bin.
        with torch.autocast(h.device.type, enabled=False):
            return self.out(h.float())


class Coupling(nn.Module):
    """RealNVP affine coupling (Dinh et al. 2017): the second half of the vector is scaled and shifted by an MLP of
    the first half, then the order is reversed so that the next coupling transforms the other half."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.half = dim // 2
        self.net = nn.Sequential(nn.Linear(self.half, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * (dim - self.half)))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity: the prior starts as N(0, I)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, shift = self.net(a).chunk(2, dim=1)
        return 2.0 * torch.tanh(raw / 2.0), shift  # log-scale soft-clamped to (-2, 2): no exploding steps

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """Noise side -> code side, (B, z) -> (B, z)."""
        a, b = e[:, : self.half], e[:, self.half :]
        log_s, t = self._scale_shift(a)
        return torch.cat([a, b * log_s.exp() + t], dim=1).flip(1)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Code side -> noise side, and log |det d(noise)/d(code)| per row: (B, z), (B,)."""
        z = z.flip(1)
        a, b = z[:, : self.half], z[:, self.half :]
        log_s, t = self._scale_shift(a)
        return torch.cat([a, (b - t) * (-log_s).exp()], dim=1), -log_s.sum(1)


class FlowPrior(nn.Module):
    """p(z) = f#N(0, I): noise e ~ N(0, I) mapped by a stack of affine couplings f to codes z = f(e). Trained
    jointly through the KL term, it moves its mass onto the codes the encoder uses, so that decoded N(0, I) noise
    lands where the decoder has learned to draw (VLAE, Chen et al. 2017, used an autoregressive flow prior)."""

    def __init__(self, dim: int, n_couplings: int, hidden: int):
        super().__init__()
        self.couplings = nn.ModuleList([Coupling(dim, hidden) for _ in range(n_couplings)])

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """Codes z = f(noise), (B, z)."""
        for c in self.couplings:
            noise = c(noise)
        return noise

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise f^-1(z) (B, z) of codes z (B, z), and log |det d f^-1(z) / dz| (B,), the change of variables term
        of log p(z)."""
        log_det = torch.zeros(len(z), device=z.device)
        for c in reversed(self.couplings):
            z, d = c.inverse(z)
            log_det = log_det + d
        return z, log_det


class VAE(nn.Module):
    """Encoder, reparameterisation z = mu + sigma * eps, decoder, prior; likelihood parameters are read by `loss`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Learned log-sigma of the Gaussian decoder (sigma-VAE style): one, or one per RGB channel (3, 1, 1)
        # broadcasting over the image; unused by the logistic decoder and by per-pixel sigmas, which the decoder
        # predicts. A fixed sigma fixes the weight of the reconstruction against beta * KL (a learned one shrinks
        # to the error, so beta's effect depends on how well the decoder does; on noise-free data it goes to 0).
        shape = (3, 1, 1) if cfg.sigma == "channel" else (1,)
        start = math.log(cfg.fixed_sigma) if cfg.sigma == "fixed" else -2.0
        self.log_sigma = nn.Parameter(torch.full(shape, start),
                                      requires_grad=cfg.likelihood == "gaussian" and cfg.sigma in ("global", "channel"))
        # None: the prior is N(0, I) and the KL has its closed form.
        self.prior = FlowPrior(cfg.latent_dim, cfg.prior_flows, cfg.prior_hidden) if cfg.prior_flows else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, 32, 32) in [-1, 1] -> mu, logvar, z (B, z), decoder params (B, C, 32, 32) and, with a flow
        prior, noise = f^-1(z) (B, z) and log_pz = log p(z) (B,) in nats."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        out = {"mu": mu, "logvar": logvar, "z": z, "params": self.decoder(z)}
        if self.prior is not None:
            out["noise"], out["log_pz"] = self.to_noise(z)
        return out

    def to_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's noise side of codes z (B, z): f^-1(z) (B, z) (z itself for N(0, I)), and log p(z) (B,) in nats."""
        noise, log_det = z.float(), torch.zeros(len(z), device=z.device)
        if self.prior is not None:
            # The flow runs in fp32: its log-determinants sum over 128 dimensions and many couplings.
            with torch.autocast(z.device.type, enabled=False):
                noise, log_det = self.prior.inverse(noise)
        return noise, log_normal(noise, torch.zeros(()), torch.zeros(())).sum(1) + log_det

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) in nats for codes z (B, z): (B,)."""
        return self.to_noise(z)[1]

    def codes(self, noise: torch.Tensor) -> torch.Tensor:
        """Codes z (B, z) of prior samples from noise ~ N(0, I) (B, z): the noise itself, or pushed through the flow."""
        if self.prior is None:
            return noise
        with torch.autocast(noise.device.type, enabled=False):
            return self.prior(noise.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image in [-1, 1], (B, 3, 32, 32), for codes z (B, z)."""
        return mean_image(self.decoder(z))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I); gradients flow to mu and logvar."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def mean_image(params: torch.Tensor) -> torch.Tensor:
    """The decoder's image (location of the per-pixel distribution), clamped to [-1, 1]: (B, 3, 32, 32)."""
    return params[:, :3].clamp(-1.0, 1.0)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[VAE, dict[str, Any]]:
    """A VAE saved by the train stage (`storage.save_model`) and its resolved config, in eval mode on `device`."""
    state, config = load_state(path, device)
    model = VAE(from_dict(ModelConfig, config["model"]))
    model.load_state_dict(state)
    model.to(device, memory_format=torch.channels_last).eval()
    return model, config
