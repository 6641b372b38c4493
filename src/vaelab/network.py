"""What the three CIFAR-10 classifiers (judge, audit, features) share: input normalisation, the walk through their
three groups of layers, pooled features and a linear head with the architecture's logit scale; and rebuilding one
from saved weights.

Each architecture lives in a module of its own (`airbench`, `resnet`, `vgg`) that states only its layers, its
pooling and its logit scale, and is imported by name (`ClassifierConfig.arch`): a stage depends on the module of
the architecture it uses, so editing the audit's ResNet never retrains the VAE that learns from the VGG's features.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn as nn

from vaelab.params import ClassifierConfig, from_dict
from vaelab.storage import load_state

CIFAR_MEAN = torch.tensor([125.307, 122.961, 113.8575]) / 255
CIFAR_STD = torch.tensor([51.5865, 50.847, 51.255]) / 255


def norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm as the recipe uses it: running statistics that follow the last few of its few hundred steps
    (momentum 0.4; PyTorch's 0.1 lags and spoils eval-mode accuracy in a short run)."""
    return nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)


class Classifier(nn.Module):
    """Images (B, 3, 32, 32) in [0, 1] -> logits (B, 10): `stem` on the normalised images, then three `groups`
    whose outputs are the activations, the last one pooled over its pixels (`pool`: "mean" or "max") into the
    penultimate features of width `width`, then a linear head whose output is divided by `logit_scale`. An
    architecture builds its stem and groups and passes them in; the head is built last, so that a seed gives the
    layers the same initial weights in the same order."""

    pool: str = "mean"
    logit_scale: float = 1.0

    def __init__(self, stem: nn.Module, groups: nn.Sequential, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", CIFAR_MEAN.view(1, 3, 1, 1))
        self.register_buffer("std", CIFAR_STD.view(1, 3, 1, 1))
        self.stem = stem
        self.groups = groups
        self.head = nn.Linear(width, 10, bias=False)

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each of the three groups, finer to coarser."""
        x = self.stem((x - self.mean) / self.std)
        out = []
        for group in self.groups:
            x = group(x)
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, w3): the last group pooled over its pixels."""
        last = self.activations(x)[-1]  # (B, w3, H, W)
        return last.amax(dim=(2, 3)) if self.pool == "max" else last.mean(dim=(2, 3))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) of penultimate features (B, w3): the head, divided by the architecture's logit scale."""
        return self.head(features) / self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


# The module of each architecture; each defines `Net(cfg)`, a Classifier.
ARCHITECTURE_MODULES = {"airbench": "vaelab.airbench", "resnet": "vaelab.resnet", "vgg": "vaelab.vgg"}


def build(cfg: ClassifierConfig) -> Classifier:
    """An untrained network of cfg.arch, its BatchNorm scales frozen at 1 (the recipe trains only the shifts, at
    64x the learning rate)."""
    if cfg.arch not in ARCHITECTURE_MODULES:
        raise ValueError(f"unknown classifier architecture {cfg.arch!r}; one of {sorted(ARCHITECTURE_MODULES)}")
    model = importlib.import_module(ARCHITECTURE_MODULES[cfg.arch]).Net(cfg)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)
    return model


def from_state(state: dict[str, torch.Tensor], cfg: ClassifierConfig, device: torch.device) -> Classifier:
    """A classifier rebuilt from saved weights, in eval mode on `device`, its weights frozen."""
    model = build(cfg)
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.to(device, memory_format=torch.channels_last).eval()


def load(path: str | Path, device: torch.device) -> tuple[Classifier, ClassifierConfig]:
    """A classifier saved by its stage (judge, audit or features) and its config, frozen, in eval mode."""
    state, config = load_state(path, device)
    cfg = from_dict(ClassifierConfig, config["classifier"])
    return from_state(state, cfg, device), cfg
