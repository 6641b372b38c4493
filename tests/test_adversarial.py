"""The patch adversarial fine-tune: the hinge loss and the adaptive weight on known answers, the discriminator's
augmentation, and a few real steps of the fine-tune (the decoder moves, the encoder does not, lambda stays finite,
a stopped and resumed run ends bit-identical)."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from vaelab.adversarial import PatchDiscriminator, adaptive_weight, finetune, hinge_d_loss, translate
from vaelab.model import VAE
from vaelab.params import AdversarialConfig, ModelConfig, ParamsError

TINY = ModelConfig(latent_dim=6, widths=(8, 16, 32), res_blocks=0, likelihood="gaussian", sigma="global")
CFG = AdversarialConfig(disc_widths=(8, 16, 16), steps=6, batch_size=8, disc_start=2, lr=1e-3, disc_lr=1e-3)


def images(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def networks() -> tuple[VAE, PatchDiscriminator]:
    torch.manual_seed(0)
    return VAE(TINY), PatchDiscriminator(CFG.disc_widths)


def test_the_hinge_loss_on_known_logits():
    sure = hinge_d_loss(torch.full((4, 1, 8, 8), 2.0), torch.full((4, 1, 8, 8), -3.0))
    assert float(sure) == 0.0  # beyond the margins on both sides
    assert float(hinge_d_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))) == pytest.approx(1.0)
    assert float(hinge_d_loss(torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), 0.5))) == pytest.approx(1.0)


def test_the_adaptive_weight_is_the_ratio_of_gradient_norms_and_stays_finite():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (torch.tensor([3.0, 4.0]) * w).sum()  # gradient (3, 4): norm 5
    g = (torch.tensor([0.6, 0.8]) * w).sum()  # gradient norm 1
    assert float(adaptive_weight(rec, g, w, 1e4)) == pytest.approx(5.0 / (1.0 + 1e-4))
    flat = (0.0 * w).sum()  # L_G's gradient vanished: lambda would be 5e4, the clamp holds it
    assert float(adaptive_weight(rec, flat, w, 1e4)) == 1e4
    assert not adaptive_weight(rec, g, w, 1e4).requires_grad


def test_the_discriminator_scores_patches_and_translation_shifts_with_zero_fill():
    _, disc = networks()
    assert disc(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 8, 8)
    x = torch.ones(3, 3, 32, 32)
    assert torch.equal(translate(x, 0, torch.Generator()), x)
    shifted = translate(x, 2, torch.Generator().manual_seed(1))
    assert shifted.shape == x.shape and 0 < float(shifted.mean()) <= 1
    # A shift by (dx, dy) leaves exactly |dx| columns and |dy| rows empty.
    zero_cols = [(s.sum((0, 1)) == 0).sum().item() for s in shifted]
    assert all(0 <= c <= 2 for c in zero_cols)


def test_a_finetune_moves_the_decoder_only_and_lambda_stays_finite():
    model, disc = networks()
    encoder_before = copy.deepcopy(model.encoder.state_dict())
    decoder_before = copy.deepcopy(model.decoder.state_dict())
    disc_before = copy.deepcopy(disc.state_dict())
    state = finetune(model, disc, images(), CFG, seed=0, device=torch.device("cpu"))
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder_before.items())
    assert any(not torch.equal(v, disc.state_dict()[k]) for k, v in disc_before.items())
    rows = state["rows"]
    assert [r["step"] for r in rows] == list(range(1, 7)) and state["step"] == 6
    assert all(math.isfinite(r[k]) for r in rows for k in r)
    # The adversarial term reaches the decoder only after the warm-up; then lambda is positive and clamped.
    assert [r["lambda"] == 0 for r in rows] == [True, True, False, False, False, False]
    assert all(0 < r["lambda"] <= CFG.lambda_max for r in rows[2:])


def test_a_stopped_and_resumed_finetune_ends_bit_identical():
    model, disc = networks()
    start = (copy.deepcopy(model), copy.deepcopy(disc))
    straight = finetune(model, disc, images(), CFG, seed=3, device=torch.device("cpu"))
    model_b, disc_b = copy.deepcopy(start[0]), copy.deepcopy(start[1])
    stopped = finetune(model_b, disc_b, images(), CFG, seed=3, device=torch.device("cpu"), until=3)
    assert stopped["step"] == 3
    model_c, disc_c = copy.deepcopy(start[0]), copy.deepcopy(start[1])  # a new process: fresh networks
    resumed = finetune(model_c, disc_c, images(), CFG, seed=3, device=torch.device("cpu"),
                       resume=copy.deepcopy(stopped))
    for key in ("decoder", "disc"):
        assert all(torch.equal(v, resumed[key][k]) for k, v in straight[key].items()), key
    assert resumed["rows"] == straight["rows"]


def test_adversarial_settings_are_checked_by_name():
    with pytest.raises(ParamsError, match="decoder.disc_start"):
        dataclasses.replace(CFG, disc_start=6)
    with pytest.raises(ParamsError, match="decoder.disc_widths"):
        dataclasses.replace(CFG, disc_widths=(8, 16))
