"""Wall time of the pipeline's heavy pieces on this machine's accelerator (or CPU), on random data of CIFAR-10's
size, and the default `dvc repro` time they add up to.

    python benchmarks/pipeline_speed.py [--epochs 2] [--n-train 50000]

Times VAE training epochs and judge epochs (the first epoch of each is a warm-up and not counted), encoding,
the importance-weighted bound, total correlation and judge scoring as evaluate@<beta> runs them. Data loading,
MLflow logging and figures are not included. Prints numbers; asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from vaelab import classifier, metrics, organisation
from vaelab.model import VAE
from vaelab.params import load_params
from vaelab.train import train


def timed(fn):
    """(result, seconds) of fn(), synchronising CUDA so the time covers the work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs + 1 warm-up (VAE and judge)")
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    p = load_params(args.params)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(p.train.threads or os.cpu_count() or 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.n_train, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(args.n_train) % 10
    n_test = max(args.n_train // 5, 1000)
    xt = x[:n_test]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.n_train} train / {n_test} test images")

    cfg = dataclasses.replace(p.train, epochs=args.epochs + 1)
    model = VAE(p.model).to(device, memory_format=torch.channels_last)
    hist = train(model, x, xt, 1.0, cfg, 0, device, progress=False)
    vae_epoch = sum(r["epoch_seconds"] for r in hist[1:]) / args.epochs
    print(f"VAE epoch: {vae_epoch:.1f} s ({args.n_train / vae_epoch:.0f} images/s)")

    jcfg = dataclasses.replace(p.judge, epochs=args.epochs + 1)
    epochs: list[float] = []
    jmodel = classifier.train_classifier(x, y, jcfg, device, on_epoch=lambda r: epochs.append(r["epoch_seconds"]))
    judge_epoch = sum(epochs[1:]) / args.epochs
    print(f"judge epoch: {judge_epoch:.1f} s")

    e = p.evaluate
    (mu, logvar), t_enc = timed(lambda: metrics.encode(model, torch.cat([x, xt]), device, e.batch_size))
    _, t_iw = timed(lambda: metrics.iw_log_likelihood(model, xt[: e.iw_images], device, e.iw_samples, e.batch_size))
    _, t_tc = timed(lambda: organisation.sampled_total_correlation(mu[-n_test:], logvar[-n_test:], min(e.tc_batch_size, n_test)))
    _, t_judge = timed(lambda: [classifier.predict(jmodel, xt, device) for _ in range(3)])  # samples, recons, test
    evaluate = t_enc + t_iw + t_tc + t_judge
    print(f"evaluate pieces: encode {t_enc:.1f} s, IW bound {t_iw:.1f} s, TC {t_tc:.1f} s, judge scoring {t_judge:.1f} s")

    if args.n_train == 50_000:
        total = 2 * p.train.epochs * vae_epoch + p.judge.epochs * judge_epoch + 2 * evaluate
        print(f"default run estimate (2 betas x {p.train.epochs} epochs, judge {p.judge.epochs} epochs, "
              f"2 evaluations): {total / 60:.1f} min plus data loading, MLflow logging and figures")

if __name__ == "__main__":
    main()
