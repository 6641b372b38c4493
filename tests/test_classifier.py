"""The classifiers (judge, audit, features): whitening init, augmentation, that each architecture learns a
separable task, and that the three stages keep their roles apart."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import REPO, SHARED_TARBALL, need_dataset
from vaelab.airbench import Net as AirbenchNet
from vaelab.classifier import accuracy, augment, predict, train_classifier
from vaelab.data import BATCHES_DIR, load, prepare
from vaelab.network import ARCHITECTURE_MODULES, build
from vaelab.network import load as load_classifier
from vaelab.params import ClassifierConfig, load_params
from vaelab.storage import save_model

TINY = ClassifierConfig(widths=(8, 16, 16), epochs=20, batch_size=64, whiten_width=8, bf16=False)


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
    net = AirbenchNet(ClassifierConfig(widths=(8, 8, 8), whiten_width=24))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 3, 32, 32, generator=g)
    x = (x + x.roll(1, dims=3)) / 2  # neighbouring pixels correlated
    net.init_whitening(x)
    with torch.no_grad():
        out = net.stem[0]((x - net.mean) / net.std)[:, :12]  # (N, 12, 31, 31), the non-negated half
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


@pytest.mark.parametrize("arch,epochs", [("airbench", 20), ("resnet", 5), ("vgg", 5)])
def test_every_architecture_learns_a_separable_task(arch, epochs):
    x, y = colour_task(640, 0)
    xt, yt = colour_task(200, 1)
    model = train_classifier(x, y, replace(TINY, arch=arch, epochs=epochs), device=torch.device("cpu"))
    feats, probs = predict(model, xt, torch.device("cpu"), batch_size=64, bf16=False)
    assert feats.shape == (200, 16) and probs.shape == (200, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(200))
    assert accuracy(probs, yt) > 0.9


@pytest.mark.parametrize("arch", ["airbench", "resnet", "vgg"])
def test_activations_are_three_layers_and_features_pool_the_last(arch):
    net = build(replace(TINY, arch=arch)).eval()
    x = torch.rand(4, 3, 32, 32)
    acts = net.activations(x)
    assert len(acts) == 3 and [a.shape[1] for a in acts] == [8, 16, 16]
    assert acts[0].shape[-1] > acts[1].shape[-1] > acts[2].shape[-1]  # coarser with depth
    assert net.features(x).shape == (4, 16)


@pytest.mark.parametrize("tta", [False, True])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURE_MODULES))
def test_predict_gives_the_softmax_of_the_networks_own_logits(arch, tta):
    """What predict reports (its probabilities, so every confidence) is softmax(forward) of the same network, with
    flip averaging the mean of the image's and its mirror's logits; a head scaled up makes the softmax peaked, so a
    wrong logit scale (the audit's confidences were once divided by airbench's 9) changes it visibly."""
    torch.manual_seed(0)
    net = build(replace(TINY, arch=arch)).eval()
    x, _ = colour_task(24, 0)
    with torch.no_grad():
        net.head.weight.mul_(10 / net(x.float() / 255).std())  # logits spread by about 10 whatever the architecture
    feats, probs = predict(net, x, torch.device("cpu"), batch_size=10, bf16=False, tta=tta)
    xf = x.float() / 255
    with torch.no_grad():
        logits = (net(xf) + net(xf.flip(3))) / 2 if tta else net(xf)
        expected_feats = (net.features(xf) + net.features(xf.flip(3))) / 2 if tta else net.features(xf)
    torch.testing.assert_close(probs, logits.softmax(1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats, expected_feats, atol=1e-5, rtol=1e-4)
    assert float(probs.max(1).values.mean()) > 0.5  # peaked: a logit scale of 1/9 would flatten it


def test_a_loaded_classifier_is_frozen_and_predicts_like_the_trained_one(tmp_path):
    x, y = colour_task(256, 0)
    model = train_classifier(x, y, replace(TINY, arch="vgg", epochs=2), device=torch.device("cpu"))
    save_model(tmp_path / "features.pt", model, {"role": "features", "classifier": {"arch": "vgg", "widths": [8, 16, 16],
                                                                                  "whiten_width": 8, "bf16": False}})
    loaded, cfg = load_classifier(tmp_path / "features.pt", torch.device("cpu"))
    assert cfg.arch == "vgg" and not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    torch.testing.assert_close(predict(loaded, x[:32], torch.device("cpu"), bf16=False)[1],
                               predict(model, x[:32], torch.device("cpu"), bf16=False)[1])


def test_the_seed_of_a_classifier_is_its_own():
    x, y = colour_task(128, 0)
    a = train_classifier(x, y, replace(TINY, epochs=1, seed=0), device=torch.device("cpu"))
    b = train_classifier(x, y, replace(TINY, epochs=1, seed=0), device=torch.device("cpu"))
    c = train_classifier(x, y, replace(TINY, epochs=1, seed=1), device=torch.device("cpu"))
    torch.testing.assert_close(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_judge_audit_and_features_are_three_architectures_and_three_seeds():
    params = load_params(REPO / "params.yaml")
    assert len({params.judge.arch, params.audit.arch, params.features.arch}) == 3
    assert len({params.judge.seed, params.audit.seed, params.features.seed}) == 3


@pytest.mark.slow
def test_the_judge_recipe_learns_real_cifar10(tmp_path):
    """The shipped judge recipe (params.yaml `judge`; 4 epochs of batches of 256, so that 10,000 images still give
    it 156 steps) on 10,000 real CIFAR-10 training images classifies the test set far above chance (10%; 69% was
    measured), and its confidence follows: higher on the images it gets right. The full recipe's accuracy (86.6%
    in the committed run) is what stage `judge` measures."""
    need_dataset()
    target = tmp_path / "data" / BATCHES_DIR
    prepare([SHARED_TARBALL], "http://127.0.0.1:9/unreachable", "0" * 32, target, 1.0)
    ds = load(target, subset=10_000)
    cfg = replace(load_params(REPO / "params.yaml").judge, epochs=4, batch_size=256)
    model = train_classifier(ds.train_x, ds.train_y, cfg, device=torch.device("cpu"))
    _, probs = predict(model, ds.test_x, torch.device("cpu"), bf16=cfg.bf16)
    assert accuracy(probs, ds.test_y) >= 0.55
    right = probs.argmax(1) == ds.test_y
    confidence = probs.max(1).values
    assert confidence[right].mean() > confidence[~right].mean()
