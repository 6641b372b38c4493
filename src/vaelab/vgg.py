"""The feature network's architecture (stage `features`): VGG-style pairs of conv3x3-BN-ReLU at 32, 16 and 8
pixels with 2x2 average pooling between them, global average pool. The perceptual term of the VAE's loss reads
the three pairs' outputs, as LPIPS reads VGG's; this network never scores anything."""
from __future__ import annotations

import torch.nn as nn

from vaelab.network import Classifier, norm
from vaelab.params import ClassifierConfig


def pair(c_in: int, c_out: int, downsample: bool) -> nn.Sequential:
    """[avgpool2 ->] conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU."""
    return nn.Sequential(nn.AvgPool2d(2) if downsample else nn.Identity(),
                         nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), norm(c_out), nn.ReLU())


class Net(Classifier):
    """Activations (B, w1, 32, 32), (B, w2, 16, 16), (B, w3, 8, 8) (what the perceptual distance reads); features:
    global average pool; unscaled logits (the base's defaults)."""

    def __init__(self, cfg: ClassifierConfig):
        w1, w2, w3 = cfg.widths
        super().__init__(nn.Identity(), nn.Sequential(pair(3, w1, False), pair(w1, w2, True), pair(w2, w3, True)), w3)
