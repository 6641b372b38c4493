"""The training loop: seeded batches from an in-memory uint8 tensor, AdamW, warm-up + cosine LR, per-epoch test.

Ready for `torchrun` DDP: the caller passes device, rank and world size (and wraps the model); batches are sharded
by rank, and only rank 0 gets progress output and the per-epoch callback that logs and writes files.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from tqdm import tqdm

from vaelab.data import batch_indices, to_unit
from vaelab.loss import Activations, vae_loss
from vaelab.params import TrainConfig
from vaelab.precision import autocast

TERMS = ("loss", "recon", "perceptual", "kl", "mmd", "bpd")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the epoch and step."""


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at `step`: linear warm-up over cfg.warmup_steps, then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def kl_weight(epoch_progress: float, beta: float, cfg: TrainConfig) -> float:
    """The KL multiplier: beta, ramped linearly from 0 over cfg.kl_warmup_epochs (fractional epochs)."""
    if cfg.kl_warmup_epochs <= 0:
        return beta
    return beta * min(1.0, epoch_progress / cfg.kl_warmup_epochs)


@contextmanager
def swapped_in(params: list[torch.Tensor], ema: list[torch.Tensor] | None) -> Iterator[None]:
    """Within the block the parameters hold the EMA weights (nothing happens when ema is None)."""
    if ema is None:
        yield
        return
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_copy_(params, ema)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, live)


@torch.no_grad()
def evaluate_terms(
    model: nn.Module, x: torch.Tensor, beta: float, device: torch.device, batch_size: int = 500, bf16: bool = True,
    mmd_weight: float = 0.0, perceptual: Activations | None = None, perceptual_weight: float = 0.0,
) -> dict[str, float]:
    """Mean loss / recon / kl (nats per image), perceptual, mmd and bpd over uint8 images x (N, 3, 32, 32)."""
    core = getattr(model, "module", model)  # unwrap DDP
    was_training = core.training
    core.eval()
    sums = dict.fromkeys(TERMS, 0.0)
    for idx in batch_indices(len(x), batch_size, None):
        xb = to_unit(x[idx].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            out = core(xb)
        terms = vae_loss(xb, out, beta, core.cfg.likelihood, core.log_sigma, mmd_weight, perceptual, perceptual_weight)
        for k in TERMS:
            sums[k] += float(terms[k]) * len(idx)
    core.train(was_training)
    return {k: v / len(x) for k, v in sums.items()}


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    test_x: torch.Tensor,
    beta: float,
    cfg: TrainConfig,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    on_epoch: Callable[[dict[str, float], dict[str, Any]], None] | None = None,
    progress: bool = True,
    resume: dict[str, Any] | None = None,
    perceptual: Activations | None = None,
) -> list[dict[str, float]]:
    """Train `model` on uint8 images and return the per-epoch history (train_* and test_* terms, nats / bits/dim).

    `on_epoch(row, state)` is called on rank 0 after every epoch with that epoch's row and the full training
    state (weights, optimizer, RNG, history: what `resume` takes) for logging and checkpoints. Given a `resume`
    state, training continues after its epoch and ends exactly as an uninterrupted run would (bit-identical on
    CPU). Raises NonFiniteLossError on a NaN/Inf loss, before the optimizer step can spoil the weights.
    With cfg.ema_decay > 0 the per-epoch test terms are those of the weights' moving average, and the model
    ends holding that average (the state passed to `on_epoch` carries both).
    `perceptual` gives the frozen feature network's activations of images in [-1, 1], for the
    cfg.perceptual_weight * D_feat term.
    """
    core = getattr(model, "module", model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)  # batch order; eps noise uses the global (seeded) RNG
    steps_per_epoch = (len(train_x) // world_size) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_x)} training images give no full batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    history: list[dict[str, float]] = []
    step, start = 0, 1
    # The moving average is kept in fp32 beside the live weights; it is what gets evaluated and saved.
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    if resume is not None:
        core.load_state_dict(resume["model"])
        if ema is not None:
            ema = [t.to(device) for t in resume["ema"]]
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["batch_rng"])
        torch.set_rng_state(resume["torch_rng"])
        history = [dict(r) for r in resume["history"]]
        step, start = int(resume["step"]), int(resume["epoch"]) + 1
    model.train()
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        sums = dict.fromkeys(TERMS, 0.0)
        bar = tqdm(total=steps_per_epoch, desc=f"beta={beta:g} epoch {epoch}/{cfg.epochs}",
                   disable=not progress or rank != 0, leave=False, mininterval=2.0)
        for i, idx in enumerate(batch_indices(len(train_x), cfg.batch_size, gen, rank, world_size)):
            lr = lr_at(step, total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            xb = to_unit(train_x[idx].to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.bf16):
                out = model(xb)
            w = kl_weight(epoch - 1 + i / steps_per_epoch, beta, cfg)
            terms = vae_loss(xb, out, w, core.cfg.likelihood, core.log_sigma, cfg.mmd_weight, perceptual,
                             cfg.perceptual_weight)
            vals = {k: terms[k].item() for k in TERMS}
            if not math.isfinite(vals["loss"]):
                raise NonFiniteLossError(
                    f"non-finite loss ({vals['loss']}) at epoch {epoch}, step {i + 1} "
                    f"(recon {vals['recon']:.4g}, kl {vals['kl']:.4g} nats); likely cause: "
                    f"learning rate too high (train.lr = {cfg.lr}) or diverging decoder scale"
                )
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if ema is not None:
                # Warm-up of the decay (as in timm / TF): early averages do not drag in the random init.
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
            step += 1
            for k in TERMS:
                sums[k] += vals[k]
            bar.set_postfix(loss=f"{vals['loss']:.1f}", recon=f"{vals['recon']:.1f}", kl=f"{vals['kl']:.1f}",
                            refresh=False)
            bar.update()
        bar.close()
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()}}
        with swapped_in(params, ema):
            test = evaluate_terms(model, test_x, beta, device, bf16=cfg.bf16, mmd_weight=cfg.mmd_weight,
                                  perceptual=perceptual, perceptual_weight=cfg.perceptual_weight)
        row.update({f"test_{k}": v for k, v in test.items()})
        row.update({"lr": lr, "epoch_seconds": train_seconds,
                    "images_per_second": steps_per_epoch * cfg.batch_size * world_size / train_seconds})
        history.append(row)
        if rank == 0:
            if progress:
                tqdm.write(f"beta={beta:g} epoch {epoch}: train loss {row['train_loss']:.1f} "
                           f"(recon {row['train_recon']:.1f}, kl {row['train_kl']:.1f}) nats, "
                           f"test {row['test_bpd']:.3f} bits/dim, {row['images_per_second']:.0f} img/s")
            if on_epoch is not None:
                on_epoch(row, {"epoch": epoch, "step": step, "model": core.state_dict(), "optimizer": opt.state_dict(),
                               "batch_rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                               "history": history, **({"ema": ema} if ema is not None else {})})
    if ema is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, ema)
    return history
