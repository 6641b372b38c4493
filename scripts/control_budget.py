"""How the control study's scores depend on its recipe: train one control VAE per β (one seed, the control section's
model with a given fixed σ, number of epochs, hidden layer and learning rate) on the full rendered set and print its
rate, KL per dimension, MIG and DCI. A probe for choosing the `control` section's recipe, outside the DAG:

    python scripts/control_budget.py --sigma 0.2 --epochs 12 --betas 16 --mlp-hidden 256 --seed 1
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from vaelab import control, disentanglement
from vaelab.data import to_unit
from vaelab.model import VAE
from vaelab.params import load_params
from vaelab.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--mlp-hidden", type=int, default=None, help="control.mlp_hidden (default: params.yaml)")
    parser.add_argument("--lr", type=float, default=None, help="control.lr (default: params.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = load_params().control
    cfg = dataclasses.replace(base, fixed_sigma=args.sigma, epochs=args.epochs,
                              mlp_hidden=base.mlp_hidden if args.mlp_hidden is None else args.mlp_hidden,
                              lr=base.lr if args.lr is None else args.lr)
    images, factors = control.render()
    train_idx, test_idx = control.split(len(images), cfg.test_fraction, 0)
    x = torch.from_numpy(images)
    pick = np.random.default_rng(0).choice(len(images), cfg.score_images, replace=False)
    for beta in args.betas:
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        model = VAE(cfg.model_config()).to(memory_format=torch.channels_last)
        history = train(model, x[train_idx], x[test_idx], beta, cfg.train_config(), args.seed, torch.device("cpu"),
                        progress=False)
        model.eval()
        with torch.no_grad():
            mu, logvar = model.encoder(to_unit(x[pick]))
        kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).mean(0).sort(descending=True).values
        s = disentanglement.scores(mu.numpy(), factors[pick], cfg.mig_bins, cfg.dci_train, cfg.dci_test)
        print(f"σ {args.sigma:g}, β {beta:g}, {args.epochs} epochs, MLP {cfg.mlp_hidden}, lr {cfg.lr:g}, seed {args.seed}: test recon {history[-1]['test_recon']:.0f}, "
              f"KL {history[-1]['test_kl']:.1f} nats (per dim {np.round(kl.numpy(), 2).tolist()}); MIG "
              f"{s['mig']:.3f} (per factor {np.round(s['mig_per_factor'], 2).tolist()}), DCI D "
              f"{s['dci_disentanglement']:.3f} C {s['dci_completeness']:.3f} I {s['dci_informativeness']:.3f}; "
              f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
