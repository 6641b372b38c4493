"""DVC stage `control@<beta>-<seed>`: train one VAE of the control study on the rendered dataset of known factors
(vaelab.control) and log it to MLflow, nested under the study's parent run. Scored by stage control_eval."""
from __future__ import annotations

import argparse
import sys

import pandas as pd
import torch

from vaelab import control, layout, storage, tracking
from vaelab.layout import ControlPaths
from vaelab.model import VAE
from vaelab.params import ControlConfig, ParamsError, flatten, to_dict
from vaelab.precision import count_parameters, precision_name
from vaelab.stages import runtime
from vaelab.train import NonFiniteLossError, train


def parse(argv: list[str] | None, cfg: ControlConfig) -> tuple[float, int, ControlPaths]:
    """`--beta B --seed S`, each checked against control.betas and control.seeds."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beta", required=True, help="a value listed in params.yaml control.betas")
    parser.add_argument("--seed", required=True, type=int, help="a value listed in params.yaml control.seeds")
    args = parser.parse_args(argv)
    beta = runtime.listed_beta(args.beta, cfg.betas, "control.betas")
    if args.seed not in cfg.seeds:
        raise ParamsError(f"--seed {args.seed} is not listed in params.yaml control.seeds {list(cfg.seeds)}")
    return beta, args.seed, ControlPaths(args.beta, args.seed)


def resolved_config(cfg: ControlConfig, beta: float, seed: int, split_seed: int) -> dict:
    """What defines one control model (the lists of betas and seeds excluded)."""
    return {"beta": beta, "seed": seed, "split_seed": split_seed, "test_fraction": cfg.test_fraction,
            "subset": cfg.subset,
            "model": to_dict(cfg.model_config()),
            "train": {k: v for k, v in to_dict(cfg.train_config()).items() if k != "betas"}}


def main(argv: list[str] | None = None) -> int:
    params = runtime.load("control")
    cfg = params.control
    try:
        beta, seed, paths = parse(argv, cfg)
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
    config = resolved_config(cfg, beta, seed, params.seed)
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    try:
        tracking.prepare_store(uri, params.tracking.experiment)
    except tracking.TrackingError as e:
        print(f"control: {e}", file=sys.stderr)
        return 1
    model = VAE(cfg.model_config()).to(device, memory_format=torch.channels_last)
    rows: list[dict] = []

    def on_epoch(row: dict, state: dict) -> None:
        rows.append(row)
        storage.write_text(paths.history, pd.DataFrame(rows).to_csv(index=False))
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    parent = tracking.parent_run(uri, params.tracking.experiment, tracking.CONTROL_STUDY,
                                 "The control study: VAEs on rendered images of six known factors, one per β and "
                                 "seed (stages control@<β>-<seed>), scored by MIG and DCI in control_eval.")
    tags = {"mlflow.parentRunId": parent, "dvc_stage": paths.stage, "git_commit": tracking.git_commit(root),
            "beta": f"{beta:g}", "seed": str(seed)}
    description = (f"control study: β = {beta:g}, seed {seed}, {cfg.epochs} epochs on {len(train_idx)} rendered "
                   f"images, z = {cfg.latent_dim}, Gaussian decoder with fixed σ = {cfg.fixed_sigma:g}")
    print(f"control: β = {beta:g}, seed {seed} on {device}, {len(train_idx)} images, "
          f"{count_parameters(model) / 1e6:.2f}M parameters")
    try:
        with tracking.run(uri, params.tracking.experiment, f"control/beta={beta:g}/seed={seed}", tags=tags,
                          description=description) as run_id:
            tracking.log_params(flatten(config))
            history = train(model, x[train_idx], x[test_idx], beta, cfg.train_config(), seed, device,
                            on_epoch=on_epoch)
            storage.save_model(paths.model, model, config)
            storage.write_json(paths.run_file, {"run_id": run_id, "tracking_uri": uri,
                                                "experiment": params.tracking.experiment,
                                                "precision": precision_name(device, cfg.bf16)})
    except NonFiniteLossError as e:
        print(f"control: {e}", file=sys.stderr)
        return 1
    last = history[-1]
    print(f"control: β = {beta:g}, seed {seed}: test recon {last['test_recon']:.1f}, KL {last['test_kl']:.2f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
