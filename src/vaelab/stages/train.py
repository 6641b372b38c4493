"""DVC stage `train@<beta>`: train one VAE, log it to MLflow, save the model, history and summary metrics."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vaelab import data, storage, tracking
from vaelab.model import VAE, Generator, count_parameters
from vaelab.params import flatten, to_dict
from vaelab.stages import layout
from vaelab.train import NonFiniteLossError, train


def resolved_config(params, beta: float) -> dict:
    """What defines one trained model: beta, seed, data subset, model and recipe (train.betas excluded)."""
    recipe = {k: v for k, v in to_dict(params.train).items() if k != "betas"}
    return {"beta": beta, "seed": params.seed, "data": {"subset": params.data.subset},
            "model": to_dict(params.model), "train": recipe}


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = layout.beta_stage("train", argv, __doc__)
    torch.manual_seed(params.seed)
    device = layout.device()
    ds = data.load(Path(params.data.root) / layout.BATCHES, params.data.subset, params.seed)
    model = VAE(params.model).to(device, memory_format=torch.channels_last)
    config = resolved_config(params, beta)
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    n_train = len(ds.train_x)
    description = (f"β = {beta:g}, {params.train.epochs} epochs on {n_train} CIFAR-10 training images, "
                   f"z = {params.model.latent_dim}, {params.model.likelihood} decoder")
    paths.metrics_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def on_epoch(row: dict) -> None:
        rows.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        # Written every epoch, so a long run can be watched with `dvc plots show` while it trains.
        storage.write_text(paths.history, pd.DataFrame(rows).to_csv(index=False))

    tags = {"dvc_stage": f"train@{paths.tag}", "git_commit": tracking.git_commit(root), "beta": f"{beta:g}"}
    print(f"train: β = {beta:g} on {device}, {n_train} images, {count_parameters(model) / 1e6:.2f}M parameters, "
          f"MLflow {uri}")
    t0 = time.perf_counter()
    try:
        with tracking.run(uri, params.tracking.experiment, f"beta={beta:g}", tags=tags,
                          description=description) as run_id:
            tracking.log_params(flatten(config) | {"data.n_train": n_train, "data.n_test": len(ds.test_x),
                                                   "model.parameters": count_parameters(model)})
            history = train(model, ds.train_x, ds.test_x, beta, params.train, params.seed, device,
                            on_epoch=on_epoch)
            seconds = time.perf_counter() - t0
            last = history[-1]
            summary = {
                "beta": beta,
                "train_seconds": seconds,
                "images_per_second": sum(r["images_per_second"] for r in history) / len(history),
                "final_train_loss": last["train_loss"],
                "final_test_bpd": last["test_bpd"],
                "parameters": count_parameters(model),
                "epochs": params.train.epochs,
                "n_train": n_train,
                # ru_maxrss is in KiB on Linux: the whole stage's peak resident memory.
                "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            storage.save_model(paths.model, model, config)
            storage.write_json(paths.train_metrics, summary)
            tracking.log_metrics({"train_seconds": seconds})
            tracking.log_artifact(paths.history)
            model_uri = tracking.log_model(Generator(model.decoder), (params.model.latent_dim,))
            storage.write_json(paths.run_file, {"run_id": run_id, "tracking_uri": uri, "model_uri": model_uri,
                                                "experiment": params.tracking.experiment})
    except NonFiniteLossError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    print(f"train: β = {beta:g} done in {seconds / 60:.1f} min, test {last['test_bpd']:.3f} bits/dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
