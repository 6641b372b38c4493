"""The diffusion prior over codes on known answers: its schedule, its sampler with the exact noise predictor of
Gaussian codes, and a fit that must find both modes of a mixture that one Gaussian cannot."""
from __future__ import annotations

import math

import pytest
import torch

from vaelab import diffusion
from vaelab.diffusion import DiffusionPrior
from vaelab.params import DiffusionConfig

SMALL = DiffusionConfig(hidden=64, blocks=2, timesteps=200, train_steps=1500, batch_size=256, lr=3e-3,
                        sample_steps=25)


def test_the_cosine_schedule_runs_from_signal_to_noise():
    ab = diffusion.cosine_alpha_bar(1000)
    assert ab.shape == (1000,) and float(ab[0]) > 0.999 and float(ab[-1]) < 1e-3
    assert torch.all(ab[1:] < ab[:-1])


EXACT = {"eps": lambda ab, x: (1 - ab).sqrt() * x,  # E[ε | x_t] = √(1 − ᾱ) x_t
         "v": lambda ab, x: 0 * x}  # E[v | x_t] = √ᾱ E[ε | x_t] − √(1 − ᾱ) E[x | x_t] = 0


@pytest.mark.parametrize("prediction", ["v", "eps"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_with_the_exact_predictor_of_gaussian_codes_returns_their_distribution(steps, prediction):
    """Codes ~ N(m, s²) standardise to N(0, 1), for which E[x | x_t] = √ᾱ_t x_t. With the exact predictor each
    DDIM step multiplies x by cos(θ_t − θ_prev) (ᾱ = cos² θ), so the samples are N(m, (s·∏cos)²): the
    discretisation shrinks them by a known factor that goes to 1 with the number of steps."""
    cfg = DiffusionConfig(hidden=8, blocks=1, timesteps=1000, sample_steps=steps, prediction=prediction)
    prior = DiffusionPrior(2, cfg)
    prior.mean.copy_(torch.tensor([3.0, -1.0]))
    prior.std.copy_(torch.tensor([2.0, 0.5]))
    prior.forward = lambda x, t: EXACT[prediction](prior.alpha_bar[t][:, None], x)
    z = diffusion.sample(prior, 20000, torch.Generator().manual_seed(0))
    ts = torch.linspace(999, 0, steps).round().long()
    theta = torch.acos(prior.alpha_bar.double()[ts].sqrt())
    shrink = float(torch.cos(theta[:-1] - theta[1:]).prod() * torch.cos(theta[-1]))
    assert 0.8 < shrink <= 1.0 and (steps < 50 or shrink > 0.95)
    assert z.mean(0).tolist() == pytest.approx([3.0, -1.0], abs=0.05)
    assert z.std(0).tolist() == pytest.approx([2.0 * shrink, 0.5 * shrink], rel=0.03)


def _two_modes(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    side = torch.randint(2, (n,), generator=g) * 2 - 1  # ±1
    x = torch.stack([3.0 * side, torch.zeros(n)], dim=1)
    return x + 0.3 * torch.randn(n, 2, generator=g)


@pytest.fixture
def one_thread():
    """A 64-wide MLP is fastest on one thread, and two threads fight over two cores when anything else runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_fitted_prior_draws_both_modes_of_a_mixture_and_not_the_gap_between(one_thread):
    codes = _two_modes(4000)
    prior = diffusion.fit(codes, SMALL, seed=0)
    z = diffusion.sample(prior, 4000, torch.Generator().manual_seed(2))
    right = z[:, 0] > 0
    assert 0.4 < float(right.float().mean()) < 0.6
    # One Gaussian of the same mean and variance would put ~30% of its mass within 1.5 of the origin; the data has
    # almost none there, and neither may the prior.
    assert float((z[:, 0].abs() < 1.5).float().mean()) < 0.05
    assert float(z[right, 0].mean()) == pytest.approx(3.0, abs=0.3)
    assert float(z[right, 0].std()) == pytest.approx(0.3, abs=0.25)
    assert float(z[:, 1].std()) == pytest.approx(0.3, abs=0.15)
    assert math.isfinite(diffusion.loss(prior, codes, seed=3))


def test_a_fitted_prior_keeps_the_spread_of_correlated_codes_through_the_full_schedule(one_thread):
    """Codes of 16 correlated dimensions with unequal variances, the shipped 1,000-step schedule (ᾱ_T ≈ 2e-9):
    the draws' per-dimension spread is the codes' own. An ε-predictor fails this: the estimate of the clean code
    near t = T divides its error by √ᾱ_T, and its draws come out several times too spread (docs/metrics.md)."""
    g = torch.Generator().manual_seed(7)
    mixing = torch.randn(16, 16, generator=g) * torch.logspace(-1, 0.5, 16)  # scales 0.1 to 3.2
    codes = torch.randn(6000, 16, generator=g) @ mixing.T + 2.0
    cfg = DiffusionConfig(hidden=64, blocks=2, timesteps=1000, train_steps=1000, batch_size=256, lr=3e-3,
                          sample_steps=50)
    prior = diffusion.fit(codes, cfg, seed=0)
    z = diffusion.sample(prior, 4000, torch.Generator().manual_seed(1))
    ratio = z.std(0) / codes.std(0)  # (16,)
    assert 0.8 < float(ratio.min()) and float(ratio.max()) < 1.25, ratio


def test_the_fit_and_the_samples_are_deterministic_for_a_seed():
    codes = _two_modes(500)
    cfg = DiffusionConfig(hidden=16, blocks=1, timesteps=100, train_steps=20, batch_size=64, sample_steps=5)
    a, b = diffusion.fit(codes, cfg, seed=4), diffusion.fit(codes, cfg, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    za = diffusion.sample(a, 10, torch.Generator().manual_seed(5))
    assert torch.equal(za, diffusion.sample(b, 10, torch.Generator().manual_seed(5)))
    assert not torch.equal(za, diffusion.sample(a, 10, torch.Generator().manual_seed(6)))


def test_the_fit_refuses_too_few_codes():
    with pytest.raises(ValueError, match="at least 2 codes"):
        diffusion.fit(torch.zeros(1, 3), SMALL, seed=0)
