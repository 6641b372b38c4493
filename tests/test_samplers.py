"""Both ex-post samplers behind one interface: saved and loaded with what they were fitted to, drawn alike; the
codes held out of their fits."""
from __future__ import annotations

import pytest
import torch

from test_density import two_blobs
from vaelab import density, diffusion, samplers
from vaelab.params import DiffusionConfig


def test_both_kinds_round_trip_through_save_and_load_and_draw_the_same_codes(tmp_path):
    gmm = density.fit_gmm(two_blobs(), 2, iterations=20)
    prior = diffusion.fit(two_blobs(500), DiffusionConfig(hidden=16, blocks=1, timesteps=50, train_steps=5,
                                                          batch_size=64, sample_steps=5, temperature=0.9), seed=0)
    for sampler, kind in ((gmm, "mixture"), (prior, "diffusion")):
        path = tmp_path / f"{kind}.pt"
        samplers.save(path, sampler, {"model_md5": "abc", "seed": 0})
        loaded = samplers.load(path, "abc", {"kind": kind, "seed": 0})
        assert samplers.kind(loaded) == kind
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        assert torch.equal(samplers.draw(loaded, 20, g1), samplers.draw(sampler, 20, g2))
    assert samplers.load(tmp_path / "diffusion.pt", "abc").cfg.temperature == 0.9


def test_a_sampler_of_another_kind_or_model_is_refused_naming_what_differs(tmp_path):
    samplers.save(tmp_path / "s.pt", density.fit_gmm(two_blobs(), 2, iterations=5), {"model_md5": "abc"})
    with pytest.raises(samplers.StaleSamplerError, match="differs in kind"):
        samplers.load(tmp_path / "s.pt", "abc", {"kind": "diffusion"})
    with pytest.raises(samplers.StaleSamplerError, match="differs in model_md5"):
        samplers.load(tmp_path / "s.pt", "other", {"kind": "mixture"})


def test_the_held_out_codes_are_a_seeded_draw_disjoint_from_the_fitted_ones():
    fit, held = samplers.holdout_split(100, 30, seed=4)
    assert len(held) == 30 and len(fit) == 70
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(100))  # a partition
    assert torch.equal(held, samplers.holdout_split(100, 30, seed=4)[1])
    assert not torch.equal(held, samplers.holdout_split(100, 30, seed=5)[1])
    with pytest.raises(ValueError, match="cannot hold out 100 of 100"):
        samplers.holdout_split(100, 100, seed=0)
