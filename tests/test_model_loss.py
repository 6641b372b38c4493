"""Model shapes and parameter counts, the reparameterisation, and the loss terms against known answers."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaelab.loss import bits_per_dim, gaussian_nll, kl_normal, logistic_nll, vae_loss
from vaelab.codec import Codec
from vaelab.model import VAE, reparameterize
from vaelab.params import ModelConfig
from vaelab.precision import count_parameters

SMALL = ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=1)


def grid_images(b: int = 4, seed: int = 0) -> torch.Tensor:
    """Random images on the 256-level grid, scaled to [-1, 1]: (b, 3, 32, 32)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), generator=g).float() * (2 / 255) - 1


@pytest.mark.parametrize("likelihood,channels", [("logistic", 6), ("gaussian", 3)])
def test_shapes(likelihood, channels):
    model = VAE(ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=1, likelihood=likelihood))
    out = model(grid_images(5))
    assert out["mu"].shape == out["logvar"].shape == out["z"].shape == (5, 8)
    assert out["params"].shape == (5, channels, 32, 32)
    img = model.decode(torch.randn(3, 8))
    assert img.shape == (3, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    g = Codec(model)(torch.randn(2, 8))
    assert g.shape == (2, 3, 32, 32) and g.min() >= 0 and g.max() <= 1


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    ours = kl_normal(mu, logvar)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros(5), torch.ones(5)))
    torch.testing.assert_close(ours, ref)
    assert torch.all(kl_normal(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_gradients_flow_through_reparameterisation():
    mu = torch.zeros(4, 3, requires_grad=True)
    logvar = torch.zeros(4, 3, requires_grad=True)
    torch.manual_seed(0)
    z = reparameterize(mu, logvar)
    z.pow(2).sum().backward()
    assert mu.grad is not None and logvar.grad is not None
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    # And the samples really have the posterior's statistics.
    big = reparameterize(torch.full((20000, 1), 2.0), torch.full((20000, 1), math.log(0.25)))
    assert abs(big.mean().item() - 2.0) < 0.02 and abs(big.std().item() - 0.5) < 0.02


@pytest.mark.parametrize("nll", ["logistic", "gaussian"])
def test_discrete_likelihood_sums_to_one(nll):
    """Summed over all 256 levels, the per-pixel probabilities are a distribution (exact log-likelihood)."""
    levels = torch.arange(256).float() * (2 / 255) - 1  # every possible value of one pixel
    x = levels.view(256, 1, 1, 1).expand(256, 3, 32, 32)
    for mean, log_scale in [(0.1, -3.0), (-0.9, -1.5), (0.99, -4.0)]:
        if nll == "logistic":
            params = torch.cat([torch.full((256, 3, 32, 32), mean), torch.full((256, 3, 32, 32), log_scale)], 1)
            per_image = logistic_nll(x, params)
        else:
            per_image = gaussian_nll(x, torch.full((256, 3, 32, 32), mean), torch.tensor([log_scale]))
        per_pixel_logp = -per_image / 3072  # identical pixels: nll per pixel
        total = per_pixel_logp.exp().sum()
        assert abs(total.item() - 1.0) < 1e-3, (mean, log_scale, total)


def test_beta_scales_only_the_kl_term():
    torch.manual_seed(0)
    model = VAE(SMALL)
    x = grid_images()
    torch.manual_seed(1)
    out = model(x)
    t1 = vae_loss(x, out, 1.0, "logistic", model.log_sigma)
    t5 = vae_loss(x, out, 5.0, "logistic", model.log_sigma)
    assert torch.equal(t1["recon"], t5["recon"]) and torch.equal(t1["kl"], t5["kl"])
    torch.testing.assert_close(t5["loss"], t1["recon"] + 5.0 * t1["kl"])
    torch.testing.assert_close(t1["loss"], t1["recon"] + t1["kl"])
    assert t5["loss"] > t1["loss"]  # the KL is positive, so a larger beta weighs it more
    torch.testing.assert_close(t1["loss"], t1["neg_elbo"])  # beta = 1 is the true ELBO
    torch.testing.assert_close(t1["bpd"], t1["neg_elbo"] / (3072 * math.log(2)))


def test_bits_per_dim_units():
    # A uniform distribution over 256 levels costs exactly 8 bits per dimension.
    assert bits_per_dim(torch.tensor(3072 * math.log(256))).item() == pytest.approx(8.0)


def test_codec_encodes_on_the_unit_scale_and_decodes_to_it():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=8, widths=(8, 16, 32))).eval()
    codec = Codec(model)
    x01 = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        mu, _ = model.encoder(x01 * 2 - 1)
        torch.testing.assert_close(codec.encode(x01), mu)
        z = torch.randn(3, 8)
        torch.testing.assert_close(codec(z), (model.decode(z) + 1) / 2)
    assert codec.latent_dim == 8


@pytest.mark.parametrize("beta,alias", [(5.0, "beta-5"), (1, "beta-1"), (0.5, "beta-0_5"), (1e-3, "beta-0_001"),
                                        (1e6, "beta-1e06")])
def test_registry_alias_of_a_beta(beta, alias):
    import re

    from vaelab.tracking import model_alias

    assert model_alias(beta) == alias
    assert re.fullmatch(r"[\w\-]+", alias)  # MLflow's alias rule


def test_mmd_is_near_zero_for_prior_codes_and_grows_with_the_mismatch():
    from vaelab.loss import mmd_imq

    torch.manual_seed(0)
    same = torch.stack([mmd_imq(torch.randn(256, 16)) for _ in range(20)])
    assert abs(float(same.mean())) < 3 * float(same.std()) / 20 ** 0.5 + 1e-4  # unbiased: zero on average
    shifted = [float(mmd_imq(torch.randn(256, 16) + s)) for s in (0.25, 0.5, 1.0)]
    assert shifted == sorted(shifted) and shifted[0] > float(same.abs().max())
    narrow = float(mmd_imq(0.2 * torch.randn(256, 16)))  # the "holes" case: codes too concentrated
    assert narrow > float(same.abs().max())
    # Its gradient moves shifted codes back towards the prior's mean.
    z = (torch.randn(128, 16) + 1.0).requires_grad_()
    mmd_imq(z).backward()
    assert float((z.grad * z.detach()).sum()) > 0  # descending the gradient shrinks the codes


def test_mmd_weight_adds_its_term_to_the_loss_only():
    torch.manual_seed(0)
    model = VAE(ModelConfig(latent_dim=8, widths=(8, 16, 32), res_blocks=0))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    out = model(x)
    torch.manual_seed(1)
    a = vae_loss(x, out, 1.0, "logistic", model.log_sigma)
    torch.manual_seed(1)
    b = vae_loss(x, out, 1.0, "logistic", model.log_sigma, mmd_weight=100.0)
    assert torch.equal(a["mmd"], b["mmd"]) and torch.equal(a["bpd"], b["bpd"])
    torch.testing.assert_close(b["loss"], a["recon"] + a["kl"] + 100.0 * a["mmd"])


FLOW = ModelConfig(latent_dim=6, widths=(8, 16, 32), res_blocks=0, prior_flows=3, prior_hidden=16)


def _untrained_flow(seed: int = 0) -> VAE:
    """A flow-prior VAE whose couplings are not the identity (their zero-initialised last layers randomised)."""
    torch.manual_seed(seed)
    model = VAE(FLOW)
    with torch.no_grad():
        for c in model.prior.couplings:
            c.net[-1].weight.normal_(0, 0.5)
            c.net[-1].bias.normal_(0, 0.5)
    return model.eval()


def test_flow_prior_starts_as_the_standard_normal():
    torch.manual_seed(0)
    model = VAE(FLOW)
    e = torch.randn(5, 6)
    # Each coupling reverses the order of the dimensions, so three of them at the identity reverse it once.
    torch.testing.assert_close(model.codes(e), e.flip(1))
    torch.testing.assert_close(model.log_prior(e), Normal(0, 1).log_prob(e).sum(1))
    # Without a flow the prior is N(0, I) and the KL keeps its closed form (no log_pz in the output).
    assert VAE(SMALL).prior is None and "log_pz" not in VAE(SMALL)(grid_images(2))
    assert "log_pz" in model(grid_images(2))


def test_flow_prior_is_an_invertible_map_with_the_change_of_variables_density():
    """log p(f(e)) = log N(e) - log |det df/de|, with the Jacobian from autograd; f^-1(f(e)) = e."""
    model = _untrained_flow()
    e = torch.randn(4, 6, dtype=torch.float32)
    z = model.codes(e)
    assert not torch.allclose(z, e, atol=1e-2)  # the map is not the identity here
    back = z
    for c in reversed(model.prior.couplings):
        back, _ = c.inverse(back)
    torch.testing.assert_close(back, e, atol=1e-5, rtol=1e-5)
    for i in range(len(e)):
        jac = torch.autograd.functional.jacobian(lambda v: model.prior(v.unsqueeze(0))[0], e[i])  # (6, 6)
        expected = Normal(0, 1).log_prob(e[i]).sum() - torch.linalg.slogdet(jac)[1]
        assert model.log_prior(z[i : i + 1]).item() == pytest.approx(expected.item(), abs=1e-4)


def test_flow_prior_is_a_normalised_density():
    """In 2 dimensions, the flow's density integrates to 1 over a grid that holds its mass."""
    torch.manual_seed(3)
    model = VAE(ModelConfig(latent_dim=2, widths=(8, 8, 8), res_blocks=0, prior_flows=2, prior_hidden=8))
    with torch.no_grad():
        for c in model.prior.couplings:
            c.net[-1].weight.normal_(0, 0.3)
            c.net[-1].bias.normal_(0, 0.3)
    axis = torch.linspace(-12, 12, 601)
    grid = torch.cartesian_prod(axis, axis)  # (601^2, 2)
    with torch.no_grad():
        mass = model.log_prior(grid).double().exp().sum() * (axis[1] - axis[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_flow_kl_estimate_is_unbiased_for_the_closed_form():
    """With the flow at the identity (p = N(0, I)) the single-sample KL -H[q] - log p(z) averages to the closed
    form KL(q || N(0, I)); a non-identity flow gives another, still finite, KL."""
    from vaelab.loss import kl_divergence

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = VAE(FLOW)
    mu, logvar = torch.randn(1, 6).expand(20000, 6), torch.randn(1, 6).expand(20000, 6) * 0.5
    z = reparameterize(mu, logvar)
    est = kl_divergence({"mu": mu, "logvar": logvar, "z": z, "log_pz": model.log_prior(z)})
    exact = kl_normal(mu[:1], logvar[:1]).sum()
    assert float(est.mean()) == pytest.approx(float(exact), abs=0.05)
    assert float(est.std()) > 0  # a Monte Carlo estimate, not the closed form again
    other = kl_divergence({"mu": mu, "logvar": logvar, "z": z, "log_pz": _untrained_flow().log_prior(z)})
    torch.set_grad_enabled(True)
    assert torch.isfinite(other).all() and abs(float(other.mean()) - float(exact)) > 0.1


def test_codec_draws_prior_samples_through_the_flow():
    model = _untrained_flow()
    codec = Codec(model)
    e = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(codec(e), (model.decode(model.codes(e)) + 1) / 2)
        torch.testing.assert_close(codec.decode(e), (model.decode(e) + 1) / 2)
        assert not torch.allclose(codec(e), codec.decode(e))


def test_mmd_term_measures_the_flow_noise_when_the_prior_is_a_flow():
    """With a flow prior the MMD compares f^-1(z) (out["noise"]) with N(0, I): codes far from N(0, I) whose noise
    is standard normal cost nothing, and the same codes without a flow are penalised."""
    torch.manual_seed(0)
    x = grid_images(256)
    codes = torch.randn(256, 8) * 3 + 2  # nothing like N(0, I)
    out = {"mu": codes, "logvar": torch.zeros(256, 8), "z": codes, "params": x}
    plain = vae_loss(x, out, 1.0, "gaussian", torch.tensor([-2.0]), mmd_weight=1.0)["mmd"]
    flow = vae_loss(x, {**out, "noise": torch.randn(256, 8), "log_pz": torch.zeros(256)}, 1.0, "gaussian",
                    torch.tensor([-2.0]), mmd_weight=1.0)["mmd"]
    assert float(plain) > 0.1 and abs(float(flow)) < 0.02, (plain, flow)
    # The model fills out["noise"] with f^-1(z): mapping it back through the flow gives the codes.
    model = _untrained_flow()
    with torch.no_grad():
        o = model(grid_images(3))
        torch.testing.assert_close(model.codes(o["noise"]), o["z"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(o["log_pz"], model.log_prior(o["z"]))


def conv(c_in: int, c_out: int, k: int) -> int:
    """Weights and biases of a k x k (transposed) convolution."""
    return c_in * c_out * k * k + c_out


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def expected_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of the VAE that `cfg` describes, counted layer by layer from the architecture: encoder
    4x4 stride-2 convs 3 -> w0 -> w1 -> w2 and a linear head 16·w2 -> 2z; decoder linear z -> 16·w2, two x2
    upsamplings and an output one to 3 or 6 channels (4x4 transposed, or nearest then 3x3); two 3x3 convs per
    residual block; one or three learned log-sigmas (none when fixed); three linear layers per flow coupling; with
    mlp_hidden > 0 each of the two linear maps to and from z gains a hidden layer of that width."""
    w0, w1, w2 = cfg.widths
    d0, d1, d2 = cfg.decoder_widths or cfg.widths
    z, blocks = cfg.latent_dim, cfg.res_blocks + cfg.decoder_res_blocks
    up = 4 if cfg.upsample == "transposed" else 3
    out_ch = 6 if cfg.likelihood == "logistic" or cfg.sigma == "pixel" else 3
    m = cfg.mlp_hidden

    def dense(n_in: int, n_out: int) -> int:
        return linear(n_in, m) + linear(m, n_out) if m else linear(n_in, n_out)

    encoder = (conv(3, w0, 4) + conv(w0, w1, 4) + conv(w1, w2, 4) + dense(16 * w2, 2 * z)
               + cfg.res_blocks * 2 * (conv(w0, w0, 3) + conv(w1, w1, 3) + conv(w2, w2, 3)))
    decoder = (dense(z, 16 * d2) + conv(d2, d1, up) + conv(d1, d0, up) + conv(d0, out_ch, up)
               + blocks * 2 * (conv(d0, d0, 3) + conv(d1, d1, 3) + conv(d2, d2, 3)))
    sigma = {"global": 1, "channel": 3, "pixel": 0, "fixed": 0}[cfg.sigma] if cfg.likelihood == "gaussian" else 0
    h, half = cfg.prior_hidden, z // 2
    flow = cfg.prior_flows * (linear(half, h) + linear(h, h) + linear(h, 2 * (z - half)))
    return encoder + decoder + sigma + flow


@pytest.mark.parametrize("cfg", [
    ModelConfig(),
    ModelConfig(latent_dim=128, likelihood="gaussian", res_blocks=0),  # the plain VAE of the `baseline` preset
    ModelConfig(latent_dim=7, widths=(8, 16, 32), res_blocks=2, likelihood="gaussian", sigma="channel"),
    ModelConfig(latent_dim=9, widths=(8, 16, 32), res_blocks=0, likelihood="gaussian", sigma="pixel",
                upsample="nearest", decoder_res_blocks=1, decoder_widths=(12, 20, 24)),
    ModelConfig(latent_dim=5, widths=(4, 8, 16), prior_flows=3, prior_hidden=10),
    ModelConfig(latent_dim=10, widths=(8, 8, 16), res_blocks=0, likelihood="gaussian", sigma="fixed", mlp_hidden=24),
], ids=["default", "baseline", "channel-sigma", "decoder-options", "flow", "dense-hidden"])
def test_parameter_count_follows_the_architecture(cfg):
    assert count_parameters(VAE(cfg)) == expected_parameters(cfg)


@pytest.mark.parametrize("likelihood", ["logistic", "gaussian"])
def test_one_more_latent_dimension_adds_only_the_weights_that_touch_z(likelihood):
    """z -> z + 1 adds two outputs to the encoder's head (16·w2 weights and a bias each) and one input to the
    decoder's first layer (16·w2 weights): 48·w2 + 2 parameters, whatever the rest of the model."""
    for widths in ((64, 128, 256), (8, 16, 32)):
        cfg = ModelConfig(latent_dim=16, widths=widths, likelihood=likelihood)
        grown = dataclasses.replace(cfg, latent_dim=17)
        assert count_parameters(VAE(grown)) - count_parameters(VAE(cfg)) == 48 * widths[2] + 2
