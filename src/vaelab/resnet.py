"""The audit's architecture: a small ResNet (3x3 stem, one residual block at 32, 16 and 8 pixels, strided
convolutions instead of pooling, global average pool; He et al. 2016)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.network import Classifier, norm
from vaelab.params import ClassifierConfig


class ResidualBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, plus the input (a strided 1x1 conv where the shape changes),
    then ReLU."""

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


class Net(Classifier):
    """Activations (B, w1, 32, 32), (B, w2, 16, 16), (B, w3, 8, 8); features: global average pool; unscaled
    logits (the base's defaults)."""

    def __init__(self, cfg: ClassifierConfig):
        w1, w2, w3 = cfg.widths
        stem = nn.Sequential(nn.Conv2d(3, w1, 3, padding=1, bias=False), norm(w1), nn.ReLU())
        blocks = nn.Sequential(ResidualBlock(w1, w1, 1), ResidualBlock(w1, w2, 2), ResidualBlock(w2, w3, 2))
        super().__init__(stem, blocks, w3)
