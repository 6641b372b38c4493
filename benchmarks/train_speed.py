"""Training throughput of the default model (params.yaml): images/s and achieved GFLOP/s, without and with the
perceptual term (the feature network of params.yaml's `features` section, untrained: the cost is the same).

    python benchmarks/train_speed.py [--steps 30] [--batch-size 128] [--fp32]

FLOPs are counted by torch.utils.flop_counter for one full train step (forward, loss, backward); the optimizer
step is timed but not counted. Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vaelab.network import build
from vaelab.data import to_unit
from vaelab.loss import vae_loss
from vaelab.model import VAE
from vaelab.precision import count_parameters
from vaelab.params import load_params
from vaelab.precision import autocast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    ap.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    params = load_params(args.params)
    bs = args.batch_size or params.train.batch_size
    bf16 = params.train.bf16 and not args.fp32
    torch.set_num_threads(params.train.threads or torch.get_num_threads())
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = VAE(params.model).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.train.lr)
    x_u8 = torch.randint(0, 256, (bs, 3, 32, 32), dtype=torch.uint8)

    features = build(params.features).eval().requires_grad_(False).to(memory_format=torch.channels_last)

    def activations(x: torch.Tensor) -> list[torch.Tensor]:
        with autocast(device, bf16):
            return [a.float() for a in features.activations((x + 1) / 2)]

    print(f"model: z={params.model.latent_dim} widths={list(params.model.widths)} res_blocks={params.model.res_blocks} "
          f"decoder: upsample={params.model.upsample} decoder_res_blocks={params.model.decoder_res_blocks} "
          f"decoder_widths={list(params.model.decoder_widths) or 'as encoder'} sigma={params.model.sigma}, "
          f"likelihood={params.model.likelihood}, {count_parameters(model) / 1e6:.2f}M parameters")
    print(f"setup: batch {bs}, bf16 autocast {bf16}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    weight = params.train.perceptual_weight or 1.0
    for label, w in (("without perceptual term", 0.0), (f"with perceptual term ({params.features.arch} "
                                                        f"{list(params.features.widths)})", weight)):
        def step() -> None:
            x = to_unit(x_u8).contiguous(memory_format=torch.channels_last)
            with autocast(device, bf16):
                out = model(x)
            loss = vae_loss(x, out, 1.0, params.model.likelihood, model.log_sigma, perceptual=activations,
                            perceptual_weight=w)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        with FlopCounterMode(display=False) as counter:
            step()
        flops_per_step = counter.get_total_flops()
        for _ in range(args.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = time.perf_counter() - t0
        ips = args.steps * bs / dt
        print(f"{label}:")
        print(f"  train FLOPs per image: {flops_per_step / bs / 1e6:.1f} MFLOP (forward + backward)")
        print(f"  training images/s:     {ips:.0f}")
        print(f"  achieved GFLOP/s:      {flops_per_step * args.steps / dt / 1e9:.1f}")
        print(f"  one 50k-image epoch:   {50_000 / ips:.1f} s")


if __name__ == "__main__":
    main()
