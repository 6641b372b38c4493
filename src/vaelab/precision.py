"""Numerics shared by every network of the lab (the VAE and the classifiers): bf16 autocast and parameter counts.
Its own module so that the classifiers' stages do not depend on the VAE's model, loss or training loop."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast context when `bf16` (CUDA, or oneDNN bf16 kernels on CPU); float32 otherwise."""
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
