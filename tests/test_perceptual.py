"""The sharper-decoder machinery on random tensors: the perceptual distance, the decoder options, a train step with
the perceptual term, the sharpness measure, and the rule that the feature network never scores and the scorers
never train."""
from __future__ import annotations

import ast
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from vaelab import quality
from vaelab.network import build
from vaelab.loss import gaussian_nll, perceptual_distance, recon_nll, vae_loss
from vaelab.model import VAE
from vaelab.params import ClassifierConfig, ModelConfig, ParamsError, TrainConfig, from_dict
from vaelab.train import train

CPU = torch.device("cpu")
SMALL = ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=0, likelihood="gaussian")
FEATURES = ClassifierConfig(arch="vgg", widths=(8, 16, 16), bf16=False)


def feature_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(FEATURES).eval().requires_grad_(False)


def unit_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: noise upsampled from 8x8, (n, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of standard deviation sigma pixels, reflection padded."""
    r = int(3 * sigma) + 1
    k = torch.exp(-torch.arange(-r, r + 1.0).pow(2) / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)  # (3, 1, 1, 2r+1), one filter per channel
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.transpose(2, 3), groups=3)


# ------------------------------------------------------------------------------------------ perceptual distance
def test_perceptual_distance_is_zero_for_identical_images_and_grows_with_a_blur():
    net, x = feature_net(), unit_images(16)
    d0 = perceptual_distance(x, x.clone(), net.activations)
    assert d0.shape == (16,) and float(d0.abs().max()) < 1e-6
    d = [float(perceptual_distance(x, blur(x, s), net.activations).mean()) for s in (0.5, 1.0, 2.0)]
    assert 0 < d[0] < d[1] < d[2], d
    assert d[2] <= 4 * 3  # at most 4 per layer, three layers


def test_perceptual_distance_passes_gradient_to_the_reconstruction_only():
    net, x = feature_net(), unit_images(4)
    y = blur(x, 1.0).requires_grad_(True)
    target = x.clone().requires_grad_(True)
    perceptual_distance(target, y, net.activations).sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    assert target.grad is None


def test_perceptual_term_joins_the_loss_but_not_the_elbo():
    torch.manual_seed(0)
    model = VAE(SMALL)
    x = unit_images(8) * 2 - 1
    out = model(x)
    acts = lambda v: feature_net().activations((v + 1) / 2)  # noqa: E731
    off = vae_loss(x, out, 1.0, "gaussian", model.log_sigma)
    on = vae_loss(x, out, 1.0, "gaussian", model.log_sigma, perceptual=acts, perceptual_weight=100.0)
    assert float(off["perceptual"]) == 0 and float(on["perceptual"].detach()) > 0
    torch.testing.assert_close(on["loss"], off["loss"] + 100.0 * on["perceptual"])
    for k in ("recon", "kl", "neg_elbo", "bpd"):
        torch.testing.assert_close(on[k], off[k])


def test_a_train_step_with_the_perceptual_term_changes_the_decoder_differently():
    """Same init, same batches: with λ_p > 0 the decoder ends elsewhere than with λ_p = 0; the feature network does
    not move."""
    net = feature_net()
    frozen = {k: v.clone() for k, v in net.state_dict().items()}
    acts = lambda v: net.activations((v + 1) / 2)  # noqa: E731
    x = (unit_images(16) * 255).round().to(torch.uint8)
    ends = {}
    for weight in (0.0, 1000.0):
        torch.manual_seed(0)
        model = VAE(SMALL)
        before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
        cfg = TrainConfig(epochs=1, batch_size=8, warmup_steps=0, bf16=False, perceptual_weight=weight)
        history = train(model, x, x[:4], 1.0, cfg, seed=0, device=CPU, progress=False, perceptual=acts)
        assert all(not torch.equal(before[k], v) for k, v in model.decoder.state_dict().items())
        assert (history[-1]["train_perceptual"] > 0) == (weight > 0)
        ends[weight] = model.decoder.out.weight.detach().clone()
    assert not torch.allclose(ends[0.0], ends[1000.0])
    for k, v in net.state_dict().items():
        assert torch.equal(frozen[k], v), k


# ------------------------------------------------------------------------------------------------ decoder options
@pytest.mark.parametrize("options,channels", [
    ({"upsample": "nearest"}, 3),
    ({"decoder_res_blocks": 2}, 3),
    ({"decoder_widths": (32, 32, 64)}, 3),
    ({"sigma": "channel"}, 3),
    ({"sigma": "pixel"}, 6),
])
def test_decoder_options_give_images_and_a_finite_loss(options, channels):
    torch.manual_seed(0)
    model = VAE(dataclasses.replace(SMALL, **options))
    x = unit_images(4) * 2 - 1
    out = model(x)
    assert out["params"].shape == (4, channels, 32, 32)
    assert model.decode(out["z"]).shape == (4, 3, 32, 32)
    terms = vae_loss(x, out, 1.0, "gaussian", model.log_sigma)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_decoder_options_change_the_decoder_only():
    base = VAE(SMALL)
    for options in ({"upsample": "nearest"}, {"decoder_res_blocks": 1}, {"decoder_widths": (16, 16, 16)}):
        other = VAE(dataclasses.replace(SMALL, **options))
        assert {k: v.shape for k, v in other.encoder.state_dict().items()} == \
               {k: v.shape for k, v in base.encoder.state_dict().items()}
        assert sum(p.numel() for p in other.decoder.parameters()) != sum(p.numel() for p in base.decoder.parameters())


def test_per_channel_and_per_pixel_sigma_agree_with_one_global_sigma_when_equal():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=g).float() * (2 / 255) - 1
    mean = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ref = gaussian_nll(x, mean, torch.tensor([-3.0]))
    torch.testing.assert_close(gaussian_nll(x, mean, torch.full((3, 1, 1), -3.0)), ref)
    pixel = torch.cat([mean, torch.full_like(mean, -3.0)], dim=1)  # (B, 6, 32, 32): means and log-sigmas
    torch.testing.assert_close(recon_nll(x, pixel, "gaussian", torch.tensor([5.0])), ref)
    # A channel with a wrong sigma costs more: the per-channel sigma is really per channel.
    worse = gaussian_nll(x, mean, torch.tensor([-3.0, -3.0, 1.0]).view(3, 1, 1))
    assert torch.all(worse > ref)


def test_invalid_decoder_options_are_rejected_by_name():
    for raw, key in (({"upsample": "bilinear"}, "model.upsample"), ({"sigma": "pixel", "likelihood": "logistic"},
                     "model.sigma"), ({"decoder_widths": [8, 8]}, "model.decoder_widths"),
                     ({"decoder_res_blocks": -1}, "model.decoder_res_blocks")):
        with pytest.raises(ParamsError, match=key):
            from_dict(ModelConfig, raw, prefix="model.")
    with pytest.raises(ParamsError, match="train.perceptual_weight"):
        from_dict(TrainConfig, {"perceptual_weight": -1}, prefix="train.")


# ------------------------------------------------------------------------------------------------------ sharpness
def test_sharpness_ratio_is_one_for_the_same_images_and_falls_with_a_blur():
    x = (torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    e = quality.high_frequency_energy(x)
    assert quality.sharpness_ratio(e, e) == pytest.approx(1.0)
    blurred = (blur(x.float() / 255, 1.0) * 255).round().clamp(0, 255).to(torch.uint8)
    assert quality.sharpness_ratio(quality.high_frequency_energy(blurred), e) < 0.2


def test_high_frequency_energy_of_known_images():
    flat = torch.full((1, 3, 32, 32), 128, dtype=torch.uint8)
    assert float(quality.high_frequency_energy(flat)) == pytest.approx(0.0, abs=1e-12)
    # A pixel checkerboard of 0 / 255 lives at the Nyquist frequency: all its variance (0.25) is high-frequency.
    board = ((torch.arange(32).view(32, 1) + torch.arange(32).view(1, 32)) % 2 * 255).to(torch.uint8)
    e = quality.high_frequency_energy(board.expand(1, 3, 32, 32))
    assert float(e) == pytest.approx(0.25, rel=1e-6)
    # A slow wave (one cycle across the image; the FFT sees the image as periodic) has none but its rounding.
    wave = (128 + 100 * torch.cos(torch.arange(32) * 2 * torch.pi / 32)).view(1, 32).expand(32, 32)
    assert float(quality.high_frequency_energy(wave.round().to(torch.uint8).expand(1, 3, 32, 32))) < 1e-5


# -------------------------------------------------------------------------------------------- roles kept apart
def imported_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "layout":
            names.add(f"layout.{node.attr}")
    return names


def test_training_code_loads_the_feature_network_and_never_a_scorer():
    src = REPO / "src" / "vaelab"
    loop = imported_names(src / "train.py")
    assert not any("classifier" in n for n in loop)  # the loop takes the distance as a callable
    stage = imported_names(src / "stages" / "train.py")
    assert "layout.FEATURES" in stage
    assert not {"vaelab.classifier", "vaelab.airbench", "vaelab.resnet"} & stage
    assert not {"layout.JUDGE", "layout.AUDIT", "layout.CLASSIFIERS"} & stage
    evaluate = imported_names(src / "stages" / "evaluate.py")
    assert "layout.FEATURES" not in evaluate and "vaelab.loss.perceptual_distance" not in evaluate
