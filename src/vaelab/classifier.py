"""The one CIFAR-10 classifier recipe (training, prediction) behind three networks of three architectures (params
sections `judge`, `audit`, `features`; the networks are in `network` and one module per architecture):

- judge (`airbench`): its features and softmax score samples (FCD, KID, confidence, class entropy);
- audit (`resnet`): a second, independent scorer of the same sample sets, so that a change that only fools the
  judge is seen;
- features (`vgg`): its intermediate activations define the perceptual distance of the VAE's training loss; it
  never scores anything, and the two scorers never train anything.

Standard FID and LPIPS need Inception / VGG weights that cannot be downloaded here, so every network is trained by
the pipeline itself. The recipe follows the airbench / hlb-CIFAR10 line (Keller Jordan; tysam-code): BatchNorm
with scales frozen at 1, label smoothing, flip + translate augmentation, Nesterov SGD with a triangular
learning-rate schedule, and flip test-time augmentation; the airbench network adds a frozen patch-whitening
first layer.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from vaelab.data import batch_indices
from vaelab.network import Classifier, build
from vaelab.params import ClassifierConfig
from vaelab.precision import autocast

def augment(x: torch.Tensor, translate: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and translation by up to `translate` pixels, batched: (B, 3, 32, 32)."""
    b = len(x)
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if translate > 0:
        padded = F.pad(x, (translate,) * 4, mode="reflect")  # (B, 3, 32+2t, 32+2t)
        dx, dy = (torch.randint(0, 2 * translate + 1, (2,), generator=generator)).tolist()
        # One shift per batch keeps it a single slice; batches differ, so the data still see every shift.
        x = padded[:, :, dy : dy + 32, dx : dx + 32]
    return x


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    cfg: ClassifierConfig,
    device: torch.device,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Classifier:
    """Train a classifier of cfg.arch with seed cfg.seed on uint8 images (N, 3, 32, 32) and labels (N,); returns
    it in eval mode.

    on_epoch gets {epoch, train_loss (nats per image), epoch_seconds} and, given `test` images and labels,
    the test accuracy without test-time augmentation."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build(cfg).to(device, memory_format=torch.channels_last)
    if hasattr(model, "init_whitening"):  # airbench's frozen first layer whitens the training images' patches
        model.init_whitening(train_x[:5000].float().div(255).to(device))
    # airbench's parameterisation: lr and weight decay per 1024 examples of a summed loss, biases (BN shifts)
    # at 64x the learning rate, BN scales frozen at 1.
    bs = min(cfg.batch_size, len(train_x))  # a tiny training set still gives one batch per epoch
    kilostep = 1024 * (1 + 1 / (1 - cfg.momentum))
    lr = cfg.lr / kilostep
    wd = cfg.weight_decay * bs / kilostep
    lr_bias = lr * 64
    trained = [p for p in model.parameters() if p.requires_grad]
    base = [lr_bias, lr]  # peak learning rates of the two groups, scaled by the schedule below
    opt = torch.optim.SGD([{"params": [p for p in trained if p.ndim <= 1], "lr": lr_bias, "weight_decay": wd / lr_bias},
                           {"params": [p for p in trained if p.ndim > 1], "lr": lr, "weight_decay": wd / lr}],
                          momentum=cfg.momentum, nesterov=True)
    steps_per_epoch = len(train_x) // bs
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    step, epoch = 0, 0
    model.train()
    while step < total:
        epoch += 1
        t0 = time.perf_counter()
        loss_sum, n = 0.0, 0
        for idx in batch_indices(len(train_x), bs, gen):
            if step >= total:
                break
            frac = step / total  # triangular schedule: 0.2 -> 1 over the first 23%, then down to zero
            scale = 0.2 + 0.8 * frac / 0.23 if frac < 0.23 else (1 - frac) / 0.77
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * scale
            x = augment(train_x[idx].float().div_(255), cfg.translate, gen).to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), train_y[idx].to(device), label_smoothing=cfg.label_smoothing,
                                   reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item()
            n += len(idx)
        if on_epoch is not None:
            row = {"epoch": epoch, "train_loss": loss_sum / max(n, 1), "epoch_seconds": time.perf_counter() - t0}
            if test is not None:
                _, probs = predict(model, test[0], device, bf16=cfg.bf16, tta=False)
                row["test_accuracy"] = accuracy(probs, test[1])
                model.train()
            on_epoch(row)
    return model.eval()


@torch.no_grad()
def predict(model: Classifier, x: torch.Tensor, device: torch.device, batch_size: int = 1000, bf16: bool = True,
            tta: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (N, w3) and softmax probabilities (N, 10) of uint8 images; with `tta` both are
    averaged over the image and its mirror image."""
    model.eval()
    feats, probs = [], []
    for idx in batch_indices(len(x), batch_size, None):
        xb = x[idx].float().div(255).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            f = model.features(xb).float()
            if tta:
                f = (f + model.features(xb.flip(3)).float()) / 2
        # The head is linear, so the logits of the mean feature are the mean of the two images' logits.
        logits = model.logits(f)
        feats.append(f.cpu())
        probs.append(logits.softmax(1).cpu())
    return torch.cat(feats), torch.cat(probs)


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of probabilities (N, 10) against labels (N,)."""
    return float((probs.argmax(1) == labels).float().mean())
