"""DVC stage `train@<beta>`: train one VAE, log its run to MLflow, save the model, history and summary metrics."""
from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vaelab import classifier, data, storage, tracking
from vaelab.loss import Activations
from vaelab.model import VAE
from vaelab.precision import autocast, count_parameters
from vaelab.params import flatten, to_dict
from vaelab.stages import layout
from vaelab.train import NonFiniteLossError, train


def resolved_config(params, beta: float) -> dict:
    """What defines one trained model: beta, seed, data subset, model and recipe (train.betas excluded), and the
    feature network of its perceptual term (the md5 of its weights) when that term is on."""
    recipe = {k: v for k, v in to_dict(params.train).items() if k != "betas"}
    config = {"beta": beta, "seed": params.seed, "data": {"subset": params.data.subset},
              "model": to_dict(params.model), "train": recipe}
    if params.train.perceptual_weight > 0:
        config["features_md5"] = storage.weights_md5(layout.FEATURES.model)
    return config


def feature_activations(device: torch.device, bf16: bool) -> Activations:
    """The frozen feature network (stage `features`) as the perceptual term reads it: images in [-1, 1] ->
    its three layers' activations (float32)."""
    net, _ = classifier.load(layout.FEATURES.model, device)

    def activations(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(device, bf16):
            return [a.float() for a in net.activations((x + 1.0) / 2.0)]

    return activations


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = layout.beta_stage("train", argv, __doc__)
    return run(params, beta, paths)


def run(params, beta: float, paths: layout.BetaPaths, preset: str = "") -> int:
    """Train, save and log one model; `preset` names a params preset (MLflow run `<preset>/beta=B`, alias
    `<preset>-beta-B`), "" is the default pipeline. Returns the exit status."""
    torch.manual_seed(params.seed)
    device = layout.device()
    if params.train.perceptual_weight > 0 and not layout.FEATURES.model.is_file():
        print(f"train: train.perceptual_weight > 0 needs the feature network {layout.FEATURES.model}; run "
              f"`dvc repro features` first", file=sys.stderr)
        return 2
    config = resolved_config(params, beta)
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    try:
        tracking.prepare_store(uri, params.tracking.experiment)  # before any work: an unreachable store fails now
    except tracking.TrackingError as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    ds = data.load(Path(params.data.root) / layout.BATCHES, params.data.subset, params.seed)
    model = VAE(params.model).to(device, memory_format=torch.channels_last)
    n_train = len(ds.train_x)
    run_name = f"{preset}/beta={beta:g}" if preset else f"beta={beta:g}"
    description = (f"{preset + ' preset: ' if preset else ''}β = {beta:g}, {params.train.epochs} epochs on "
                   f"{n_train} CIFAR-10 training images, z = {params.model.latent_dim}, {params.model.likelihood} decoder"
                   + (f", flow prior ({params.model.prior_flows} couplings)" if params.model.prior_flows else "")
                   + (f", MMD weight {params.train.mmd_weight:g}" if params.train.mmd_weight > 0 else "")
                   + (f", perceptual weight {params.train.perceptual_weight:g}"
                      if params.train.perceptual_weight > 0 else ""))
    ckpt = storage.load_checkpoint(paths.checkpoint)
    if ckpt is not None and ckpt["config"] != config:
        print(f"train: ignoring {paths.checkpoint}: it was written with other params")
        ckpt = None
    paths.metrics_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = [dict(r) for r in ckpt["state"]["history"]] if ckpt else []
    previous_seconds = ckpt["seconds"] if ckpt else 0.0
    t0 = time.perf_counter()
    run_id = ckpt["run_id"] if ckpt else None

    def log_row(row: dict) -> None:
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def on_epoch(row: dict, state: dict) -> None:
        # Checkpoint first: an epoch that reached MLflow is always one a resumed run starts after.
        storage.save_checkpoint(paths.checkpoint, {"config": config, "run_id": run_id, "state": state,
                                                   "seconds": previous_seconds + time.perf_counter() - t0})
        rows.append(row)
        # Written every epoch, so a long run can be watched with `dvc plots show` while it trains.
        storage.write_text(paths.history, pd.DataFrame(rows).to_csv(index=False))
        log_row(row)

    tags = {"dvc_stage": f"train@{paths.tag}", "git_commit": tracking.git_commit(root), "beta": f"{beta:g}",
            "preset": preset or "default"}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run` (also queued): find a sweep's runs by its name
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    print(f"train: β = {beta:g} on {device}, {n_train} images, {count_parameters(model) / 1e6:.2f}M parameters, "
          f"MLflow {uri}")
    try:
        with tracking.run(uri, params.tracking.experiment, run_name, run_id=run_id, tags=tags,
                          description=description) as active:
            if ckpt is not None and active == run_id:
                print(f"train: resuming after epoch {ckpt['state']['epoch']} from {paths.checkpoint}; "
                      f"MLflow run {run_id} continues")
                tracking.set_tags({"resumed_from_epoch": str(ckpt["state"]["epoch"])})
                # An epoch checkpointed just before the kill may not have reached MLflow yet.
                logged = {step for step, _ in tracking.metric_history(uri, run_id, "train_loss")}
                for row in rows:
                    if int(row["epoch"]) not in logged:
                        log_row(row)
            else:
                if ckpt is not None:
                    print(f"train: resuming after epoch {ckpt['state']['epoch']}; its MLflow run is gone, "
                          f"logging into a new run {active}")
                    tracking.set_tags({"resumed_from_epoch": str(ckpt["state"]["epoch"])})
                    for row in rows:
                        log_row(row)
                tracking.log_params(flatten(config) | {"data.n_train": n_train, "data.n_test": len(ds.test_x),
                                                       "model.parameters": count_parameters(model)})
            run_id = active
            perceptual = (feature_activations(device, params.train.bf16) if params.train.perceptual_weight > 0
                          else None)
            history = train(model, ds.train_x, ds.test_x, beta, params.train, params.seed, device,
                            on_epoch=on_epoch, resume=ckpt["state"] if ckpt else None, perceptual=perceptual)
            seconds = previous_seconds + time.perf_counter() - t0
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
            description += f"; final test {last['test_bpd']:.3f} bits/dim"
            tracking.set_description(description)
            # The model is logged and registered by sampler@<beta>, with the sampler it draws from.
            storage.write_json(paths.run_file, {"run_id": run_id, "run_name": run_name, "tracking_uri": uri,
                                                "experiment": params.tracking.experiment})
    except NonFiniteLossError as e:
        kept = f"; the last good checkpoint is kept in {paths.checkpoint}" if paths.checkpoint.is_file() else ""
        print(f"train: {e}{kept}", file=sys.stderr)
        return 1
    paths.checkpoint.unlink(missing_ok=True)  # done: the next run of this stage starts from scratch
    print(f"train: β = {beta:g} done in {seconds / 60:.1f} min, test {last['test_bpd']:.3f} bits/dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
