"""Where prior samples lose to reconstructions: the judge's numbers for codes at growing distance from the codes
of training images, beside the model's own prior samples.

    python scripts/prior_gap.py [--beta 1] [--n 10000] [--model PATH]

Needs a trained model and the judge (`dvc repro evaluate@<beta>`, or a preset's model with --model). Every set of
codes is decoded and judged as evaluate@<beta> judges prior samples (FCD and KID against the test images,
confidence, class entropy), and `NN dist` is the median distance of its codes to the nearest posterior mean of a
training image, so it says how far from copying the training set each set is. The sets:

- `prior`: N(0, I) noise through the model's prior, the samples evaluate@<beta> reports;
- `posterior, train` / `posterior, test`: z ~ q(z|x) of training / test images. The first is what a prior equal to
  the aggregate posterior of the training set would give (it copies training codes); the second is the ceiling of
  any prior that generalises: codes of images it has never seen;
- `train mu + h sd`: training codes moved by isotropic Gaussian noise of h standard deviations of the codes (a
  kernel density estimate on the training codes): how fast decoded quality falls as codes leave the training codes;
- `NN midpoint`: the midpoint of a training code and its nearest neighbour among the training codes.

Prints a table; writes nothing and asserts nothing. About 2 min in all on a 2-core CPU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vaelab import classifier, data, metrics, quality, storage
from vaelab.model import load_model
from vaelab.params import load_params
from vaelab.stages import layout


def nn_distance(z: torch.Tensor, reference: torch.Tensor, n: int = 1000) -> float:
    """Median Euclidean distance of the first n codes z (N, D) to their nearest neighbour in reference (M, D)."""
    return float(torch.cdist(z[:n], reference).min(1).values.median())


def nearest_other(z: torch.Tensor, own: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Index in reference (M, D) of the nearest neighbour of each row of z (B, D) other than reference[own] (B,)."""
    dist = torch.cdist(z, reference)  # (B, M)
    dist[torch.arange(len(z)), own] = float("inf")
    return dist.argmin(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beta", default="1", help="the model of train@<beta> (default 1)")
    ap.add_argument("--model", default=None, help="a model file instead (e.g. presets/NAME/models/beta_1/model.pt)")
    ap.add_argument("--n", type=int, default=10_000, help="codes per set (default 10000)")
    ap.add_argument("--params", default=str(layout.PARAMS_FILE))
    args = ap.parse_args()
    params = load_params(args.params)
    layout.set_threads(params.train.threads)
    device = layout.device()
    model_path = args.model or layout.BetaPaths(args.beta).model
    model, config = load_model(model_path, device)
    bf16 = config["train"]["bf16"]
    judge_net, judge_cfg = classifier.load(layout.JUDGE.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    ev, n = params.evaluate, args.n
    test_feats, _ = classifier.predict(judge_net, ds.test_x, device, bf16=judge_cfg.bf16)
    mu, logvar = metrics.encode(model, ds.train_x, device, ev.batch_size, bf16)
    test_mu, test_logvar = metrics.encode(model, ds.test_x, device, ev.batch_size, bf16)
    g = torch.Generator().manual_seed(params.seed)

    def posterior(m: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(len(m), (n,), generator=g)
        return m[idx] + torch.exp(0.5 * lv[idx]) * torch.randn(n, m.shape[1], generator=g)

    sets: dict[str, torch.Tensor] = {
        "prior": model.codes(torch.randn(n, model.cfg.latent_dim, generator=g).to(device)).cpu(),
        "posterior, train": posterior(mu, logvar),
        "posterior, test": posterior(test_mu, test_logvar),
    }
    anchor_idx = torch.randint(len(mu), (n,), generator=g)
    anchors = mu[anchor_idx]
    for h in (0.1, 0.25, 0.5, 0.75, 1.0):
        sets[f"train mu + {h:g} sd"] = anchors + h * mu.std(0) * torch.randn(anchors.shape, generator=g)
    neighbour = torch.cat([nearest_other(a, i, mu) for a, i in zip(anchors.split(1000), anchor_idx.split(1000))])
    sets["NN midpoint"] = 0.5 * (anchors + mu[neighbour])

    print(f"model: {model_path}; {n} codes per set; FCD and KID against the "
          f"{len(ds.test_x)} test images")
    print("| codes | NN dist | FCD | KID | judge confidence | class entropy (bits) |\n|---|---:|---:|---:|---:|---:|")
    for name, z in sets.items():
        images = torch.cat([metrics.decode_uint8(model, zb) for zb in z.split(ev.batch_size)])
        feats, probs = classifier.predict(judge_net, images, device, bf16=judge_cfg.bf16)
        q = quality.sample_quality(feats, probs, test_feats, ev.kid_subsets, ev.kid_subset_size, params.seed)
        print(f"| {name} | {nn_distance(z, mu):.2f} | {q['fcd']:.2f} | {q['kid']:.3f} | {q['judge_confidence']:.3f} "
              f"| {q['class_entropy']:.2f} |", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    try:
        main()
    except FileNotFoundError as e:  # no trained model or judge yet: say which, without a traceback
        raise SystemExit(f"prior_gap: {e}") from None
