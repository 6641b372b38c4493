"""How fast this machine trains the VAE: images/s of the default training step (with and without the perceptual
term) and where one step's time goes. Random images of CIFAR's shape: the cost does not depend on the content.
Used by `benchmarks/train_speed.py` and by stage `timings`, which records the figure beside the stage times so
that a reader can tell a slow machine from a slow pipeline."""
from __future__ import annotations

import time
from typing import Callable

import torch

from vaelab.data import to_unit
from vaelab.loss import Activations, feature_activations, vae_loss
from vaelab.model import VAE, reparameterize
from vaelab.network import build
from vaelab.params import Params
from vaelab.precision import autocast


def setup(params: Params, batch_size: int, bf16: bool) -> tuple[VAE, torch.optim.Optimizer, torch.Tensor, Activations]:
    """The default VAE with its optimiser, a random uint8 batch (B, 3, 32, 32) and the activations of an untrained
    feature network of params' `features` section (the same cost as the trained one), all seeded."""
    torch.manual_seed(0)
    model = VAE(params.model).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.train.lr)
    x_u8 = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8)
    features = build(params.features).eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return model, opt, x_u8, feature_activations(features, torch.device("cpu"), bf16)


def train_step(params: Params, model: VAE, opt: torch.optim.Optimizer, x_u8: torch.Tensor, activations: Activations,
               perceptual_weight: float, bf16: bool) -> Callable[[], None]:
    """One training step of the loop's kind (forward, named loss terms, backward, AdamW) as a callable."""
    device = torch.device("cpu")

    def step() -> None:
        x = to_unit(x_u8).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            out = model(x)
        loss = vae_loss(x, out, 1.0, params.model.likelihood, model.log_sigma, perceptual=activations,
                        perceptual_weight=perceptual_weight)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def images_per_second(step: Callable[[], None], batch_size: int, steps: int, warmup: int) -> float:
    """Training images per second of `step` over `steps` steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - t0)


def profile_step(params: Params, batch_size: int, steps: int, bf16: bool) -> dict[str, float]:
    """Milliseconds per training step with the perceptual term, by part: data (uint8 -> [-1, 1]), encoder and
    decoder forward, the feature network's forward on x (no gradient) and on x̂, the loss terms, the backward
    pass of the VAE alone and the feature network's share of it (the difference with the perceptual term on),
    and the AdamW step; each the median over `steps` steps."""
    model, opt, x_u8, activations = setup(params, batch_size, bf16)
    device = torch.device("cpu")
    parts: dict[str, list[float]] = {}

    def clock(name: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        out = fn()
        parts.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
        return out

    weight = params.train.perceptual_weight or 1.0
    for i in range(steps + 2):  # the first two are warm-up
        x = clock("data", lambda: to_unit(x_u8).contiguous(memory_format=torch.channels_last))
        with autocast(device, bf16):
            mu, logvar = clock("encoder forward", lambda: model.encoder(x))
            z = reparameterize(mu, logvar)
            dec = clock("decoder forward", lambda: model.decoder(z))
        out = {"mu": mu, "logvar": logvar, "z": z, "params": dec}
        clock("feature net forward on x", lambda: [a.detach() for a in activations(x)])
        xhat = dec[:, :3]
        clock("feature net forward on x̂", lambda: activations(xhat))
        terms = clock("loss terms", lambda: vae_loss(x, out, 1.0, params.model.likelihood, model.log_sigma))
        opt.zero_grad(set_to_none=True)
        clock("backward, VAE only", lambda: terms["loss"].backward())
        # The same step's graph again, with the perceptual term: its backward minus the VAE's is the feature
        # network's share.
        with autocast(device, bf16):
            out = model(x)
        loss = vae_loss(x, out, 1.0, params.model.likelihood, model.log_sigma, perceptual=activations,
                        perceptual_weight=weight)["loss"]
        opt.zero_grad(set_to_none=True)
        clock("backward, with perceptual term", lambda: loss.backward())
        clock("optimiser step", opt.step)
        if i < 2:
            parts.clear()
    med = {k: float(torch.tensor(v).median()) for k, v in parts.items()}
    med["backward of the feature net on x̂"] = med["backward, with perceptual term"] - med["backward, VAE only"]
    # The perceptual forward inside the timed backward-with-term graph is not counted twice: the parts below sum
    # to one step with the term.
    step = {k: med[k] for k in ("data", "encoder forward", "decoder forward", "feature net forward on x",
                                "feature net forward on x̂", "loss terms", "backward, VAE only",
                                "backward of the feature net on x̂", "optimiser step")}
    return step


def throughput(params: Params, batch_size: int, steps: int, warmup: int, bf16: bool) -> dict[str, float]:
    """Training images/s of the default model without the perceptual term ('plain') and with it ('perceptual')."""
    model, opt, x_u8, activations = setup(params, batch_size, bf16)
    weight = params.train.perceptual_weight or 1.0
    return {name: images_per_second(train_step(params, model, opt, x_u8, activations, w, bf16), batch_size, steps,
                                    warmup) for name, w in (("plain", 0.0), ("perceptual", weight))}
