"""Both ex-post samplers behind one interface: the Gaussian mixture of vaelab.density and the diffusion prior of
vaelab.diffusion, each fitted to the posterior means of the training images and drawn from in place of N(0, I).
What kind a sampler is, drawing codes from it, and its file (what it was fitted to and with, checked on load)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import torch

from vaelab import density, diffusion
from vaelab.density import GaussianMixture, StaleSamplerError
from vaelab.params import DiffusionConfig, from_dict
from vaelab.storage import load_state, save_state

Sampler = GaussianMixture | diffusion.DiffusionPrior
__all__ = ["Sampler", "StaleSamplerError", "describe", "draw", "holdout_split", "kind", "load", "save"]


def kind(sampler: Sampler) -> str:
    """`mixture` or `diffusion`: the sampling.prior value that names this sampler."""
    return "mixture" if isinstance(sampler, GaussianMixture) else "diffusion"


def describe(sampler: Sampler) -> str:
    """A few words naming the sampler (figure titles, the registry's description)."""
    if isinstance(sampler, GaussianMixture):
        return f"{sampler.components}-component Gaussian mixture"
    return f"diffusion prior ({sampler.cfg.sample_steps} DDIM steps, temperature {sampler.cfg.temperature:g})"


def draw(sampler: Sampler, n: int, generator: torch.Generator) -> torch.Tensor:
    """n codes (n, D) float32 from either kind of sampler (the diffusion prior at its configured temperature)."""
    if isinstance(sampler, GaussianMixture):
        return density.sample(sampler, n, generator)
    return diffusion.sample(sampler, n, generator)


def holdout_split(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held) of n training codes: a seeded draw of `holdout` is kept out of every sampler's fit, so
    that their decoded codes are a sample of the aggregate posterior that no sampler has seen (the ceiling set)."""
    if not 0 <= holdout < n:
        raise ValueError(f"cannot hold out {holdout} of {n} training codes")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def save(path: str | Path, sampler: Sampler, meta: Mapping[str, Any]) -> None:
    """Write a sampler with `meta` (what it was fitted to and with); `load` reads it back."""
    if isinstance(sampler, GaussianMixture):
        save_state(path, density.to_state(sampler), {"kind": "mixture", **meta})
    else:
        save_state(path, sampler.state_dict(), {"kind": "diffusion", "diffusion": dataclasses.asdict(sampler.cfg),
                                                **meta})


def load(path: str | Path, model_md5: str, settings: Mapping[str, Any] | None = None) -> Sampler:
    """The sampler saved in `path` by stage sampler@<β>, checked against the weights md5 of the model it must have
    been fitted to and (given) the settings it must have been fitted with; raises StaleSamplerError if either
    differs."""
    state, saved = load_state(path)
    if saved.get("kind") != "diffusion":
        return density.load_fitted(path, model_md5, settings)
    density.check_fitted(path, saved, model_md5, settings)
    prior = diffusion.DiffusionPrior(len(state["mean"]), from_dict(DiffusionConfig, saved["diffusion"]))
    prior.load_state_dict(state)
    return prior.eval()
