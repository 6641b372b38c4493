"""The judge's architecture (airbench, Keller Jordan): a frozen 2x2 patch-whitening layer, three
conv-maxpool-BN-GELU groups, global max pool, logits scaled by 1/9."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vaelab.network import Classifier, norm
from vaelab.params import ClassifierConfig


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


class Net(Classifier):
    """Activations (B, w1, 15, 15), (B, w2, 7, 7), (B, w3, 3, 3); features: global max pool."""

    pool = "max"
    logit_scale = 9.0  # airbench's output scaling: max-pooled features are ~9x larger than averaged ones

    def __init__(self, cfg: ClassifierConfig):
        w1, w2, w3 = cfg.widths
        whiten = nn.Conv2d(3, cfg.whiten_width, 2, padding=0, bias=True)  # 32 -> 31 pixels; set by init_whitening
        whiten.weight.requires_grad_(False)
        groups = nn.Sequential(ConvGroup(cfg.whiten_width, w1), ConvGroup(w1, w2), ConvGroup(w2, w3))
        super().__init__(nn.Sequential(whiten, nn.GELU()), groups, w3)

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
        whiten = self.stem[0]
        filters = filters.flip(0)[: whiten.out_channels // 2]
        whiten.weight.copy_(torch.cat([filters, -filters]))
        whiten.bias.zero_()
