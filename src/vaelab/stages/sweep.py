"""DVC stages `sweep@<beta>` and `sweep_seed@<beta>-<seed>`: train one point of the β sweep (the `model` section's
VAE at the sweep's cheap recipe, from scratch, with the same seed for every beta or a seed of the seed spread) and log
it to MLflow, nested under the sweep's parent run."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from vaelab import data, layout, tracking
from vaelab.layout import SweepPaths
from vaelab.model import VAE
from vaelab.params import to_dict
from vaelab.precision import count_parameters
from vaelab.stages import runtime, study


def resolved_config(params, beta: float, seed: int) -> dict:
    """What defines one sweep point (the list of betas excluded); `data.subset` and `data_seed` are what data.load
    reads."""
    sw = params.sweep
    return {"beta": beta, "seed": seed, "data_seed": params.seed, "data": {"subset": sw.subset}, "model": to_dict(params.model),
            "train": {k: v for k, v in to_dict(sw.train_config()).items() if k != "betas"}}


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.sweep_stage("sweep", argv, __doc__)
    return runtime.finish(paths.stage, run(params, beta, paths))


def run(params, beta: float, paths: SweepPaths) -> int:
    """Train, save and log one sweep point; returns the exit status."""
    sw = params.sweep
    device = runtime.device()
    # A spread point differs in the seed of its weights and batches only: the same training images as every point.
    seed = params.seed if paths.seed is None else paths.seed
    torch.manual_seed(seed)
    ds = data.load(Path(params.data.root) / layout.BATCHES, sw.subset, params.seed)
    model = VAE(params.model).to(device, memory_format=torch.channels_last)
    print(f"sweep: β = {beta:g} on {device}, {len(ds.train_x)} images, {count_parameters(model) / 1e6:.2f}M parameters")
    history = study.train_nested(
        params, tracking.SWEEP, model, (ds.train_x, ds.test_x), beta, seed, sw.train_config(), paths,
        resolved_config(params, beta, seed), f"sweep/beta={beta:g}" + ("" if paths.seed is None else f"/seed={seed}"),
        {"dvc_stage": paths.stage, "beta": f"{beta:g}", "seed": str(seed)},
        f"β sweep point: β = {beta:g}, seed {seed}, {sw.epochs} epochs on {len(ds.train_x)} CIFAR-10 images, "
        f"z = {params.model.latent_dim}, no perceptual term")
    if history is None:
        return 1
    last = history[-1]
    print(f"sweep: β = {beta:g}: test rate {last['test_kl']:.1f} nats, distortion {last['test_recon']:.0f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
