"""Data-parallel training throughput: the real training loop (`vaelab.train.train`, default model and perceptual
term of params.yaml) in 1 and in N processes (DDP, gloo on CPU), the cores shared out over the processes.

    python benchmarks/ddp_speed.py [--processes 1 2] [--steps 40]

Each setting trains one epoch of `steps` global batches of train.batch_size random images (the feature network is
untrained: the cost is the same) and prints the loop's own images/s (training steps only, no test pass). On CPU,
processes compete for the same cores: more processes help only where one process leaves cores idle. Prints
numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from vaelab.network import build
from vaelab.model import VAE
from vaelab.params import load_params
from vaelab.precision import autocast
from vaelab.train import train


def worker(rank: int, world: int, folder: str, params_file: str, steps: int, results: "mp.Queue") -> None:
    params = load_params(params_file)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    device = torch.device("cpu")
    torch.manual_seed(rank)
    core = VAE(params.model).to(memory_format=torch.channels_last)
    model = DistributedDataParallel(core) if world > 1 else core
    features = build(params.features).eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def activations(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(device, params.train.bf16):
            return [a.float() for a in features.activations((x + 1) / 2)]

    cfg = dataclasses.replace(params.train, epochs=1)
    n = steps * cfg.batch_size
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    history = train(model, x, x[:world * 2], 1.0, cfg, seed=0, device=device, rank=rank, world_size=world,
                    progress=False, perceptual=activations if cfg.perceptual_weight > 0 else None)
    if rank == 0:
        results.put(history[0]["images_per_second"])
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=40, help="global batches timed per setting")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    print(f"default model and recipe of {args.params}: global batch {params.train.batch_size}, bf16 "
          f"{params.train.bf16}, perceptual weight {params.train.perceptual_weight:g}; {os.cpu_count()} cores, "
          f"torch {torch.__version__}")
    ctx = mp.get_context("spawn")
    for world in args.processes:
        results = ctx.SimpleQueue()
        with tempfile.TemporaryDirectory() as folder:
            mp.start_processes(worker, args=(world, folder, args.params, args.steps, results), nprocs=world,
                               join=True, start_method="spawn")
        ips = results.get()
        print(f"{world} process{'es' if world > 1 else ''} x {max(1, (os.cpu_count() or 1) // world)} threads: "
              f"{ips:.0f} training images/s, one 50k-image epoch {50_000 / ips:.0f} s")


if __name__ == "__main__":
    main()
