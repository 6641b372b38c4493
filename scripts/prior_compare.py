"""How far each ex-post sampler is from what the decoder can show: fit the Gaussian mixture and the diffusion prior
to the training codes of one trained VAE, decode n samples of each, and score them with the judge against the test
images, beside the ceiling (the decoded codes of training images held out of both fits) and the mixture at lower
temperatures. A probe for choosing `sampling`, outside the DAG (needs the judge: `dvc repro judge`):

    python scripts/prior_compare.py models/sweep/beta_1/model.pt --n 5000 \
        --diffusion hidden=256,blocks=3,train_steps=2000 --diffusion hidden=256,blocks=3,train_steps=6000

Each --diffusion overrides keys of params.yaml's sampling.diffusion (default: that section as it is).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from vaelab import classifier, data, density, diffusion, layout, metrics, network, quality
from vaelab.model import load_model
from vaelab.params import DiffusionConfig, from_dict, load_params, to_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a model file saved by a train, sweep or preset stage")
    parser.add_argument("--n", type=int, default=5000, help="samples judged per sampler")
    parser.add_argument("--diffusion", action="append", default=[], metavar="KEY=VALUE,...",
                        help="a diffusion prior to fit: overrides of sampling.diffusion (repeatable)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8])
    parser.add_argument("--no-mixture", action="store_true", help="skip the mixture (about 2 min on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    params = load_params()
    device = torch.device("cpu")
    model, config = load_model(args.model, device)
    bf16 = config["train"]["bf16"]
    ds = data.load(Path(params.data.root) / layout.BATCHES)
    judge, judge_cfg = network.load(layout.CLASSIFIERS["judge"].model, device)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(ds.train_x), generator=g)
    held, fit_idx = perm[:args.n], perm[args.n:]  # the ceiling's images take no part in either fit
    t0 = time.perf_counter()
    mu, _ = metrics.encode(model, ds.train_x, device, 500, bf16)
    print(f"encoded {len(mu)} training images ({time.perf_counter() - t0:.0f} s)", flush=True)
    ref, _ = classifier.predict(judge, ds.test_x, device, bf16=judge_cfg.bf16)

    def code_stats(z: torch.Tensor) -> str:
        """How the drawn codes compare with the held-out ones, on the encoder's scale: the Fréchet distance
        between Gaussians fitted to each (a sampler's own job is to match these), the ratio of mean norms, and the
        median over dimensions of the ratio of standard deviations."""
        ref = mu[held].double()
        fd = quality.frechet_distance(z.double(), ref)
        norm = float(z.double().norm(dim=1).mean() / ref.norm(dim=1).mean())
        sd = float((z.double().std(0) / ref.std(0).clamp_min(1e-12)).median())
        return f"codes: FD to held-out codes {fd:.2f}, norm ratio {norm:.3f}, median SD ratio {sd:.3f}"

    def score(name: str, z: torch.Tensor) -> None:
        images = torch.cat([metrics.decode_uint8(model, zb) for zb in z.split(500)])
        feats, probs = classifier.predict(judge, images, device, bf16=judge_cfg.bf16)
        q = quality.sample_quality(feats, probs, ref, 50, 1000, args.seed, 100)
        print(f"{name:28s} FCD {q['fcd']:6.2f} [{q['fcd_lo']:.2f}, {q['fcd_hi']:.2f}]  KID {q['kid']:.4f}  "
              f"confidence {q['judge_confidence']:.3f}  class entropy {q['class_entropy']:.2f} bits; "
              f"{code_stats(z)}", flush=True)

    score("ceiling (held-out codes)", mu[held])
    if not args.no_mixture:
        t0 = time.perf_counter()
        gmm = density.fit_gmm(mu[fit_idx], params.sampling.gmm_components, params.sampling.gmm_iterations, args.seed)
        print(f"mixture fitted ({time.perf_counter() - t0:.0f} s)", flush=True)
        score("mixture", density.sample(gmm, args.n, torch.Generator().manual_seed(args.seed + 1)))
    for spec in args.diffusion or [""]:
        overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=") for kv in spec.split(",") if kv)}
        cfg = from_dict(DiffusionConfig, to_dict(params.sampling.diffusion) | overrides)
        t0 = time.perf_counter()
        with torch.enable_grad():
            prior = diffusion.fit(mu[fit_idx], cfg, args.seed)
        print(f"diffusion prior {spec or 'of params.yaml'} fitted ({time.perf_counter() - t0:.0f} s); "
              f"{cfg.prediction} loss {diffusion.loss(prior, mu[fit_idx][:5000], 1):.4f} fitted / "
              f"{diffusion.loss(prior, mu[held], 1):.4f} held out", flush=True)
        for temp in args.temperatures:
            t0 = time.perf_counter()
            z = diffusion.sample(prior, args.n, torch.Generator().manual_seed(args.seed + 2), temperature=temp)
            score(f"  temperature {temp:g} ({time.perf_counter() - t0:.0f} s)", z)


if __name__ == "__main__":
    main()
