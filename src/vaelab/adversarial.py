"""A patch adversarial term for the decoder, VQGAN's recipe (Esser et al. 2021) adapted to 32x32 images: a PatchGAN
discriminator with spectral norm scores 8x8 overlapping patches, trained with the hinge loss on real training images
against reconstructions; the decoder adds L_G = -E[D(x_hat)] weighted by the adaptive
lambda = ||grad L_rec|| / (||grad L_G|| + 1e-4) at its last layer (clamped: it explodes when grad L_G vanishes) times
a disc weight, only after a warm-up of the discriminator alone (switched on too early it collapses the colours).
`finetune` trains the decoder with the encoder frozen, so the codes, the rate and the β analysis stay as trained.
D sees real and reconstructed images under the same kind of random translation (DiffAugment; each image its own
offset) so that it cannot memorise the training images.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from vaelab.data import to_unit
from vaelab.loss import Activations, perceptual_distance, recon_nll
from vaelab.model import VAE, mean_image
from vaelab.params import AdversarialConfig


class PatchDiscriminator(nn.Module):
    """(B, 3, 32, 32) images in [-1, 1] -> (B, 1, 8, 8) logits, one per overlapping patch (receptive field 22 px):
    two stride-2 4x4 convolutions and a 3x3 one, spectral-normalised, LeakyReLU(0.2)."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        w0, w1, w2 = widths
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(3, w0, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 32 -> 16
            spectral_norm(nn.Conv2d(w0, w1, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 16 -> 8
            spectral_norm(nn.Conv2d(w1, w2, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w2, 1, 3, padding=1)),  # (B, 1, 8, 8)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: mean relu(1 - D(x)) + mean relu(1 + D(x_hat)), halved (VQGAN)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    lambda_max: float) -> torch.Tensor:
    """lambda = ||d rec_loss / d last_layer|| / (||d g_loss / d last_layer|| + 1e-4), clamped to [0, lambda_max] and
    detached: the adversarial gradient is scaled to the reconstruction's at the decoder's output layer."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, lambda_max).detach()


def translate(x: torch.Tensor, px: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (B, 3, 32, 32) shifted by its own random offset in [-px, px] along both axes, zero-filled."""
    if px == 0:
        return x
    padded = F.pad(x, (px, px, px, px))  # (B, 3, 32 + 2px, 32 + 2px)
    dx, dy = (torch.randint(0, 2 * px + 1, (2, len(x)), generator=generator)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + x.shape[2], dx[i]:dx[i] + x.shape[3]] for i in range(len(x))])


def finetune(model: VAE, disc: PatchDiscriminator, train_x: torch.Tensor, cfg: AdversarialConfig, seed: int,
             device: torch.device, perceptual: Activations | None = None, perceptual_weight: float = 0.0,
             resume: dict[str, Any] | None = None, until: int | None = None,
             on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Fine-tune `model`'s decoder against `disc` on uint8 training images for cfg.steps steps (or stop after step
    `until`), the encoder frozen: each step one discriminator update (hinge loss on real images against
    reconstructions, both translated alike) and one decoder update on L_rec (the VAE's reconstruction term, plus
    perceptual_weight * D_feat when `perceptual` is given) + disc_weight * lambda * L_G once step >= cfg.disc_start.
    `on_step(row)` gets each step's numbers (l_rec, l_g, l_d, lambda, D's mean logits on real and fake). Returns
    the full state (weights of both networks, optimisers, step, rows): what `resume` takes, so that a run stopped
    and resumed ends bit-identical (on CPU) to one that was not (every draw of a step follows from seed and step)."""
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    dec_params = [p for p in model.decoder.parameters()] + ([model.log_sigma] if model.log_sigma.requires_grad
                                                            else [])
    opt_g = torch.optim.Adam(dec_params, lr=cfg.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
    step, rows = 0, []
    if resume is not None:
        model.decoder.load_state_dict(resume["decoder"])
        model.log_sigma.data.copy_(resume["log_sigma"])
        disc.load_state_dict(resume["disc"])
        opt_g.load_state_dict(resume["opt_g"])
        opt_d.load_state_dict(resume["opt_d"])
        step, rows = int(resume["step"]), [dict(r) for r in resume["rows"]]
    model.encoder.eval()  # frozen: its codes stay those the β analysis measured
    model.decoder.train()
    disc.train()
    last_layer = model.decoder.out.weight if hasattr(model.decoder.out, "weight") else model.decoder.out[-1].weight
    n_batch = min(cfg.batch_size, len(train_x))
    per_pass = len(train_x) // n_batch
    stop = cfg.steps if until is None else min(until, cfg.steps)
    while step < stop:
        # Every draw of a step follows from (seed, step): a resumed run takes exactly the batches, noise and
        # translations that an uninterrupted one would.
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed * 7919 + step // per_pass))
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = order[(step % per_pass) * n_batch:(step % per_pass + 1) * n_batch]
        x = to_unit(train_x[idx].to(device))  # (B, 3, 32, 32) in [-1, 1]
        with torch.no_grad():
            mu, logvar = model.encoder(x)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g).to(device)  # a posterior sample
        params = model.decoder(z)
        x_hat = mean_image(params)
        # The discriminator: real against reconstructions, both under the same kind of random translation.
        real_logits = disc(translate(x, cfg.augment_px, g))
        fake_logits = disc(translate(x_hat.detach(), cfg.augment_px, g))
        l_d = hinge_d_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        l_d.backward()
        opt_d.step()
        # The decoder: the VAE's reconstruction term, then the adversarial one once D has warmed up.
        l_rec = recon_nll(x, params, model.cfg.likelihood, model.log_sigma).mean()
        if perceptual is not None and perceptual_weight > 0:
            l_rec = l_rec + perceptual_weight * perceptual_distance(x, x_hat, perceptual).mean()
        disc.requires_grad_(False)  # L_G trains the decoder only
        l_g = -disc(translate(x_hat, cfg.augment_px, g)).mean()
        on = step >= cfg.disc_start
        lam = adaptive_weight(l_rec, l_g, last_layer, cfg.lambda_max) if on else torch.zeros(())
        loss = l_rec + cfg.disc_weight * lam * l_g if on else l_rec
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        step += 1
        row = {"step": step, **{k: float(v.detach()) for k, v in (
            ("l_rec", l_rec), ("l_g", l_g), ("l_d", l_d), ("lambda", lam), ("d_real", real_logits.mean()),
            ("d_fake", fake_logits.mean()))}}
        rows.append(row)
        if on_step is not None:
            on_step(row)
    return {"decoder": model.decoder.state_dict(), "log_sigma": model.log_sigma.detach().clone(),
            "disc": disc.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
            "rows": rows}
