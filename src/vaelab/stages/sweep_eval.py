"""DVC stages `sweep_eval@<beta>` and `sweep_seed_eval@<beta>-<seed>`: measure one point of the β sweep on
`sweep.eval_images` test images, each number with its 95% bootstrap interval: rate, distortion (learned σ and one fixed σ), PSNR, the judge's FCD of the
reconstructions and of an ex-post mixture sampler, active units, the KL spectrum, Gaussian TC, the controlled-factor
scores and how visible a traversal is."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import torch

from vaelab import (classifier, data, density, factors, layout, metrics, network, organisation, quality, storage,
                    sweep, tracking)
from vaelab.intervals import mean_interval, with_interval
from vaelab.model import load_model
from vaelab.stages import runtime


def measure(model, ds, judge, params, device: torch.device) -> tuple[dict, torch.Tensor]:
    """Every number of one sweep point, and its mean KL per dimension (D,) in nats."""
    sw, ev, seed, reps = params.sweep, params.evaluate, params.seed, params.evaluate.bootstrap
    n = min(sw.eval_images, len(ds.test_x))
    x = ds.test_x[:n]
    images = metrics.per_image(model, x, device, ev.batch_size, False, seed)
    m = metrics.likelihood_metrics(images, reps, seed)
    mu, logvar, kl_dims = images["mu"], images["logvar"], images["kl_dims"]
    m |= organisation.organisation_metrics(mu, logvar, ev.active_thresholds, reps, seed)
    m |= sweep.spectrum(kl_dims, 0.9, reps, seed)
    # The learned sigma sets what a nat of rate costs in squared error: beta * 2 sigma^2 (per pixel, on the [-1, 1]
    # scale) is the weight of the KL against the squared error, the "normalised beta" of this likelihood.
    sigma = float(model.log_sigma.exp().mean())
    m |= {"decoder_sigma": sigma, "beta_2sigma2": 0.0}
    recon = torch.cat([metrics.decode_uint8(model, z) for z in mu.split(ev.batch_size)])
    fixed = sweep.fixed_sigma_distortion(x, recon, sw.fixed_sigma)
    m |= with_interval("distortion_fixed_sigma_nats", *mean_interval(fixed, reps, seed))
    # The judge (never trained against) on reconstructions and on samples of a mixture fitted to training codes.
    judge_net, judge_cfg = judge
    ref = classifier.predict(judge_net, x, device, bf16=judge_cfg.bf16)[0]
    kid_size = min(ev.kid_subset_size, n)

    def judged(u8: torch.Tensor, prefix: str) -> dict:
        feats, probs = classifier.predict(judge_net, u8, device, bf16=judge_cfg.bf16)
        q = quality.sample_quality(feats, probs, ref, ev.kid_subsets, kid_size, seed, reps)
        return {f"{prefix}{k}": v for k, v in q.items()}

    m |= judged(recon, "recon_")
    train_mu, _ = metrics.encode(model, ds.train_x, device, ev.batch_size, False)
    gmm = density.fit_gmm(train_mu, params.sampling.gmm_components, params.sampling.gmm_iterations, seed)
    z = density.sample(gmm, n, torch.Generator().manual_seed(seed))
    m |= judged(torch.cat([metrics.decode_uint8(model, zb) for zb in z.split(ev.batch_size)]), "sampler_")
    n_factor = min(ev.factor_images, n)
    transforms = factors.factor_transforms(ev)
    base, changed = factors.factor_codes(lambda t: metrics.encode(model, t, device, ev.batch_size, False)[0],
                                         x[:n_factor], transforms)
    m |= factors.factor_metrics(base, changed, transforms, ev.readout_l2, reps, seed)[0]
    m |= sweep.traversal_visibility(model, mu[: min(500, n)], kl_dims.mean(0), sw.traversal_dims,
                                    sw.traversal_span, reps, seed)
    m |= {"n_eval_images": n, "fixed_sigma": sw.fixed_sigma, "traversal_dims": sw.traversal_dims,
          "traversal_span": sw.traversal_span, "bootstrap_reps": reps}
    return m, kl_dims.mean(0)


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.sweep_stage("sweep_eval", argv, __doc__)
    torch.set_grad_enabled(False)
    device = runtime.device()
    model, config = load_model(paths.model, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["data_seed"])
    m, kl = measure(model, ds, network.load(layout.JUDGE.model, device), params, device)
    m["beta"], m["seed"] = beta, config["seed"]
    m["beta_2sigma2"] = beta * 2 * m["decoder_sigma"] ** 2
    storage.write_json(paths.point, m)
    storage.write_text(paths.kl_per_dim, pd.DataFrame({"dim": range(len(kl)), "kl_nats": kl.tolist()})
                       .to_csv(index=False))
    run = storage.read_json(paths.run_file)
    with tracking.run(run["tracking_uri"], run["experiment"], run["run_name"], run_id=run["run_id"]):
        tracking.log_metrics({k: v for k, v in m.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                             step=config["train"]["epochs"])
    print(f"sweep_eval: β = {beta:g}, seed {config['seed']}: rate {m['rate_nats']:.1f} nats, distortion {m['distortion_nats']:.0f} nats, "
          f"PSNR {m['test_psnr']:.2f} dB, σ̂ {m['decoder_sigma']:.4f}, active {m['active_units_0p01']}, effective "
          f"units {m['effective_units']:.1f}, recon FCD {m['recon_fcd']:.1f}, sampler FCD {m['sampler_fcd']:.1f}")
    return runtime.finish(paths.eval_stage, 0)


if __name__ == "__main__":
    sys.exit(main())
