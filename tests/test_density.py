"""The ex-post density: EM recovers a known mixture, log_prob is the mixture's density, sampling follows it."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from vaelab import density


def two_blobs(n: int = 4000, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3 * n // 4, 2, generator=g) * 0.3 + torch.tensor([3.0, 0.0])
    b = torch.randn(n // 4, 2, generator=g) * torch.tensor([1.0, 0.2]) + torch.tensor([-3.0, -1.0])
    return torch.cat([a, b])


def test_em_recovers_a_known_mixture():
    gmm = density.fit_gmm(two_blobs(), 2, iterations=200, seed=0)
    order = gmm.means[:, 0].argsort(descending=True)  # the blob at x = +3 first
    torch.testing.assert_close(gmm.weights[order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.01,
                               rtol=0)
    torch.testing.assert_close(gmm.means[order], torch.tensor([[3.0, 0.0], [-3.0, -1.0]], dtype=torch.float64),
                               atol=0.06, rtol=0)
    cov = gmm.scale_tril @ gmm.scale_tril.transpose(1, 2)
    torch.testing.assert_close(cov[order].diagonal(dim1=1, dim2=2),
                               torch.tensor([[0.09, 0.09], [1.0, 0.04]], dtype=torch.float64), atol=0.02, rtol=0.1)


def test_log_prob_is_the_mixture_density():
    gmm = density.fit_gmm(two_blobs(), 2, iterations=50)
    x = torch.randn(20, 2, dtype=torch.float64) * 3
    ref = MixtureSameFamily(Categorical(gmm.weights), MultivariateNormal(gmm.means, scale_tril=gmm.scale_tril))
    torch.testing.assert_close(density.log_prob(gmm, x), ref.log_prob(x))


def test_one_component_is_the_gaussian_fit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 3, generator=g) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.5]])
    gmm = density.fit_gmm(x, 1, iterations=5)
    torch.testing.assert_close(gmm.means[0], x.double().mean(0))
    torch.testing.assert_close(gmm.scale_tril[0] @ gmm.scale_tril[0].T, torch.cov(x.double().T) * (4999 / 5000),
                               atol=1e-3, rtol=1e-3)


def test_samples_follow_the_mixture_and_are_seeded():
    gmm = density.fit_gmm(two_blobs(), 2, iterations=100)
    z = density.sample(gmm, 20000, torch.Generator().manual_seed(0))
    assert z.shape == (20000, 2) and z.dtype == torch.float32
    assert torch.equal(z, density.sample(gmm, 20000, torch.Generator().manual_seed(0)))
    assert (z[:, 0] > 0).float().mean().item() == pytest.approx(float(gmm.weights.max()), abs=0.015)
    # Samples score like the data they were fitted to (mean log-likelihood, nats).
    assert density.log_prob(gmm, z).mean().item() == pytest.approx(density.log_prob(gmm, two_blobs()).mean().item(),
                                                                   abs=0.05)
    assert math.isfinite(density.log_prob(gmm, z).sum().item())


def test_more_components_than_points_is_refused():
    with pytest.raises(ValueError, match="3 components needs at least that many points, got 2"):
        density.fit_gmm(torch.zeros(2, 4), 3)


def test_a_saved_mixture_loads_as_the_same_density_with_its_settings(tmp_path):
    from vaelab import storage

    gmm = density.fit_gmm(two_blobs(), 2, iterations=20)
    storage.save_state(tmp_path / "m.pt", dataclasses.asdict(gmm), {"components": 2, "iterations": 20, "seed": 0})
    state, settings = storage.load_state(tmp_path / "m.pt")
    loaded = density.GaussianMixture(**state)
    assert settings == {"components": 2, "iterations": 20, "seed": 0}
    x = two_blobs(100, seed=3)
    assert torch.equal(density.log_prob(loaded, x), density.log_prob(gmm, x))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(density.sample(loaded, 50, g1), density.sample(gmm, 50, g2))
