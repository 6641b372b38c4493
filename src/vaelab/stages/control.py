"""DVC stage `control@<beta>-<seed>`: train one VAE of the control study on the rendered dataset of known factors
(vaelab.control) and log it to MLflow, nested under the study's parent run. Scored by stage control_eval."""
from __future__ import annotations

import sys

import torch

from vaelab import control, tracking
from vaelab.layout import ControlPaths
from vaelab.model import VAE
from vaelab.params import ControlConfig, ParamsError, to_dict
from vaelab.precision import count_parameters
from vaelab.stages import runtime, study


def resolved_config(cfg: ControlConfig, beta: float, seed: int, split_seed: int) -> dict:
    """What defines one control model (the lists of betas and seeds excluded)."""
    return {"beta": beta, "seed": seed, "split_seed": split_seed, "test_fraction": cfg.test_fraction,
            "subset": cfg.subset,
            "model": to_dict(cfg.model_config()),
            "train": {k: v for k, v in to_dict(cfg.train_config()).items() if k != "betas"}}


def main(argv: list[str] | None = None) -> int:
    params = runtime.load("control")
    try:
        beta, tag, seed = runtime.point_arg(argv, params, __doc__, "control.betas", "control.seeds",
                                            seed_required=True)
        paths = ControlPaths(tag, seed)
    except ParamsError as e:
        print(f"control: {e}", file=sys.stderr)
        return 2
    runtime.set_threads(params.train.threads)
    return runtime.finish(paths.stage, run(params, beta, seed, paths))


def run(params, beta: float, seed: int, paths: ControlPaths) -> int:
    """Train, save and log one control model; returns the exit status."""
    cfg = params.control
    device = runtime.device()
    torch.manual_seed(seed)
    images, _ = control.render()
    # One split for every model (the top-level seed), so that every (beta, seed) sees the same training images.
    train_idx, test_idx = control.split(len(images), cfg.test_fraction, params.seed, cfg.subset)
    x = torch.from_numpy(images)
    model = VAE(cfg.model_config()).to(device, memory_format=torch.channels_last)
    print(f"control: β = {beta:g}, seed {seed} on {device}, {len(train_idx)} images, "
          f"{count_parameters(model) / 1e6:.2f}M parameters")
    history = study.train_nested(
        params, tracking.CONTROL_STUDY, model, (x[train_idx], x[test_idx]), beta, seed, cfg.train_config(), paths,
        resolved_config(cfg, beta, seed, params.seed), f"control/beta={beta:g}/seed={seed}",
        {"dvc_stage": paths.stage, "beta": f"{beta:g}", "seed": str(seed)},
        f"control study: β = {beta:g}, seed {seed}, {cfg.epochs} epochs on {len(train_idx)} rendered images, "
        f"z = {cfg.latent_dim}, Gaussian decoder with fixed σ = {cfg.fixed_sigma:g}")
    if history is None:
        return 1
    last = history[-1]
    print(f"control: β = {beta:g}, seed {seed}: test recon {last['test_recon']:.1f}, KL {last['test_kl']:.2f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
