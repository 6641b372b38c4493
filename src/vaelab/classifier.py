"""The one CIFAR-10 classifier recipe behind three networks of three architectures (params sections `judge`,
`audit`, `features`):

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
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.data import batch_indices
from vaelab.params import ClassifierConfig, from_dict
from vaelab.storage import load_state
from vaelab.precision import autocast

CIFAR_MEAN = torch.tensor([125.307, 122.961, 113.8575]) / 255
CIFAR_STD = torch.tensor([51.5865, 50.847, 51.255]) / 255


def norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm as the recipe uses it: running statistics that follow the last few of its few hundred steps
    (momentum 0.4; PyTorch's 0.1 lags and spoils eval-mode accuracy in a short run)."""
    return nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)


class ConvGroup(nn.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.norm1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2 = norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """The judge's architecture: frozen 2x2 patch whitening, three conv-maxpool-BN-GELU groups, global max pool.
    Images (B, 3, 32, 32) in [0, 1] -> logits (B, 10)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.register_buffer("mean", CIFAR_MEAN.view(1, 3, 1, 1))
        self.register_buffer("std", CIFAR_STD.view(1, 3, 1, 1))
        self.whiten = nn.Conv2d(3, cfg.whiten_width, 2, padding=0, bias=True)  # 32 -> 31
        self.whiten.weight.requires_grad_(False)
        self.groups = nn.Sequential(ConvGroup(cfg.whiten_width, w1), ConvGroup(w1, w2), ConvGroup(w2, w3))
        self.head = nn.Linear(w3, 10, bias=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each group: (B, w1, 15, 15), (B, w2, 7, 7), (B, w3, 3, 3)."""
        x = F.gelu(self.whiten((x - self.mean) / self.std))
        out = []
        for group in self.groups:
            x = group(x)
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, w3): global max pool of the last group."""
        return self.activations(x)[-1].amax(dim=(2, 3))  # (B, w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) / 9.0  # airbench's output scaling

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer to whiten 2x2 patches of x (N, 3, 32, 32) in [0, 1]:
        eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue), each with its negation."""
        x = (x - self.mean) / self.std
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2).float()  # (M, 3, 2, 2)
        flat = patches.flatten(1)  # (M, 12)
        flat = flat - flat.mean(0)
        cov = flat.T @ flat / len(flat)  # (12, 12)
        evals, evecs = torch.linalg.eigh(cov)
        filters = (evecs.T / torch.sqrt(evals + eps).unsqueeze(1)).view(-1, 3, 2, 2)  # (12, 3, 2, 2)
        half = self.whiten.out_channels // 2
        filters = filters.flip(0)[:half]
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.bias.zero_()


class ResidualBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the input (a strided 1x1 conv where the shape changes),
    then ReLU (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm(c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else \
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.skip(x))


class ResNet(nn.Module):
    """The audit's architecture: a small ResNet (3x3 stem, one residual block at 32, 16 and 8 pixels, strided
    convolutions instead of pooling, global average pool). Images (B, 3, 32, 32) in [0, 1] -> logits (B, 10)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.register_buffer("mean", CIFAR_MEAN.view(1, 3, 1, 1))
        self.register_buffer("std", CIFAR_STD.view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1, bias=False), norm(w1), nn.ReLU())
        self.groups = nn.Sequential(ResidualBlock(w1, w1, 1), ResidualBlock(w1, w2, 2), ResidualBlock(w2, w3, 2))
        self.head = nn.Linear(w3, 10, bias=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each block: (B, w1, 32, 32), (B, w2, 16, 16), (B, w3, 8, 8)."""
        x = self.stem((x - self.mean) / self.std)
        out = []
        for group in self.groups:
            x = group(x)
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, w3): global average pool of the last block."""
        return self.activations(x)[-1].mean(dim=(2, 3))  # (B, w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # unscaled: average-pooled features are ~9x smaller than max-pooled


class VGG(nn.Module):
    """The feature network's architecture: VGG-style pairs of conv3x3-BN-ReLU at 32, 16 and 8 pixels with 2x2
    average pooling between them, global average pool; the perceptual distance reads the three pairs' outputs, as
    LPIPS reads VGG's. Images (B, 3, 32, 32) in [0, 1] -> logits (B, 10)."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.register_buffer("mean", CIFAR_MEAN.view(1, 3, 1, 1))
        self.register_buffer("std", CIFAR_STD.view(1, 3, 1, 1))

        def pair(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU())

        self.groups = nn.Sequential(pair(3, w1), pair(w1, w2), pair(w2, w3))
        self.head = nn.Linear(w3, 10, bias=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each pair: (B, w1, 32, 32), (B, w2, 16, 16), (B, w3, 8, 8)."""
        x = (x - self.mean) / self.std
        out = []
        for i, group in enumerate(self.groups):
            x = group(F.avg_pool2d(x, 2) if i else x)
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, w3): global average pool of the last pair."""
        return self.activations(x)[-1].mean(dim=(2, 3))  # (B, w3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # unscaled: average-pooled features are ~9x smaller than max-pooled


ARCHITECTURES: dict[str, type[nn.Module]] = {"airbench": AirbenchNet, "resnet": ResNet, "vgg": VGG}


def build(cfg: ClassifierConfig) -> nn.Module:
    """An untrained network of cfg.arch, its BatchNorm scales frozen at 1 (the recipe trains only the shifts, at
    64x the learning rate)."""
    model = ARCHITECTURES[cfg.arch](cfg)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)
    return model


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
) -> nn.Module:
    """Train a classifier of cfg.arch with seed cfg.seed on uint8 images (N, 3, 32, 32) and labels (N,); returns
    it in eval mode.

    on_epoch gets {epoch, train_loss (nats per image), epoch_seconds} and, given `test` images and labels,
    the test accuracy without test-time augmentation."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build(cfg).to(device, memory_format=torch.channels_last)
    if isinstance(model, AirbenchNet):
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
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1000, bf16: bool = True,
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
        # head is linear, so the head of the mean feature is the mean of the two logits
        logits = model.head(f) / 9.0
        feats.append(f.cpu())
        probs.append(logits.softmax(1).cpu())
    return torch.cat(feats), torch.cat(probs)


def from_state(state: dict[str, torch.Tensor], cfg: ClassifierConfig, device: torch.device) -> nn.Module:
    """A classifier rebuilt from saved weights, in eval mode on `device`, its weights frozen."""
    model = build(cfg)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last).eval()


def load(path: str | Path, device: torch.device) -> tuple[nn.Module, ClassifierConfig]:
    """A classifier saved by its stage (judge, audit or features) and its config, frozen, in eval mode."""
    state, config = load_state(path, device)
    cfg = from_dict(ClassifierConfig, config["classifier"])
    return from_state(state, cfg, device), cfg


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of probabilities (N, 10) against labels (N,)."""
    return float((probs.argmax(1) == labels).float().mean())
