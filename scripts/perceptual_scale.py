"""How large λ_p must be for the perceptual term to matter: on test images and a trained model, the norm of the
gradient of −log p(x|z) and of D_feat(x, x̂) with respect to the decoder's mean image x̂, and D_feat itself.

    python scripts/perceptual_scale.py [--model models/beta_1/model.pt] [--images 256]

Needs a trained model (dvc repro train@1) and the feature network (dvc repro features). λ_p equal to the printed
ratio gives the two terms gradients of the same size at this model's reconstructions. Prints numbers; writes
nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vaelab import classifier, data
from vaelab.data import to_unit
from vaelab.loss import perceptual_distance, recon_nll
from vaelab.model import load_model
from vaelab.stages import layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/beta_1/model.pt")
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    device = torch.device("cpu")
    model, config = load_model(args.model, device)
    net, cfg = classifier.load(layout.FEATURES.model, device)
    ds = data.load(Path("data") / layout.BATCHES, config["data"]["subset"], config["seed"])
    x = to_unit(ds.test_x[: args.images])
    with torch.no_grad():
        mu, _ = model.encoder(x)
        params = model.decoder(mu)
    mean = params[:, :3].clone().requires_grad_(True)
    full = torch.cat([mean, params[:, 3:]], dim=1)
    nll = recon_nll(x, full, model.cfg.likelihood, model.log_sigma).sum()
    (g_nll,) = torch.autograd.grad(nll, mean)
    mean2 = params[:, :3].clone().requires_grad_(True)
    d = perceptual_distance(x, mean2, lambda v: net.activations((v + 1) / 2))
    (g_d,) = torch.autograd.grad(d.sum(), mean2)
    n_nll, n_d = g_nll.flatten(1).norm(dim=1), g_d.flatten(1).norm(dim=1)  # (B,) per image
    print(f"model {args.model}: {model.cfg.likelihood} decoder, log sigma {model.log_sigma.detach().flatten().tolist()}")
    print(f"feature network: {cfg.arch} {list(cfg.widths)}")
    print(f"-log p(x|z) of the reconstructions: {float(nll.detach()) / len(x):.0f} nats per image")
    print(f"D_feat(x, x_hat): mean {float(d.mean()):.3f} (median {float(d.median()):.3f}) per image")
    print(f"gradient norm per image wrt x_hat: recon {float(n_nll.median()):.1f}, D_feat {float(n_d.median()):.4f}")
    print(f"λ_p for gradients of equal size (median ratio): {float((n_nll / n_d).median()):.0f}")


if __name__ == "__main__":
    main()
