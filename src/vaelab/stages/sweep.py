"""DVC stage `sweep@<beta>`: train one point of the β sweep (the `model` section's VAE at the sweep's cheap recipe,
from scratch, same seed for every beta) and log it to MLflow, nested under the sweep's parent run."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from vaelab import data, layout, storage, tracking
from vaelab.layout import SweepPaths
from vaelab.model import VAE
from vaelab.params import ParamsError, flatten, to_dict
from vaelab.precision import count_parameters, precision_name
from vaelab.stages import runtime
from vaelab.train import NonFiniteLossError, train


def resolved_config(params, beta: float) -> dict:
    """What defines one sweep point (the list of betas excluded); `data.subset` is what data.load reads."""
    sw = params.sweep
    return {"beta": beta, "seed": params.seed, "data": {"subset": sw.subset}, "model": to_dict(params.model),
            "train": {k: v for k, v in to_dict(sw.train_config()).items() if k != "betas"}}


def main(argv: list[str] | None = None) -> int:
    params = runtime.load("sweep")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beta", required=True, help="a value listed in params.yaml sweep.betas")
    args = parser.parse_args(argv)
    try:
        beta = runtime.listed_beta(args.beta, params.sweep.betas, "sweep.betas")
    except ParamsError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 2
    runtime.set_threads(params.train.threads)
    paths = SweepPaths(args.beta)
    return runtime.finish(f"sweep@{paths.tag}", run(params, beta, paths))


def run(params, beta: float, paths: SweepPaths) -> int:
    """Train, save and log one sweep point; returns the exit status."""
    sw = params.sweep
    device = runtime.device()
    torch.manual_seed(params.seed)
    config = resolved_config(params, beta)
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    try:
        tracking.prepare_store(uri, params.tracking.experiment)
    except tracking.TrackingError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    ds = data.load(Path(params.data.root) / layout.BATCHES, sw.subset, params.seed)
    model = VAE(params.model).to(device, memory_format=torch.channels_last)
    rows: list[dict] = []

    def on_epoch(row: dict, state: dict) -> None:
        rows.append(row)
        storage.write_text(paths.history, pd.DataFrame(rows).to_csv(index=False))
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    parent = tracking.parent_run(uri, params.tracking.experiment, tracking.SWEEP,
                                 "The β sweep: the model section's VAE trained per β at the sweep's cheap recipe "
                                 "(stages sweep@<β>), measured by sweep_eval@<β>, drawn by sweep_report.")
    tags = {"mlflow.parentRunId": parent, "dvc_stage": f"sweep@{paths.tag}", "beta": f"{beta:g}",
            "git_commit": tracking.git_commit(root)}
    description = (f"β sweep point: β = {beta:g}, {sw.epochs} epochs on {len(ds.train_x)} CIFAR-10 images, "
                   f"z = {params.model.latent_dim}, no perceptual term")
    print(f"sweep: β = {beta:g} on {device}, {len(ds.train_x)} images, {count_parameters(model) / 1e6:.2f}M parameters")
    run_name = f"sweep/beta={beta:g}"
    try:
        with tracking.run(uri, params.tracking.experiment, run_name, tags=tags, description=description) as run_id:
            tracking.log_params(flatten(config))
            history = train(model, ds.train_x, ds.test_x, beta, sw.train_config(), params.seed, device,
                            on_epoch=on_epoch)
            storage.save_model(paths.model, model, config)
            storage.write_json(paths.run_file, {"run_id": run_id, "run_name": run_name, "tracking_uri": uri,
                                                "experiment": params.tracking.experiment,
                                                "precision": precision_name(device, sw.bf16)})
    except NonFiniteLossError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    last = history[-1]
    print(f"sweep: β = {beta:g}: test rate {last['test_kl']:.1f} nats, distortion {last['test_recon']:.0f} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
