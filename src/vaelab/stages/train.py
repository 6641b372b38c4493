"""DVC stage `train@<beta>`: train one VAE, log its run to MLflow, save the model, history and summary metrics.

With train.processes = N > 1 the stage re-executes itself under torchrun (N processes, DDP: gloo on CPU, nccl on
CUDA); rank 0 (the master process) does every write: MLflow run, checkpoint, history, model and metrics files.
"""
from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from vaelab import data, layout, network, storage, tracking
from vaelab.loss import feature_activations
from vaelab.model import VAE
from vaelab.precision import count_parameters, precision_name
from vaelab.params import flatten, to_dict
from vaelab.stages import runtime
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


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("train", argv, __doc__)
    if params.train.processes > 1 and "LOCAL_RANK" not in os.environ:
        launch_torchrun(params.train.processes, sys.argv[1:] if argv is None else argv)
    return runtime.finish(f"train@{paths.tag}", run(params, beta, paths))


def launch_torchrun(processes: int, argv: list[str]) -> None:
    """Replace this process by torchrun starting `processes` copies of this stage on this machine (same PID, so
    `dvc repro` waits for, and a kill reaches, the launcher). Multi-node: run torchrun yourself (docs/scaling-out.md)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
           "-m", "vaelab.stages.train", *argv]
    print(f"train: train.processes = {processes}: {' '.join(cmd[1:])}", flush=True)
    os.execv(sys.executable, cmd)


def die_with_launcher() -> None:
    """Under torchrun, ask Linux to SIGKILL this worker when its launcher dies (kill -9 of `dvc repro`'s process
    would otherwise leave workers training and writing the checkpoint beside a resumed run)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def init_distributed(processes: int, device: torch.device) -> tuple[int, int]:
    """(rank, world size): (0, 1) for a plain process; under torchrun, join the process group (nccl on CUDA, gloo
    on CPU). A world size other than train.processes raises ValueError (the run would not be the one asked for)."""
    if "LOCAL_RANK" not in os.environ:
        return 0, 1
    die_with_launcher()
    world = int(os.environ["WORLD_SIZE"])
    if world != processes:
        raise ValueError(f"torchrun started {world} processes but train.processes = {processes}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def deterministic_cuda() -> None:
    """cuDNN picks deterministic kernels (no autotuning), so the same seed and resume give the same run on one
    GPU model and software stack; a few ops stay nondeterministic (docs/scaling-out.md)."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def run(params, beta: float, paths: layout.BetaPaths, preset: str = "") -> int:
    """Train, save and log one model; `preset` names a params preset (MLflow run `<preset>/beta=B`, alias
    `<preset>-beta-B`), "" is the default pipeline. Returns the exit status. Under torchrun every rank calls
    it; rank 0 alone writes and logs."""
    device = runtime.device()
    try:
        rank, world_size = init_distributed(params.train.processes, device)
    except ValueError as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    try:
        return _run(params, beta, paths, preset, device, rank, world_size)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _run(params, beta: float, paths: layout.BetaPaths, preset: str, device: torch.device, rank: int,
         world_size: int) -> int:
    master_process = rank == 0
    # Per-rank seed: each rank draws its own reparameterisation noise; DDP copies rank 0's initial weights to all.
    torch.manual_seed(params.seed + rank)
    if device.type == "cuda":
        deterministic_cuda()
    if params.train.perceptual_weight > 0 and not layout.FEATURES.model.is_file():
        print(f"train: train.perceptual_weight > 0 needs the feature network {layout.FEATURES.model}; run "
              f"`dvc repro features` first", file=sys.stderr)
        return 2
    config = resolved_config(params, beta)
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    if master_process:
        try:
            tracking.prepare_store(uri, params.tracking.experiment)  # before any work: an unreachable store fails now
        except tracking.TrackingError as e:
            print(f"train: {e}", file=sys.stderr)
            return 1  # torchrun then stops the other ranks
    ds = data.load(Path(params.data.root) / layout.BATCHES, params.data.subset, params.seed)
    core = VAE(params.model).to(device, memory_format=torch.channels_last)
    # DDP all-reduces the gradients in backward (and broadcasts rank 0's weights now).
    model = DistributedDataParallel(core, device_ids=[device] if device.type == "cuda" else None) \
        if world_size > 1 else core
    n_train = len(ds.train_x)
    run_name = f"{preset}/beta={beta:g}" if preset else f"beta={beta:g}"
    description = (f"{preset + ' preset: ' if preset else ''}β = {beta:g}, {params.train.epochs} epochs on "
                   f"{n_train} CIFAR-10 training images, z = {params.model.latent_dim}, {params.model.likelihood} decoder"
                   + (f", flow prior ({params.model.prior_flows} couplings)" if params.model.prior_flows else "")
                   + (f", MMD weight {params.train.mmd_weight:g}" if params.train.mmd_weight > 0 else "")
                   + (f", perceptual weight {params.train.perceptual_weight:g}"
                      if params.train.perceptual_weight > 0 else ""))
    ckpt = storage.load_checkpoint(paths.checkpoint)  # every rank reads it; only rank 0 writes it
    if ckpt is not None and ckpt["config"] != config:
        if master_process:
            print(f"train: ignoring {paths.checkpoint}: it was written with other params")
        ckpt = None
    if master_process:
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
        storage.write_text(paths.steps, pd.DataFrame(state["steps"]).to_csv(index=False))
        log_row(row)
        # This epoch's per-step rows, at their global step (MLflow's x axis for train_step_*).
        for r in state["steps"]:
            if r["epoch"] > row["epoch"] - 1:
                tracking.log_metrics({f"train_step_{k}": v for k, v in r.items() if k not in ("step", "epoch")
                                      and math.isfinite(v)}, step=int(r["step"]))

    tags = {"dvc_stage": f"train@{paths.tag}", "git_commit": tracking.git_commit(root), "beta": f"{beta:g}",
            "preset": preset or "default"}
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run` (also queued): find a sweep's runs by its name
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if master_process:
        print(f"train: β = {beta:g} on {device}" + (f" × {world_size} processes" if world_size > 1 else "")
              + f", {n_train} images, {count_parameters(core) / 1e6:.2f}M parameters, MLflow {uri}")
    store = (tracking.run(uri, params.tracking.experiment, run_name, run_id=run_id, tags=tags, description=description)
             if master_process else nullcontext(None))
    try:
        with store as active:
            if master_process:
                run_id = open_run(active, run_id, ckpt, paths.checkpoint, rows, uri, log_row, config, n_train,
                                  len(ds.test_x), core)
            # The frozen feature network (stage `features`) of the perceptual term, when it is on.
            perceptual = (feature_activations(network.load(layout.FEATURES.model, device)[0], device,
                                              params.train.bf16) if params.train.perceptual_weight > 0 else None)
            history = train(model, ds.train_x, ds.test_x, beta, params.train, params.seed, device, rank=rank,
                            world_size=world_size, on_epoch=on_epoch, progress=master_process,
                            resume=ckpt["state"] if ckpt else None, perceptual=perceptual)
            seconds = previous_seconds + time.perf_counter() - t0
            last = history[-1]
            if master_process:
                summary = {
                    "beta": beta,
                    "train_seconds": seconds,
                    "images_per_second": sum(r["images_per_second"] for r in history) / len(history),
                    "final_train_loss": last["train_loss"],
                    "final_test_bpd": last["test_bpd"],
                    # The Gaussian decoder's σ̂ at the end ([-1, 1] pixel scale; None where σ is per pixel).
                    "final_sigma": last["sigma"] if math.isfinite(last["sigma"]) else None,
                    "parameters": count_parameters(core),
                    "epochs": params.train.epochs,
                    "n_train": n_train,
                    "processes": world_size,
                    "precision": precision_name(device, params.train.bf16),  # train.bf16 where the hardware has it
                    # ru_maxrss is in KiB on Linux: this (rank 0's) process's peak resident memory.
                    "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
                storage.save_model(paths.model, core, config)
                storage.write_json(paths.train_metrics, summary)
                tracking.log_metrics({"train_seconds": seconds})
                tracking.log_artifact(paths.history)
                tracking.log_artifact(paths.steps)
                description += f"; final test {last['test_bpd']:.3f} bits/dim"
                tracking.set_description(description)
                # The model is logged and registered by sampler@<beta>, with the sampler it draws from.
                storage.write_json(paths.run_file, {"run_id": run_id, "run_name": run_name, "tracking_uri": uri,
                                                    "experiment": params.tracking.experiment})
    except NonFiniteLossError as e:
        if master_process:  # every rank raised it together; one message
            kept = f"; the last good checkpoint is kept in {paths.checkpoint}" if paths.checkpoint.is_file() else ""
            print(f"train: {e}{kept}", file=sys.stderr)
        return 1
    if world_size > 1:
        dist.barrier()  # the other ranks leave only once rank 0 has written everything
    if master_process:
        paths.checkpoint.unlink(missing_ok=True)  # done: the next run of this stage starts from scratch
        print(f"train: β = {beta:g} done in {seconds / 60:.1f} min, test {last['test_bpd']:.3f} bits/dim")
    return 0


def open_run(active: str, run_id: str | None, ckpt: dict | None, checkpoint: Path, rows: list[dict], uri: str,
             log_row: Callable[[dict], None], config: dict, n_train: int, n_test: int, model: torch.nn.Module) -> str:
    """Rank 0, in the MLflow run `active`: continue a resumed run's metrics (re-logging epochs a kill kept from
    MLflow) or log a new run's params; returns the run id."""
    if ckpt is not None and active == run_id:
        print(f"train: resuming after epoch {ckpt['state']['epoch']} from {checkpoint}; "
              f"MLflow run {run_id} continues")
        tracking.set_tags({"resumed_from_epoch": str(ckpt["state"]["epoch"])})
        # An epoch checkpointed just before the kill may not have reached MLflow yet.
        logged = {step for step, _ in tracking.metric_history(uri, run_id, "train_loss")}
        for row in rows:
            if int(row["epoch"]) not in logged:
                log_row(row)
        return active
    if ckpt is not None:
        print(f"train: resuming after epoch {ckpt['state']['epoch']}; its MLflow run is gone, "
              f"logging into a new run {active}")
        tracking.set_tags({"resumed_from_epoch": str(ckpt["state"]["epoch"])})
        for row in rows:
            log_row(row)
    tracking.log_params(flatten(config) | {"data.n_train": n_train, "data.n_test": n_test,
                                           "model.parameters": count_parameters(model)})
    return active


if __name__ == "__main__":
    sys.exit(main())
