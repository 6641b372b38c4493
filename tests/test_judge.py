"""The judge classifier: whitening init, augmentation, and that it learns a separable task."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO, SHARED_TARBALL, need_dataset
from vaelab.data import BATCHES_DIR, load, prepare
from vaelab.judge import JudgeNet, accuracy, augment, predict, train_judge
from vaelab.params import JudgeConfig, load_params

TINY = JudgeConfig(widths=(8, 16, 16), epochs=20, batch_size=64, whiten_width=8, bf16=False)


def colour_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes told apart by which colour channel is bright in which half of the image (uint8)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.randint(0, 60, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    for c in range(10):
        idx = y == c
        ch, half = c % 3, c // 3
        if half == 3:
            x[idx, :, :, :] += 120
        else:
            rows = slice(0, 16) if half == 0 else (slice(16, 32) if half == 1 else slice(8, 24))
            x[idx, ch, rows, :] += 150
    return x, y


def test_whitening_decorrelates_patches():
    net = JudgeNet(JudgeConfig(widths=(8, 8, 8), whiten_width=24))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 32, 32, generator=g)
    x = (x + x.roll(1, dims=3)) / 2  # neighbouring pixels correlated
    net.init_whitening(x)
    with torch.no_grad():
        out = net.whiten((x - net.mean) / net.std)[:, :12]  # (N, 12, 31, 31), the non-negated half
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(flat.T)
    torch.testing.assert_close(cov, torch.eye(12), atol=0.05, rtol=0)


def test_augment_keeps_shape_and_flips_some():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(32.0).view(1, 1, 1, 32).expand(64, 3, 32, 32).contiguous()
    out = augment(x, translate=0, generator=g)
    assert out.shape == x.shape
    flipped = (out[:, 0, 0, 0] == 31).sum().item()
    assert 10 < flipped < 54
    assert augment(x, translate=2, generator=g).shape == x.shape


def test_judge_learns_a_separable_task():
    x, y = colour_task(640, 0)
    xt, yt = colour_task(200, 1)
    model = train_judge(x, y, TINY, seed=0, device=torch.device("cpu"))
    feats, probs = predict(model, xt, torch.device("cpu"), batch_size=64, bf16=False)
    assert feats.shape == (200, 16) and probs.shape == (200, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(200))
    assert accuracy(probs, yt) > 0.9


@pytest.mark.slow
def test_judge_reaches_target_accuracy_on_cifar10(tmp_path):
    """The shipped judge recipe, trained on the full CIFAR-10 copy, classifies >= 85% of the test set."""
    need_dataset()
    target = tmp_path / "data" / BATCHES_DIR
    prepare([SHARED_TARBALL], "http://127.0.0.1:9/unreachable", "0" * 32, target, 1.0)
    ds = load(target)
    cfg = load_params(REPO / "params.yaml").judge
    model = train_judge(ds.train_x, ds.train_y, cfg, seed=0, device=torch.device("cpu"))
    _, probs = predict(model, ds.test_x, torch.device("cpu"), bf16=cfg.bf16)
    assert accuracy(probs, ds.test_y) >= 0.85
