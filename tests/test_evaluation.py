"""Evaluation metrics (FCD, KID, total correlation, active units, linear probe, class entropy, the
importance-weighted bound, the judge's sample quality, bootstrap intervals) and the factor transforms, their
concentration and readability scores, on inputs whose answer is known."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vaelab.data import to_unit
from vaelab.factors import (Factor, affine, brightness, factor_codes, factor_metrics, factor_score, factor_transforms,
                            hflip, hue_rotation, logistic_r2, ridge_r2, saturation, shares, shift, squared_changes)
from vaelab.intervals import bootstrap, direction, mean_interval
from vaelab.loss import recon_nll
from vaelab.metrics import iw_log_likelihood, likelihood_metrics, linear_probe, per_image
from vaelab.organisation import (active_units, aggregate_covariance, gaussian_total_correlation,
                                 organisation_metrics, sampled_total_correlation, threshold_key)
from vaelab import quality
from vaelab.quality import class_entropy, frechet_distance, kernel_distance, sample_quality
from vaelab.model import VAE
from vaelab.params import EvaluateConfig, ModelConfig

CPU = torch.device("cpu")
TINY = ModelConfig(latent_dim=4, widths=(8, 8, 8), res_blocks=0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, seed: int, low: int = 0, high: int = 256) -> torch.Tensor:
    """Uniform random uint8 images (n, 3, 32, 32) with values in [low, high)."""
    return torch.randint(low, high, (n, 3, 32, 32), generator=gen(seed), dtype=torch.uint8)


def gradient_images(n: int, seed: int) -> torch.Tensor:
    """uint8 images (n, 3, 32, 32) with a left-right intensity ramp of random slope and sign plus noise, all
    values in [40, 216], so brightness steps of +-0.1 (25.5 levels) never clip."""
    g = gen(seed)
    slope = torch.empty(n, 1, 1, 1, dtype=torch.float64).uniform_(-60, 60, generator=g)
    ramp = (torch.arange(32, dtype=torch.float64) - 15.5) / 15.5  # (32,) in [-1, 1]
    noise = torch.empty(n, 3, 32, 32, dtype=torch.float64).uniform_(-20, 20, generator=g)
    return (128 + slope * ramp + noise).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- Fréchet distance (FCD)


def test_frechet_distance_identical_sets_is_zero():
    a = torch.randn(2000, 16, generator=gen(0))
    assert abs(frechet_distance(a, a)) < 1e-6


def test_frechet_distance_of_shifted_set_is_squared_shift():
    a = torch.randn(2000, 16, generator=gen(0), dtype=torch.float64)
    s = torch.linspace(-1.0, 2.0, 16, dtype=torch.float64)
    # Same covariance, means differ by s: only |s|^2 is left.
    assert frechet_distance(a, a + s) == pytest.approx(float(s.pow(2).sum()), rel=1e-6)
    assert frechet_distance(a + s, a) == pytest.approx(float(s.pow(2).sum()), rel=1e-6)


def test_frechet_distance_covariance_terms():
    a = torch.randn(3000, 8, generator=gen(1), dtype=torch.float64) + 0.3
    # b = 2a: C_b = 4 C_a and (C_a C_b)^(1/2) = 2 C_a, so FD = |mu_a|^2 + Tr(C_a) exactly.
    expected = float(a.mean(0).pow(2).sum() + torch.trace(torch.cov(a.T)))
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)
    # Non-commuting covariances: Tr (C_a C_b)^(1/2) = sum of sqrt(eigenvalues of C_a C_b) (real, >= 0).
    mix = torch.randn(8, 8, generator=gen(2), dtype=torch.float64)
    b = torch.randn(3000, 8, generator=gen(3), dtype=torch.float64) @ mix
    c_a, c_b = torch.cov(a.T), torch.cov(b.T)
    cross = torch.linalg.eigvals(c_a @ c_b).real.clamp_min(0).sqrt().sum()
    ref = float((a.mean(0) - b.mean(0)).pow(2).sum() + torch.trace(c_a) + torch.trace(c_b) - 2 * cross)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_same_gaussian_small_vs_shifted():
    a = torch.randn(2000, 16, generator=gen(0))
    b = torch.randn(2000, 16, generator=gen(1))
    same, shifted = frechet_distance(a, b), frechet_distance(a, b + 0.5)  # |shift|^2 = 16 * 0.25 = 4
    assert 0 <= same < 0.2
    assert same < 0.05 * shifted
    # Only the mean term changes: |d - s|^2 - |d|^2 = |s|^2 - 2 s.d with d = mu_a - mu_b.
    d = a.double().mean(0) - b.double().mean(0)
    assert shifted - same == pytest.approx(4.0 - 2 * 0.5 * float(d.sum()), rel=1e-6)


# ---------------------------------------------------------------- Kernel distance (KID)


def test_kernel_distance_matches_unbiased_mmd_by_hand():
    a = torch.randn(6, 3, generator=gen(0), dtype=torch.float64)
    b = torch.randn(6, 3, generator=gen(1), dtype=torch.float64) + 1.0
    m, f = 6, 3

    def k(x, y):
        return (float(x @ y) / f + 1) ** 3

    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    # Subsets as large as the sets: every subset is a permutation of the whole set, so the spread is zero.
    kid, kid_std = kernel_distance(a, b, subsets=5, subset_size=100)
    assert kid == pytest.approx(xx + yy - 2 * xy, rel=1e-6)  # the mean is taken in float32
    assert kid_std == pytest.approx(0.0, abs=1e-6)
    # One subset: no spread to measure.
    assert kernel_distance(a, b, subsets=1, subset_size=4)[1] == 0.0


def test_kernel_distance_same_distribution_near_zero_shifted_positive():
    a = torch.randn(2000, 16, generator=gen(0))
    b = torch.randn(2000, 16, generator=gen(1))
    kid, kid_std = kernel_distance(a, b, subsets=20, subset_size=200)
    kid_shift, kid_shift_std = kernel_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert kid_std >= 0 and kid_shift_std >= 0
    assert abs(kid) < 3 * kid_std
    assert kid_shift > 0.3 and kid_shift > 10 * kid_shift_std
    assert abs(kid) < 0.05 * kid_shift


# ---------------------------------------------------------------- Total correlation


def test_sampled_total_correlation_independent_codes_near_zero():
    n, d = 2000, 4
    mu = torch.randn(n, d, generator=gen(0)) * math.sqrt(0.5)
    logvar = torch.full((n, d), math.log(0.5))
    tc, self_weight = sampled_total_correlation(mu, logvar, batch_size=n)
    # What is left is the finite-N dependence of the N-component aggregate posterior (~0.04 nats, ~1/N).
    assert abs(tc) < 0.05
    assert self_weight < 0.05  # wide posteriors overlap: every code's density is carried by many others


def test_sampled_total_correlation_correlated_codes_matches_gaussian_answer():
    n, d = 2000, 4
    shared = torch.randn(n, 1, generator=gen(0))
    mu = shared + 0.1 * torch.randn(n, d, generator=gen(1))
    logvar = torch.full((n, d), math.log(0.01))
    # z_j = f + noise of variance 0.01 + 0.01: a Gaussian with correlation rho = 1 / 1.02 between any
    # two dimensions, TC = -1/2 log det R, det R = (1 - rho)^(d-1) (1 + (d-1) rho).
    rho = 1 / 1.02
    expected = -0.5 * math.log((1 - rho) ** (d - 1) * (1 + (d - 1) * rho))  # ~5.21 nats
    tc, _ = sampled_total_correlation(mu, logvar, batch_size=n)
    assert tc == pytest.approx(expected, abs=0.25)
    # Smaller minibatches (and a partial last one dropped) still run and give a finite, similar estimate.
    tc_small, _ = sampled_total_correlation(mu, logvar, batch_size=300, chunk=50)
    assert math.isfinite(tc_small) and tc_small == pytest.approx(expected, abs=0.5)
    # The Gaussian estimate of the aggregate posterior gives the same closed form.
    assert gaussian_total_correlation(aggregate_covariance(mu, logvar)) == pytest.approx(expected, abs=0.15)


def test_sampled_total_correlation_saturates_with_narrow_posteriors_and_says_so():
    """Independent dimensions, but posteriors far narrower than the spacing of the codes: the sampled estimate
    follows the rate (it sees each code's own posterior alone) while the true TC is 0; the self-weight flags it,
    and the Gaussian estimate stays at 0."""
    n, d = 1000, 8
    mu = torch.randn(n, d, generator=gen(0))
    logvar = torch.full((n, d), math.log(1e-6))
    tc, self_weight = sampled_total_correlation(mu, logvar, batch_size=n)
    assert tc > 10 and self_weight > 0.99
    assert abs(gaussian_total_correlation(aggregate_covariance(mu, logvar))) < 0.05


def test_gaussian_total_correlation_known_answers():
    assert gaussian_total_correlation(torch.diag(torch.tensor([1.0, 4.0, 0.01], dtype=torch.float64))) == \
        pytest.approx(0.0, abs=1e-12)
    # Two dimensions with correlation r: TC = mutual information = -1/2 log(1 - r^2); the scales do not matter.
    for r in (0.3, 0.9):
        cov = torch.tensor([[4.0, r * 2 * 0.5], [r * 2 * 0.5, 0.25]], dtype=torch.float64)
        assert gaussian_total_correlation(cov) == pytest.approx(-0.5 * math.log(1 - r * r), rel=1e-9)
    # Codes: independent -> ~0 (finite-N bias ~ D(D-1)/4N), known correlation -> its closed form.
    z = torch.randn(20000, 6, generator=gen(1))
    assert abs(gaussian_total_correlation(aggregate_covariance(z, torch.full_like(z, -20.0)))) < 0.01
    mixed = torch.cat([z[:, :1], 0.6 * z[:, :1] + 0.8 * z[:, 1:2]], 1)  # correlation 0.6
    tc = gaussian_total_correlation(aggregate_covariance(mixed, torch.full_like(mixed, -20.0)))
    assert tc == pytest.approx(-0.5 * math.log(1 - 0.36), abs=0.01)


def test_aggregate_covariance_adds_the_mean_posterior_variance():
    mu = torch.randn(5000, 3, generator=gen(2))
    logvar = torch.log(torch.tensor([0.5, 1.0, 2.0])).expand(5000, 3)
    cov = aggregate_covariance(mu, logvar)
    torch.testing.assert_close(cov - torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)),
                               torch.cov(mu.double().T, correction=0))
    # Extra posterior noise dilutes a correlation between the means.
    shared = torch.randn(5000, 1, generator=gen(3))
    both = shared.repeat(1, 2)
    assert gaussian_total_correlation(aggregate_covariance(both + 1e-3 * torch.randn(5000, 2, generator=gen(4)),
                                                           torch.full((5000, 2), math.log(1.0)))) == \
        pytest.approx(-0.5 * math.log(1 - 0.25), abs=0.02)  # r = 1 / (1 + 1)


def test_organisation_metrics_carry_intervals_that_cover_the_estimate():
    mu = torch.randn(2000, 4, generator=gen(5))
    mu[:, 3] *= 0.2  # variance 0.04: active at 0.01, not at 0.1
    out = organisation_metrics(mu, torch.full_like(mu, -2.0), (0.01, 0.1), reps=50, seed=0)
    assert out[threshold_key(0.01)] == 4 and out[threshold_key(0.1)] == 3
    for key in ("total_correlation", "active_units_0p01", "active_units_0p1"):
        assert out[f"{key}_lo"] <= out[key] <= out[f"{key}_hi"], key
    assert threshold_key(0.5) == "active_units_0p5" and threshold_key(1e-3) == "active_units_0p001"


# ---------------------------------------------------------------- Active units


def test_active_units_planted_constant_and_threshold():
    mu = torch.randn(1000, 5, generator=gen(0))
    mu[:, 2] = -1.3  # constant: carries no information
    assert active_units(mu) == 4
    mu[:, 0] *= 0.2  # variance ~0.04: active at 0.01, inactive at 0.1
    assert active_units(mu, threshold=0.01) == 4
    assert active_units(mu, threshold=0.1) == 3
    assert active_units(torch.zeros(10, 3)) == 0


# ---------------------------------------------------------------- Linear probe


def test_linear_probe_separable_and_chance():
    d, n_classes = 16, 10
    means = 6.0 * torch.randn(n_classes, d, generator=gen(0))
    y_tr = torch.arange(1000) % n_classes
    y_te = torch.arange(500) % n_classes
    x_tr = means[y_tr] + torch.randn(1000, d, generator=gen(1))
    x_te = means[y_te] + torch.randn(500, d, generator=gen(2))
    correct = linear_probe(x_tr, y_tr, x_te, y_te, steps=100)
    assert correct.shape == (len(y_te),) and set(correct.unique().tolist()) <= {0.0, 1.0}
    assert float(correct.mean()) > 0.95
    # The test features are standardised with the train statistics: a test set of one class still works.
    one = y_te == 3
    assert float(linear_probe(x_tr, y_tr, x_te[one], y_te[one], steps=100).mean()) > 0.95
    # Features independent of the labels: chance (0.1) on held-out data.
    noise_tr = torch.randn(1000, d, generator=gen(3))
    noise_te = torch.randn(500, d, generator=gen(4))
    assert float(linear_probe(noise_tr, y_tr, noise_te, y_te, steps=100).mean()) < 0.3


# ---------------------------------------------------------------- Class entropy and the judge's summary


def test_class_entropy_uniform_and_single_class():
    logits = torch.randn(1000, 10, generator=gen(0))
    labels = torch.arange(1000) % 10
    logits[torch.arange(1000), labels] += 20  # argmax = label, 100 of each class
    probs = logits.softmax(1)
    assert class_entropy(probs) == pytest.approx(math.log2(10), abs=1e-9)
    one = torch.zeros(50, 10)
    one[:, 3] = 1.0
    assert class_entropy(one) == 0.0
    half = torch.zeros(40, 10)
    half[:20, 1] = half[20:, 7] = 1.0
    assert class_entropy(half) == pytest.approx(1.0)


def colour_stats(images_u8: torch.Tensor) -> torch.Tensor:
    """Features of known meaning for the copy check: each channel's mean and standard deviation (N, 6)."""
    f = images_u8.double() / 255
    return torch.cat([f.mean((2, 3)), f.std((2, 3))], 1)


def test_the_copy_check_flags_copies_and_passes_images_unlike_their_neighbours():
    """Samples that are training images have themselves as nearest neighbours: copy_fcd is 0, below two halves of
    the training set, and they are flagged. Flat grey images are nothing like their nearest training images (the
    ramps): copy_fcd lies far above the halves' and they pass."""
    train = gradient_images(600, seed=4)
    copies = quality.copy_check(train[:200], train, colour_stats, 200, reps=30, seed=0)
    assert copies["copy_fcd"] == pytest.approx(0.0, abs=1e-9) and copies["halves_fcd"] > 0
    assert copies["samples_not_copies"] is False and copies["copy_images"] == 200
    grey = torch.full((200, 3, 32, 32), 128, dtype=torch.uint8) + torch.randint(0, 3, (200, 1, 1, 1),
                                                                                 generator=gen(5)).to(torch.uint8)
    unlike = quality.copy_check(grey, train, colour_stats, 200, reps=30, seed=0)
    assert unlike["samples_not_copies"] is True
    assert unlike["copy_fcd_lo"] <= unlike["copy_fcd"] <= unlike["copy_fcd_hi"]
    with pytest.raises(ValueError, match="two halves of 400 images need 800 training images, got 600"):
        quality.copy_check(gradient_images(400, seed=6), train, colour_stats, 400, reps=5, seed=0)


def test_sample_quality_keys_and_values():
    feats = torch.randn(300, 8, generator=gen(0))
    ref = torch.randn(400, 8, generator=gen(1)) + 0.2
    probs = torch.softmax(3 * torch.randn(300, 10, generator=gen(2)), 1)
    q = sample_quality(feats, probs, ref, kid_subsets=5, kid_subset_size=100, seed=3)
    assert set(q) == {"fcd", "kid", "kid_std", "judge_confidence", "class_entropy"}
    assert q["judge_confidence"] == pytest.approx(float(probs.max(1).values.mean()))
    assert 0.1 < q["judge_confidence"] < 1
    assert q["fcd"] == pytest.approx(frechet_distance(feats, ref))
    kid, kid_std = kernel_distance(feats, ref, 5, 100, 3)
    assert (q["kid"], q["kid_std"]) == pytest.approx((kid, kid_std))
    assert q["class_entropy"] == pytest.approx(class_entropy(probs))
    with_ci = sample_quality(feats, probs, ref, kid_subsets=5, kid_subset_size=100, seed=3, reps=50)
    for key in ("fcd", "judge_confidence", "class_entropy"):
        assert with_ci[f"{key}_lo"] < with_ci[key] < with_ci[f"{key}_hi"], key


# ---------------------------------------------------------------- Bootstrap intervals and their wording


def test_bootstrap_interval_of_a_mean_has_the_textbook_width():
    x = torch.randn(4000, generator=gen(0), dtype=torch.float64)
    mean, (lo, hi) = mean_interval(x, reps=400, seed=1)
    assert mean == pytest.approx(float(x.mean()))
    assert lo < mean < hi
    assert hi - lo == pytest.approx(2 * 1.96 / math.sqrt(4000), rel=0.15)


def test_bootstrap_removes_the_bias_of_a_plug_in_statistic():
    """FCD of two samples of the same distribution is biased upwards by the finite sample, and a resample with
    duplicates more so; the interval is centred on the full-data estimate, as wide as the bootstrap's spread."""
    a = torch.randn(2000, 16, generator=gen(1))
    b = torch.randn(2000, 16, generator=gen(2))
    fcd = frechet_distance(a, b)
    lo, hi = bootstrap(lambda i, j: frechet_distance(a[i], b[j]), [len(a), len(b)], reps=100, seed=0)
    assert lo < fcd < hi


def test_direction_only_where_intervals_separate():
    a = {"m": 10.0, "m_lo": 9.0, "m_hi": 11.0}
    assert direction(a, {"m": 12.5, "m_lo": 11.5, "m_hi": 13.5}, "m") == "higher"
    assert direction(a, {"m": 7.0, "m_lo": 6.0, "m_hi": 8.0}, "m") == "lower"
    assert direction(a, {"m": 11.5, "m_lo": 10.5, "m_hi": 12.5}, "m") == "no measurable difference"
    # Separated intervals, but within twice the measured seed-to-seed spread: no direction either.
    assert direction(a, {"m": 12.5, "m_lo": 11.5, "m_hi": 13.5}, "m", spread=1.5) == "no measurable difference"
    assert direction(a, {"m": 12.5, "m_lo": 11.5, "m_hi": 13.5}, "m", spread=1.0) == "higher"


# ---------------------------------------------------------------- Importance-weighted bound


@pytest.mark.parametrize("prior_flows", [0, 2])
def test_iw_log_likelihood_shape_and_elbo_on_untrained_model(prior_flows):
    torch.manual_seed(0)
    model = VAE(dataclasses.replace(TINY, prior_flows=prior_flows, prior_hidden=8))
    x = random_images(16, seed=1)
    iw1 = iw_log_likelihood(model, x, CPU, k=1, batch_size=8, bf16=False)
    iw32 = iw_log_likelihood(model, x, CPU, k=32, batch_size=64, bf16=False)
    assert iw1.shape == iw32.shape == (16,)
    assert torch.isfinite(iw1).all() and torch.isfinite(iw32).all()
    assert float(iw32.mean()) >= float(iw1.mean()) - 0.5
    # Each image's bound is scored against its own pixels: images differ by tens of nats, while the k = 1 and
    # k = 32 values of one image differ by Monte Carlo noise only (the posterior is close to the prior).
    assert float(iw1.std()) > 10
    assert float((iw32 - iw1).abs().max()) < 3
    # k = 1 is a one-sample ELBO: its mean agrees with evaluate's negative ELBO (nats per image).
    metrics = likelihood_metrics(per_image(model, x, CPU, batch_size=8, bf16=False), reps=10, seed=0)
    assert -float(iw1.double().mean()) == pytest.approx(metrics["test_neg_elbo_nats"], abs=1.0)


def test_iw_log_likelihood_approaches_log_px_from_below():
    """A decoder whose output ignores z has log p(x) = log p(x|z) exactly. With the posterior N(0.5, 1.5) in each
    of 4 dimensions the ELBO is log p(x) - KL, KL = 4 * (0.25 + 1.5 - 1 - log 1.5) / 2 = 0.689 nats, and the
    bound tends to log p(x) from below as k grows (bias ~ Var(w) / 2k, Var(w) = 1.09 for w = p(z) / q(z))."""
    torch.manual_seed(0)
    model = VAE(TINY)
    with torch.no_grad():
        model.encoder.head.weight.zero_()
        model.encoder.head.bias.copy_(torch.tensor([0.5] * 4 + [math.log(1.5)] * 4))  # mu, logvar
        # Constant decoder output: mean = grey 128 on the [-1, 1] scale, the smallest log-scale (-7). On grey
        # images log p(x) is then ~ -84 nats, small enough that float32 rounding does not hide the 0.7 nats.
        model.decoder.out.weight.zero_()
        model.decoder.out.bias.copy_(torch.tensor([128 / 127.5 - 1] * 3 + [-7.0] * 3))
    x = torch.full((16, 3, 32, 32), 128, dtype=torch.uint8)
    with torch.no_grad():
        log_px = float(-recon_nll(to_unit(x[:1]), model.decoder(torch.zeros(1, 4)), "logistic", model.log_sigma))
    assert -200 < log_px < -10
    kl = 4 * 0.5 * (0.25 + 1.5 - 1 - math.log(1.5))
    elbo = iw_log_likelihood(model, x.repeat(128, 1, 1, 1), CPU, k=1, bf16=False) - log_px  # 2048 samples
    iw32 = iw_log_likelihood(model, x, CPU, k=32, bf16=False) - log_px
    iw512 = iw_log_likelihood(model, x, CPU, k=512, bf16=False) - log_px
    assert float(elbo.mean()) == pytest.approx(-kl, abs=0.12)  # Monte Carlo spread of the mean ~0.03
    assert float(iw32.mean()) > float(elbo.mean()) + 0.4
    assert float(iw512.mean()) == pytest.approx(0.0, abs=0.05)  # spread ~0.012, bias ~-0.001
    assert float(iw512.mean()) < 0.04


# ---------------------------------------------------------------- Factor transforms


def test_hue_rotation_identity_and_channel_cycle():
    x = random_images(4, seed=0)
    assert torch.equal(hue_rotation(x, 0), x)
    # 120 degrees about (1, 1, 1) maps the R axis to G, G to B and B to R: new G = old R, etc.
    for deg, order in ((120, [2, 0, 1]), (240, [1, 2, 0]), (-120, [1, 2, 0])):
        diff = hue_rotation(x, deg).int() - x[:, order].int()
        assert diff.abs().max() <= 1, deg
    assert (hue_rotation(x, 360).int() - x.int()).abs().max() <= 1


def test_hue_rotation_keeps_mean_intensity():
    x = random_images(4, seed=1, low=90, high=160)  # small rotations stay in gamut: no clipping
    y = hue_rotation(x, 30)
    assert not torch.equal(y, x)
    assert (y.float().mean(1) - x.float().mean(1)).abs().max() <= 1.0  # rounding of three channels


def test_shift_and_hflip():
    x = random_images(3, seed=2)
    assert torch.equal(shift(x, 2)[..., 2:], x[..., :-2])
    assert torch.equal(shift(x, -2)[..., :-2], x[..., 2:])
    assert torch.equal(shift(x, 2)[..., :2], x[..., [2, 1]])  # reflection fill (edge pixel not repeated)
    assert torch.equal(shift(x, 0), x)
    assert shift(x, 3).dtype == torch.uint8 and shift(x, 3).shape == x.shape
    assert torch.equal(hflip(x)[..., 0], x[..., -1])
    assert torch.equal(hflip(hflip(x)), x)


def test_brightness_adds_and_clips():
    x = torch.arange(256, dtype=torch.uint8).repeat(3, 4).reshape(1, 3, 32, 32)  # every value, 4 times a channel
    y = brightness(x, 0.1).int()
    xi = x.int()
    low = xi < 229
    assert ((y - xi)[low] - 25.5).abs().max() <= 0.5  # +25.5, rounded
    assert (y[xi >= 230] == 255).all()
    assert torch.equal(brightness(x, -0.1).int()[xi <= 25], torch.zeros_like(xi[xi <= 25]))
    assert brightness(x, 0.1).dtype == torch.uint8


def test_saturation_keeps_grey_and_scales_colour():
    x = random_images(4, seed=4, low=100, high=156)  # in gamut for factors up to 2
    assert torch.equal(saturation(x, 1.0), x)
    grey = saturation(x, 0.0).int()
    assert (grey.max(1).values - grey.min(1).values).max() == 0  # every pixel grey
    y = saturation(x, 2.0).float()
    assert (y.mean(1) - x.float().mean(1)).abs().max() <= 1.0  # each pixel's grey level kept
    dev = lambda v: (v.float() - v.float().mean(1, keepdim=True)).abs().mean()  # noqa: E731
    assert float(dev(y)) == pytest.approx(2 * float(dev(x)), rel=0.02)


def test_vertical_shift_moves_rows():
    x = random_images(2, seed=5)
    assert torch.equal(shift(x, 2, axis=2)[:, :, 2:], x[:, :, :-2])
    assert torch.equal(shift(x, -3, axis=2)[:, :, :-3], x[:, :, 3:])


def test_rotation_and_scale_known_answers():
    x = random_images(3, seed=6)
    assert (affine(x).int() - x.int()).abs().max() <= 1  # identity, up to rounding
    # A quarter turn of the pixel grid is exact (pixel centres map onto pixel centres), counter-clockwise.
    assert (affine(x, degrees=90).int() - torch.rot90(x, 1, (2, 3)).int()).abs().max() <= 1
    # Zoom: a centred bright square of side 8 grows to side ~16 at scale 2 and shrinks to ~4 at 0.5 (counted in
    # the central 16 x 16 pixels: zooming out also shows reflected copies beyond them).
    sq = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    sq[..., 12:20, 12:20] = 255
    area = lambda v: float((v[0, 0, 8:24, 8:24].float() > 127).sum())  # noqa: E731
    assert area(affine(sq, scale=2.0)) == pytest.approx(256, rel=0.15)
    assert area(affine(sq, scale=0.5)) == pytest.approx(16, rel=0.3)


def test_factor_transforms_levels_from_config():
    x = random_images(2, seed=3)
    default = factor_transforms(EvaluateConfig())
    assert list(default) == ["brightness", "hue", "saturation", "flip", "shift", "vshift", "rotation", "scale"]
    assert [len(default[k].levels) for k in default] == [4, 4, 4, 1, 4, 4, 4, 4]
    assert (default["scale"].identity, default["saturation"].identity, default["rotation"].identity) == (1, 1, 0)
    cfg = EvaluateConfig(brightness_levels=(0.15, -0.05), hue_levels_deg=(10.0, 20.0, 90.0), shift_levels_px=(1, -4),
                         rotation_levels_deg=(15.0,), scale_levels=(0.9, 1.2))
    t = factor_transforms(cfg)
    assert [len(t[k].levels) for k in ("brightness", "hue", "flip", "shift", "rotation", "scale")] == [2, 3, 1, 2, 1, 2]
    # Each level is bound to its own value (no late binding of the loop variable).
    for (level, fn), delta in zip(t["brightness"].levels, cfg.brightness_levels):
        assert level == delta and torch.equal(fn(x), brightness(x, delta))
    for (level, fn), deg in zip(t["hue"].levels, cfg.hue_levels_deg):
        assert level == deg and torch.equal(fn(x), hue_rotation(x, deg))
    for (level, fn), px in zip(t["shift"].levels, cfg.shift_levels_px):
        assert torch.equal(fn(x), shift(x, px))
    for (level, fn), s_ in zip(t["scale"].levels, cfg.scale_levels):
        assert level == s_ and torch.equal(fn(x), affine(x, scale=s_))
    assert torch.equal(t["flip"].levels[0][1](x), hflip(x))


# ---------------------------------------------------------------- Factor responses and scores


def stats_encoder(x: torch.Tensor) -> torch.Tensor:
    """A hand-made 'encoder' of uint8 images: dim 0 = mean intensity (brightness), dim 1 = left minus right
    half (flip), dim 2 = pixel std, dim 3 = red minus blue, dims 4..7 = 0; (N, 8) on the [0, 1] scale."""
    f = x.double() / 255
    out = torch.zeros(len(x), 8, dtype=torch.float64)
    out[:, 0] = f.mean((1, 2, 3))
    out[:, 1] = f[..., :16].mean((1, 2, 3)) - f[..., 16:].mean((1, 2, 3))
    out[:, 2] = f.flatten(1).std(1)
    out[:, 3] = f[:, 0].mean((1, 2)) - f[:, 2].mean((1, 2))
    return out


FACTORS = {"brightness": Factor(0.0, ((-0.1, lambda v: brightness(v, -0.1)), (0.1, lambda v: brightness(v, 0.1)))),
           "flip": Factor(0.0, ((1.0, hflip),))}


def response(encode, x):
    base, changed = factor_codes(encode, x, FACTORS)
    return {k: squared_changes(base, v).mean(0) for k, v in changed.items()}


def test_factor_response_of_axis_aligned_encoder():
    x = gradient_images(200, seed=0)
    resp = response(stats_encoder, x)
    assert set(resp) == {"brightness", "flip"} and resp["brightness"].shape == (8,)
    # Brightness moves dim 0 by exactly +-0.1 (up to rounding to the 256 levels): response 0.01.
    assert float(resp["brightness"][0]) == pytest.approx(0.01, rel=1e-3)
    # A flip negates dim 1: response = mean of (2 * dim1)^2, and leaves the mean and std unchanged.
    assert float(resp["flip"][1]) == pytest.approx(float((2 * stats_encoder(x)[:, 1]).pow(2).mean()), rel=1e-9)
    assert float(resp["flip"][[0, 2, 3]].max()) < 1e-20
    scores = {k: factor_score(v) for k, v in resp.items()}
    assert scores["brightness"] > 0.95 and scores["flip"] > 0.95


def test_factor_score_drops_for_rotated_encoder():
    x = gradient_images(200, seed=0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen(0), dtype=torch.float64))
    aligned = {k: factor_score(v) for k, v in response(stats_encoder, x).items()}
    rotated_resp = response(lambda v: stats_encoder(v) @ q, x)
    rotated = {k: factor_score(v) for k, v in rotated_resp.items()}
    for name in FACTORS:
        assert rotated[name] < 0.5 and rotated[name] < aligned[name] - 0.3, name
    # A rotation keeps the total response (the squared length of the change is invariant).
    total = response(stats_encoder, x)["flip"].sum()
    assert float(rotated_resp["flip"].sum()) == pytest.approx(float(total), rel=1e-9)


def test_readability_reads_a_level_that_the_code_holds_and_not_one_it_lacks():
    """Brightness is dim 0 of the encoder: its level is read back from the change of the code almost exactly
    (R^2 ~ 1), under any rotation of the code too. An encoder that sees only the left-right difference does not
    change with brightness, so its level cannot be read (R^2 ~ 0)."""
    x = gradient_images(400, seed=1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen(0), dtype=torch.float64))
    for encode in (stats_encoder, lambda v: stats_encoder(v) @ q):
        base, changed = factor_codes(encode, x, FACTORS)
        out, _ = factor_metrics(base, changed, FACTORS, l2=1e-6, reps=20, seed=0)
        assert out["factor_r2_brightness"] > 0.98
        assert out["factor_r2_brightness_lo"] <= out["factor_r2_brightness"] <= out["factor_r2_brightness_hi"]
    blind = lambda v: stats_encoder(v)[:, 1:2]  # noqa: E731 - left minus right only
    base, changed = factor_codes(blind, x, FACTORS)
    out, resp = factor_metrics(base, changed, FACTORS, l2=1e-6, reps=20, seed=0)
    assert out["factor_r2_brightness"] < 0.05
    assert out["factor_r2"] == pytest.approx((out["factor_r2_brightness"] + out["factor_r2_flip"]) / 2)
    assert out["factor_score"] == pytest.approx((out["factor_score_brightness"] + out["factor_score_flip"]) / 2)
    assert set(resp) == set(FACTORS)


def test_a_binary_factor_is_read_from_the_size_of_the_change_and_not_from_its_sign():
    """Dim 1 of the encoder (left minus right) carries the flip: a flip negates it. The ramps' slopes have random
    signs, so the signed change of the code points either way and a linear readout of it reads nothing; the
    logistic readout of its size reads the flip (R^2 >= 0.9) of images that a flip visibly changes (a ramp of at
    least a tenth of the range). An encoder of flip-invariant statistics (mean, std, red minus blue) does not
    change under a flip, and nothing reads it (R^2 ~ 0)."""
    x = gradient_images(800, seed=2)
    x = x[stats_encoder(x)[:, 1].abs() > 0.05][:400]
    flip_only = {"flip": FACTORS["flip"]}
    base, changed = factor_codes(stats_encoder, x, flip_only)
    out, _ = factor_metrics(base, changed, flip_only, l2=1.0, reps=20, seed=0)
    assert out["factor_r2_flip"] >= 0.9
    assert out["factor_r2_flip_lo"] <= out["factor_r2_flip"] <= out["factor_r2_flip_hi"]
    # The signed change, read linearly as the readout of the graded factors does: R^2 near 0.
    delta = changed["flip"][0] - base  # (N, 8)
    half = len(x) // 2
    xs = lambda rows: torch.cat([torch.zeros_like(delta[rows]), delta[rows]])  # noqa: E731
    ys = lambda m: torch.cat([torch.zeros(m, dtype=torch.float64), torch.ones(m, dtype=torch.float64)])  # noqa: E731
    err, dev = ridge_r2(xs(slice(0, half)), ys(half), xs(slice(half, None)), ys(len(x) - half), 1.0)
    assert float(1 - err.sum() / dev.sum()) < 0.1
    invariant = lambda v: stats_encoder(v)[:, [0, 2, 3]]  # noqa: E731
    base, changed = factor_codes(invariant, x, flip_only)
    out, _ = factor_metrics(base, changed, flip_only, l2=1.0, reps=20, seed=0)
    assert abs(out["factor_r2_flip"]) < 0.05


def test_logistic_readout_known_answers():
    """A label that is a threshold of one feature is read almost exactly; a label independent of the features is
    not read at all (held-out pseudo-R^2 ~ 0, not above)."""
    g = gen(3)
    feats = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    label = (feats[:, 1] > 0.3).double()
    err, dev = logistic_r2(feats[:1000], label[:1000], feats[1000:], label[1000:], l2=1e-3)
    assert float(1 - err.sum() / dev.sum()) > 0.9
    noise = (torch.rand(2000, generator=g, dtype=torch.float64) > 0.5).double()
    err, dev = logistic_r2(feats[:1000], noise[:1000], feats[1000:], noise[1000:], l2=1.0)
    assert abs(float(1 - err.sum() / dev.sum())) < 0.02


def test_shares_and_factor_score_known_values():
    r = torch.tensor([0.5, 2.0, 1.0, 0.5], dtype=torch.float64)
    s = shares(r)
    assert float(s.sum()) == pytest.approx(1.0)
    assert torch.allclose(s, torch.tensor([0.125, 0.5, 0.25, 0.125], dtype=torch.float64))
    assert torch.equal(shares(torch.zeros(3)), torch.zeros(3))
    assert factor_score(torch.tensor([0.0, 0.0, 3.0, 0.0])) == pytest.approx(1.0)
    assert factor_score(r) == pytest.approx(0.25)
    assert factor_score(torch.ones(6)) == pytest.approx(0.0)
    assert factor_score(torch.tensor([4.0])) == pytest.approx(1.0)
