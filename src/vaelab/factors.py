"""Controlled factors we can apply to CIFAR images ourselves, and how concentrated a model's response to each is.

A disentangled code changes few latent dimensions when one factor of the image changes. For each factor we
apply it at several levels to the same test images and measure, per latent dimension j, the mean squared change
of the posterior mean, response_j = E_{x, level}[(mu_j(T(x)) - mu_j(x))^2], in squared prior units (every
dimension has the same N(0, 1) prior, so the units are comparable). With share_j = response_j / sum_k response_k,
the factor score is share_(1) - share_(2), the gap between the most and second most responsive dimension
(MIG-style, Chen et al. 2018): 1 when one dimension carries the whole change, near 0 when it is spread.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from vaelab.params import EvaluateConfig

Transform = Callable[[torch.Tensor], torch.Tensor]


def brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Add `delta` (on the [0, 1] scale) to every pixel of uint8 images (N, 3, 32, 32), clipped."""
    return (x.float() + 255.0 * delta).clamp(0, 255).round().to(torch.uint8)


def hue_rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the colours of uint8 images about the grey axis (1, 1, 1) of RGB space by `degrees` (a hue shift
    that keeps each pixel's mean intensity), clipped."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # Rodrigues' rotation about the unit vector (1, 1, 1) / sqrt(3).
    a, b = (1 - c) / 3, s / math.sqrt(3)
    rot = torch.tensor([[c + a, a - b, a + b], [a + b, c + a, a - b], [a - b, a + b, c + a]])
    out = torch.einsum("ij,njhw->nihw", rot, x.float())  # (N, 3, 32, 32)
    return out.clamp(0, 255).round().to(torch.uint8)


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror uint8 images left to right."""
    return x.flip(3)


def shift(x: torch.Tensor, px: int) -> torch.Tensor:
    """Translate uint8 images horizontally by `px` pixels (positive = right), filling by reflection."""
    if px == 0:
        return x
    k = abs(px)
    padded = F.pad(x.float(), (k, k, 0, 0), mode="reflect")  # (N, 3, 32, 32 + 2k)
    start = k - px  # px > 0 moves content right: take the window that starts left of the original
    return padded[..., start : start + x.shape[-1]].to(torch.uint8)


def factor_transforms(cfg: EvaluateConfig) -> dict[str, list[Transform]]:
    """Each factor with its levels from params: brightness, hue, horizontal flip, horizontal shift."""
    return {
        "brightness": [lambda x, d=d: brightness(x, d) for d in cfg.brightness_levels],
        "hue": [lambda x, d=d: hue_rotation(x, d) for d in cfg.hue_levels_deg],
        "flip": [hflip],
        "shift": [lambda x, p=p: shift(x, p) for p in cfg.shift_levels_px],
    }


def factor_response(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    transforms: dict[str, list[Transform]]) -> dict[str, torch.Tensor]:
    """Per factor, the mean squared change of each latent dimension's posterior mean, (D,), when the factor is
    applied to uint8 images x; `encode` maps uint8 images (N, 3, 32, 32) to mu (N, D)."""
    base = encode(x)
    out = {}
    for name, levels in transforms.items():
        sq = [(encode(t(x)) - base).double().pow(2).mean(0) for t in levels]  # each (D,)
        out[name] = torch.stack(sq).mean(0)
    return out


def shares(response: torch.Tensor) -> torch.Tensor:
    """Each dimension's share of the total response, (D,), summing to 1 (all zero if nothing responds)."""
    total = response.sum()
    return response / total if total > 0 else torch.zeros_like(response)


def factor_score(response: torch.Tensor) -> float:
    """Gap between the largest and second-largest share of one factor's response (D,), in [0, 1]."""
    top = torch.topk(shares(response), min(2, len(response))).values
    return float(top[0] - top[1]) if len(top) > 1 else float(top[0])
