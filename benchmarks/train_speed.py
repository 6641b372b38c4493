"""Training throughput of the default model (params.yaml): images/s and achieved GFLOP/s, without and with the
perceptual term (the feature network of params.yaml's `features` section, untrained: the cost is the same).

    python benchmarks/train_speed.py [--steps 30] [--batch-size 128] [--fp32] [--profile]

The step is `vaelab.speed.train_step`, the one stage `timings` measures in every run. FLOPs are counted by
torch.utils.flop_counter for one full train step (forward, loss, backward); the optimizer step is timed but not
counted. bf16 autocast is used where the CPU computes bf16 natively (vaelab.precision). Prints numbers; asserts
nothing.
"""
from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from vaelab import speed
from vaelab.params import load_params
from vaelab.precision import count_parameters, precision_name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    ap.add_argument("--fp32", action="store_true", help="disable bf16 autocast")
    ap.add_argument("--profile", action="store_true", help="also print where one step's time goes")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    params = load_params(args.params)
    bs = args.batch_size or params.train.batch_size
    bf16 = params.train.bf16 and not args.fp32
    torch.set_num_threads(params.train.threads or torch.get_num_threads())
    m = params.model
    model, opt, x_u8, activations = speed.setup(params, bs, bf16)
    print(f"model: z={m.latent_dim} widths={list(m.widths)} res_blocks={m.res_blocks} decoder: upsample={m.upsample} "
          f"decoder_res_blocks={m.decoder_res_blocks} decoder_widths={list(m.decoder_widths) or 'as encoder'} "
          f"sigma={m.sigma}, likelihood={m.likelihood}, {count_parameters(model) / 1e6:.2f}M parameters")
    print(f"setup: batch {bs}, {precision_name(torch.device('cpu'), bf16)} (train.bf16 {params.train.bf16}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, CPU {torch.backends.cpu.get_cpu_capability()}")
    weight = params.train.perceptual_weight or 1.0
    for label, w in (("without perceptual term", 0.0),
                     (f"with perceptual term ({params.features.arch} {list(params.features.widths)})", weight)):
        step = speed.train_step(params, model, opt, x_u8, activations, w, bf16)
        with FlopCounterMode(display=False) as counter:
            step()
        flops_per_step = counter.get_total_flops()
        ips = speed.images_per_second(step, bs, args.steps, args.warmup)
        print(f"{label}:")
        print(f"  train FLOPs per image: {flops_per_step / bs / 1e6:.1f} MFLOP (forward + backward)")
        print(f"  training images/s:     {ips:.0f}")
        print(f"  achieved GFLOP/s:      {flops_per_step / bs * ips / 1e9:.1f}")
        print(f"  one 50k-image epoch:   {50_000 / ips:.1f} s")
    if args.profile:
        print("one step with the perceptual term, ms per part (median):")
        for part, ms in speed.profile_step(params, bs, max(args.steps // 3, 3), bf16).items():
            print(f"  {part:35s} {ms:8.1f}")


if __name__ == "__main__":
    main()
