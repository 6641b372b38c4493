"""Numerics shared by every network of the lab (the VAE and the classifiers): bf16 autocast and parameter counts.
Its own module so that the classifiers' stages do not depend on the VAE's model, loss or training loop."""
from __future__ import annotations

import functools
import re
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm), read from
    /proc/cpuinfo; True where that file does not exist (the setting is then trusted as given)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return re.search(r"\b(avx512_bf16|amx_bf16|bf16)\b", flags) is not None


def uses_bf16(device: torch.device, bf16: bool) -> bool:
    """Whether `bf16: true` runs in bf16 here: on CUDA, and on CPUs with native bf16. Elsewhere float32, because
    emulated bf16 is the slow path (measured on a 2-core AVX2 CPU: 15 training images/s against 359 in float32)."""
    return bf16 and (device.type != "cpu" or cpu_has_native_bf16())


def precision_name(device: torch.device, bf16: bool) -> str:
    """"bf16" or "fp32": what `autocast(device, bf16)` computes in on this machine (recorded beside metrics)."""
    return "bf16" if uses_bf16(device, bf16) else "fp32"


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast context when `bf16` and the device computes bf16 natively (`uses_bf16`); float32 otherwise."""
    if uses_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
