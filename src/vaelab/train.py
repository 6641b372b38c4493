"""The training loop: seeded batches from an in-memory uint8 tensor, AdamW, warm-up + cosine LR, per-epoch test.

Data-parallel under `torchrun` (the caller initialises the process group and wraps the model in DDP): every rank
walks the same seeded batch order and takes its interleaved share of each global batch of cfg.batch_size, so the
union of the ranks' batches is the single-process batch; DDP averages the gradients. Per-epoch sums and the test
terms are all-reduced, a non-finite loss on any rank stops every rank, and only rank 0 (the master process) gets
progress output and the per-epoch callback that logs and writes files.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from vaelab.data import batch_indices, to_unit
from vaelab.loss import Activations, vae_loss
from vaelab.params import TrainConfig
from vaelab.precision import autocast

TERMS = ("loss", "recon", "perceptual", "kl", "mmd", "bpd")
# The objective's parts as they enter the loss, each with its weight (nats per image): their sum is the loss.
OBJECTIVE = ("recon", "perceptual_term", "kl_term", "mmd_term")


def objective_terms(vals: dict[str, float], kl_w: float, cfg: TrainConfig) -> dict[str, float]:
    """The weighted parts of one step's loss from its named terms: recon, λ_p·D_feat, β·KL (the β of that step,
    warm-up included) and the MMD term's weight times MMD; they sum to vals["loss"]."""
    return {"recon": vals["recon"], "perceptual_term": cfg.perceptual_weight * vals["perceptual"],
            "kl_term": kl_w * vals["kl"], "mmd_term": cfg.mmd_weight * vals["mmd"]}


def decoder_sigma(model: nn.Module) -> float:
    """The Gaussian decoder's σ̂ on the [-1, 1] pixel scale (the mean over channels of a per-channel σ); NaN where
    the decoder predicts σ per pixel or is logistic."""
    core = getattr(model, "module", model)
    if core.cfg.likelihood != "gaussian" or core.cfg.sigma == "pixel":
        return math.nan
    return float(core.log_sigma.detach().exp().mean())


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
    rank: int = 0, world_size: int = 1,
) -> dict[str, float]:
    """Mean loss / recon / kl (nats per image), perceptual, mmd and bpd over uint8 images x (N, 3, 32, 32); with
    world_size > 1 each rank scores every world_size-th image and the sums are all-reduced (every rank gets them)."""
    core = getattr(model, "module", model)  # unwrap DDP: evaluation needs no gradient synchronisation
    was_training = core.training
    core.eval()
    sums = torch.zeros(len(TERMS), dtype=torch.float64, device=device)
    mine = torch.arange(rank, len(x), world_size)
    for idx in mine.split(batch_size):
        xb = to_unit(x[idx].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            out = core(xb)
        terms = vae_loss(xb, out, beta, core.cfg.likelihood, core.log_sigma, mmd_weight, perceptual, perceptual_weight)
        sums += torch.stack([terms[k].detach().double() for k in TERMS]) * len(idx)
    if world_size > 1:
        dist.all_reduce(sums)
    core.train(was_training)
    return {k: float(v) / len(x) for k, v in zip(TERMS, sums.tolist())}


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random-number state that training draws from: the CPU generator, and the CUDA one on a GPU."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def all_rng_states(device: torch.device, world_size: int) -> list[dict[str, torch.Tensor]]:
    """Every rank's `rng_state`, in rank order (a collective: all ranks call it)."""
    mine = rng_state(device)
    if world_size == 1:
        return [mine]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in mine.items()})
    return gathered


def batch_terms(model: nn.Module, xb: torch.Tensor, kl_w: float, cfg: TrainConfig, device: torch.device,
                perceptual: Activations | None = None) -> dict[str, torch.Tensor]:
    """Named batch-mean terms (nats per image; see `vae_loss`) of images xb in [-1, 1] (B, 3, 32, 32) through
    `model` (under DDP the forward pass is the wrapper's, so that backward all-reduces the gradients)."""
    core = getattr(model, "module", model)
    with autocast(device, cfg.bf16):
        out = model(xb)
    return vae_loss(xb, out, kl_w, core.cfg.likelihood, core.log_sigma, cfg.mmd_weight, perceptual,
                    cfg.perceptual_weight)


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
    state (weights, optimizer, RNG, history, and `steps`: the per-step curve, one row per cfg.log_every steps of
    rank 0's batches with each weighted term of the objective, their sum, the learning rate and the decoder's σ̂;
    what `resume` takes) for logging and checkpoints. Given a `resume`
    state, training continues after its epoch and ends exactly as an uninterrupted run would (bit-identical on
    CPU). Raises NonFiniteLossError on a NaN/Inf loss, before the optimizer step can spoil the weights.
    With cfg.ema_decay > 0 the per-epoch test terms are those of the weights' moving average, and the model
    ends holding that average (the state passed to `on_epoch` carries both).
    `perceptual` gives the frozen feature network's activations of images in [-1, 1], for the
    cfg.perceptual_weight * D_feat term.
    With world_size > 1 (torchrun; `model` wrapped in DistributedDataParallel) each rank takes
    cfg.batch_size / world_size images of every global batch; every rank returns the same history and raises
    NonFiniteLossError together (the message names the ranks that diverged).
    """
    core = getattr(model, "module", model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)  # batch order; eps noise uses the global (seeded) RNG
    if cfg.batch_size % world_size:
        raise ValueError(f"train.batch_size {cfg.batch_size} does not split evenly over {world_size} processes")
    rank_batch = cfg.batch_size // world_size  # the global batch stays cfg.batch_size
    steps_per_epoch = (len(train_x) // world_size) // rank_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_x)} training images give no full batch of {cfg.batch_size}")
    total = steps_per_epoch * cfg.epochs
    history: list[dict[str, float]] = []
    steps: list[dict[str, float]] = []
    window = torch.zeros(len(OBJECTIVE) + 1, dtype=torch.float64)  # the running sums of one per-step row
    step, start = 0, 1
    # The moving average is kept in fp32 beside the live weights; it is what gets evaluated and saved.
    ema = [p.detach().clone() for p in params] if cfg.ema_decay > 0 else None
    if resume is not None:
        core.load_state_dict(resume["model"])
        if ema is not None:
            ema = [t.to(device) for t in resume["ema"]]
        opt.load_state_dict(resume["optimizer"])
        gen.set_state(resume["batch_rng"])
        if len(resume["torch_rng"]) != world_size:
            raise ValueError(f"the checkpoint was written by {len(resume['torch_rng'])} processes, not {world_size}")
        set_rng_state(resume["torch_rng"][rank], device)
        history = [dict(r) for r in resume["history"]]
        steps = [dict(r) for r in resume.get("steps", [])]
        step, start = int(resume["step"]), int(resume["epoch"]) + 1
    model.train()
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        sums = torch.zeros(len(TERMS), dtype=torch.float64)
        bar = tqdm(total=steps_per_epoch, desc=f"beta={beta:g} epoch {epoch}/{cfg.epochs}",
                   disable=not progress or rank != 0, leave=False, mininterval=2.0)
        for i, idx in enumerate(batch_indices(len(train_x), rank_batch, gen, rank, world_size)):
            lr = lr_at(step, total, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            xb = to_unit(train_x[idx].to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
            kl_w = kl_weight(epoch - 1 + i / steps_per_epoch, beta, cfg)
            terms = batch_terms(model, xb, kl_w, cfg, device, perceptual)
            vals = {k: terms[k].item() for k in TERMS}
            losses = [vals["loss"]]
            if world_size > 1:
                # Every rank learns whether any rank diverged, before backward: they stop together, none hangs.
                every = torch.zeros(world_size, dtype=torch.float64, device=device)
                every[rank] = vals["loss"]
                dist.all_reduce(every)
                losses = every.tolist()
            bad = [r for r, v in enumerate(losses) if not math.isfinite(v)]
            if bad:
                where = f" on rank {', '.join(map(str, bad))} of {world_size}" if world_size > 1 else ""
                raise NonFiniteLossError(
                    f"non-finite loss ({losses[bad[0]]}){where} at epoch {epoch}, step {i + 1} "
                    f"(this rank: recon {vals['recon']:.4g}, kl {vals['kl']:.4g} nats); likely cause: "
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
            sums += torch.tensor([vals[k] for k in TERMS], dtype=torch.float64)
            parts = objective_terms(vals, kl_w, cfg)
            window += torch.tensor([parts[k] for k in OBJECTIVE] + [vals["loss"]], dtype=torch.float64)
            if step % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                # A row per log_every steps, and one at each epoch's end (the window's mean since the last row).
                n_window = step - (int(steps[-1]["step"]) if steps else 0)
                means = (window / n_window).tolist()
                steps.append({"step": step, "epoch": epoch - 1 + (i + 1) / steps_per_epoch,
                              **dict(zip(OBJECTIVE, means[:-1])), "loss": means[-1], "lr": lr,
                              "sigma": decoder_sigma(model)})
                window.zero_()
            bar.set_postfix(loss=f"{vals['loss']:.1f}", recon=f"{vals['recon']:.1f}", kl=f"{vals['kl']:.1f}",
                            refresh=False)
            bar.update()
        bar.close()
        train_seconds = time.perf_counter() - t0
        if world_size > 1:  # the whole data's means, not this rank's share (gloo reduces CPU tensors)
            sums = sums.to(device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        means = (sums / (steps_per_epoch * world_size)).tolist()
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in zip(TERMS, means)}}
        with swapped_in(params, ema):
            test = evaluate_terms(model, test_x, beta, device, bf16=cfg.bf16, mmd_weight=cfg.mmd_weight,
                                  perceptual=perceptual, perceptual_weight=cfg.perceptual_weight,
                                  rank=rank, world_size=world_size)
        row.update({f"test_{k}": v for k, v in test.items()})
        row.update({"lr": lr, "sigma": decoder_sigma(model), "epoch_seconds": train_seconds,
                    "images_per_second": steps_per_epoch * cfg.batch_size / train_seconds})
        history.append(row)
        rngs = all_rng_states(device, world_size)  # a collective: every rank takes part, rank 0 keeps them
        if rank == 0:
            if progress:
                tqdm.write(f"beta={beta:g} epoch {epoch}: train loss {row['train_loss']:.1f} "
                           f"(recon {row['train_recon']:.1f}, kl {row['train_kl']:.1f}) nats, "
                           f"test {row['test_bpd']:.3f} bits/dim, {row['images_per_second']:.0f} img/s")
            if on_epoch is not None:
                on_epoch(row, {"epoch": epoch, "step": step, "model": core.state_dict(), "optimizer": opt.state_dict(),
                               "batch_rng": gen.get_state(), "torch_rng": rngs, "history": history,
                               "steps": steps, **({"ema": ema} if ema is not None else {})})
    if ema is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, ema)
    return history
