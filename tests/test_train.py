"""The training loop: a step changes the weights, overfitting one batch lowers the loss, NaN stops it."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vaelab.model import VAE
from vaelab.params import ModelConfig, TrainConfig
from vaelab.train import NonFiniteLossError, evaluate_terms, kl_weight, lr_at, train

SMALL = ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=0)
CPU = torch.device("cpu")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def smooth_images(n: int) -> torch.Tensor:
    """Learnable images: per-image colour gradients (uint8)."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    base = torch.rand(n, 3, 1, 1, generator=g) * ramp.view(1, 1, 1, 32) + torch.rand(n, 3, 1, 1, generator=g) * 0.5
    return (base.expand(n, 3, 32, 32) * 170).round().to(torch.uint8)


@pytest.mark.parametrize("prior_flows,mlp_hidden", [(0, 0), (2, 0), (0, 12)])
def test_training_steps_change_every_trained_weight(prior_flows, mlp_hidden):
    """Encoder, decoder, the Gaussian's sigma, the dense hidden layers when there are some and (with a flow prior)
    every coupling learn within two steps (the couplings' zero-initialised last layers pass no gradient to the
    layers before them on the first step)."""
    torch.manual_seed(0)
    model = VAE(dataclasses.replace(SMALL, likelihood="gaussian", prior_flows=prior_flows, prior_hidden=8,
                                    mlp_hidden=mlp_hidden))
    assert any(n.startswith("prior.") for n, _ in model.named_parameters()) == bool(prior_flows)
    assert any(n.startswith("encoder.head.2") for n, _ in model.named_parameters()) == bool(mlp_hidden)
    before = {k: v.clone() for k, v in model.named_parameters() if v.requires_grad}
    cfg = TrainConfig(epochs=1, batch_size=8, warmup_steps=0, bf16=False)
    train(model, images(16), images(4, 1), 1.0, cfg, seed=0, device=CPU, progress=False)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(before[name], p), f"{name} did not change"


def test_overfitting_one_batch_lowers_the_loss():
    torch.manual_seed(0)
    model = VAE(SMALL)
    x = smooth_images(16)
    cfg = TrainConfig(epochs=60, batch_size=16, lr=3e-3, warmup_steps=5, bf16=False)
    history = train(model, x, x, 1.0, cfg, seed=0, device=CPU, progress=False)
    first, last = history[0]["train_loss"], history[-1]["train_loss"]
    assert last < 0.9 * first, (first, last)
    # More than a bit per dimension gained on the memorised batch (about 9 -> 7.3 bits/dim here).
    assert history[0]["test_bpd"] - history[-1]["test_bpd"] > 1.0


def test_history_rows_and_callback():
    rows, states = [], []
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=8, bf16=True)

    def on_epoch(row, state):
        rows.append(row)
        states.append((state["epoch"], state["step"], len(state["history"])))

    history = train(VAE(SMALL), images(16), images(8), 5.0, cfg, seed=0, device=CPU, on_epoch=on_epoch,
                    progress=False)
    assert rows == history and [r["epoch"] for r in history] == [1, 2]
    assert states == [(1, 2, 1), (2, 4, 2)]  # the state handed out is the one after that epoch
    for key in ("train_loss", "train_recon", "train_kl", "train_bpd", "test_loss", "test_recon", "test_kl",
                "test_bpd", "images_per_second"):
        assert key in history[0]
    r = history[-1]
    assert r["test_loss"] == pytest.approx(r["test_recon"] + 5.0 * r["test_kl"], rel=1e-5)


def test_same_seed_same_weights():
    def run():
        torch.manual_seed(0)
        m = VAE(SMALL)
        train(m, images(32), images(8), 1.0, TrainConfig(epochs=1, batch_size=8, bf16=False), seed=0, device=CPU,
              progress=False)
        return m.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_names_epoch_and_step():
    torch.manual_seed(0)
    model = VAE(SMALL)
    with torch.no_grad():
        model.decoder.out.bias.fill_(float("nan"))
    before = model.encoder.head.weight.clone()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1"):
        train(model, images(16), images(8), 1.0, TrainConfig(epochs=1, batch_size=8, bf16=False), seed=0,
              device=CPU, progress=False)
    assert torch.equal(before, model.encoder.head.weight)  # no optimizer step was taken on the NaN


def test_schedules():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, kl_warmup_epochs=2.0)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(100, 100, cfg) == pytest.approx(0.0, abs=1e-12)
    assert kl_weight(1.0, 4.0, cfg) == pytest.approx(2.0) and kl_weight(3.0, 4.0, cfg) == 4.0
    assert kl_weight(0.0, 4.0, TrainConfig()) == 4.0  # no warm-up: beta from the first step


def test_evaluate_terms_is_deterministic_in_eval_mode():
    torch.manual_seed(0)
    model = VAE(SMALL)
    a = evaluate_terms(model, images(10), 1.0, CPU, batch_size=4, bf16=False)
    assert set(a) == {"loss", "recon", "perceptual", "kl", "mmd", "bpd"}
    assert a["bpd"] > 0


def test_ema_model_ends_on_the_average_and_is_what_gets_evaluated():
    x, xt = smooth_images(32), smooth_images(8)
    cfg = TrainConfig(epochs=2, batch_size=8, warmup_steps=0, bf16=False)
    torch.manual_seed(0)
    plain = VAE(SMALL)
    plain_hist = train(plain, x, xt, 1.0, cfg, seed=0, device=CPU, progress=False)
    states = []
    torch.manual_seed(0)
    averaged = VAE(SMALL)
    hist = train(averaged, x, xt, 1.0, TrainConfig(**{**cfg.__dict__, "ema_decay": 0.9}), seed=0, device=CPU,
                 progress=False, on_epoch=lambda row, state: states.append(
                     ({k: v.clone() for k, v in state["model"].items()}, [t.clone() for t in state["ema"]])))
    # The same optimisation (the live weights follow the same path), but the model ends holding the average.
    live, ema = states[-1]
    assert all(torch.equal(live[k], v) for k, v in plain.state_dict().items())
    trained = [p for p in averaged.parameters() if p.requires_grad]
    assert all(torch.equal(p, e) for p, e in zip(trained, ema))
    assert not torch.equal(trained[0], live["encoder.net.0.weight"])
    # Train terms are the live weights' (identical), test terms the average's (different, and re-measurable).
    assert [r["train_loss"] for r in hist] == [r["train_loss"] for r in plain_hist]
    assert hist[-1]["test_loss"] != plain_hist[-1]["test_loss"]
    again = evaluate_terms(averaged, xt, 1.0, CPU, bf16=False)
    assert again["recon"] == pytest.approx(hist[-1]["test_recon"], rel=1e-3)  # one posterior sample each


def test_mmd_weight_pulls_the_codes_towards_the_prior():
    """The same short run with and without the MMD term: with it, the codes' distance to N(0, I) is smaller."""
    x = smooth_images(64)

    def final_mmd(weight):
        torch.manual_seed(0)
        model = VAE(SMALL)
        cfg = TrainConfig(epochs=15, batch_size=32, lr=3e-3, warmup_steps=2, bf16=False, mmd_weight=weight)
        return train(model, x, x, 0.05, cfg, seed=0, device=CPU, progress=False)[-1]["test_mmd"]

    without, with_mmd = final_mmd(0.0), final_mmd(3000.0)
    assert with_mmd < 0.5 * without, (without, with_mmd)
