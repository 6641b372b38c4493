"""DVC stage `evaluate@<beta>`: every test-set metric of one model, each headline number with a 95% bootstrap
interval (likelihood, organisation of the code, sample quality by the judge of z ~ N(0, I) decoded and of the
ex-post sampler), as DVC metrics and in its MLflow run. Writes metrics only, no models.

Likelihood and the code are the VAE's as trained (models/beta_<β>); every image set is decoded by the decoder of
decoder@<beta> (unprefixed keys), and each sampler's draws, the ceiling and the reconstructions again, from the
same codes, by the decoder as trained (trained_* keys): the decoder half of the ablation."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vaelab import (classifier, data, factors, layout, metrics, network, organisation, quality, samplers, storage,
                    tracking)
from vaelab.intervals import bootstrap, mean_interval, with_interval
from vaelab.loss import bits_per_dim
from vaelab.model import load_model
from vaelab.stages import runtime
from vaelab.params import SAMPLERS
from vaelab.stages.sampler import load_sampler, split_codes


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("evaluate", argv, __doc__)
    return runtime.finish(f"evaluate@{paths.tag}", run(params, beta, paths))


def run(params, beta: float, paths: layout.BetaPaths) -> int:
    """Evaluate the model in paths.model, its fine-tuned decoder in paths.tuned_model and the samplers in
    paths.sampler_dir with the default pipeline's judge and audit; write paths.eval_metrics and log them to the
    model's MLflow run. Returns the exit status."""
    ev, seed, reps = params.evaluate, params.seed, params.evaluate.bootstrap
    t0 = time.perf_counter()
    device = runtime.device()
    model, config = load_model(paths.model, device)
    tuned, _ = load_model(paths.tuned_model, device)
    try:
        fitted = {kind: load_sampler(paths, params, alternative=kind != params.sampling.prior) for kind in SAMPLERS}
    except samplers.StaleSamplerError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    bf16 = config["train"]["bf16"]
    scorers = {role: network.load(layout.CLASSIFIERS[role].model, device) for role in ("judge", "audit")}
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    n_test = len(ds.test_x)
    clock = [t0]

    def timed(name: str) -> None:
        now = time.perf_counter()
        print(f"evaluate: β = {beta:g}: {name} ({now - clock[0]:.1f} s)")
        clock[0] = now

    # Likelihood, rate, distortion, reconstruction error.
    images = metrics.per_image(model, ds.test_x, device, ev.batch_size, bf16, seed)
    m = metrics.likelihood_metrics(images, reps, seed)
    kl_dims = images["kl_dims"].mean(0)  # (D,) nats
    m["kl_dims_sum_nats"] = float(kl_dims.sum())
    # True: KL per dimension is against the trained prior, N(0, I), and sums to the rate; a flow prior's KL does
    # not split by dimension, so there it is against N(0, 1) and only says how much each dimension is used.
    m["kl_dims_against_prior"] = model.prior is None
    n_iw = min(ev.iw_images, n_test)
    iw = metrics.iw_log_likelihood(model, ds.test_x[:n_iw], device, ev.iw_samples, ev.batch_size, bf16, seed)
    m |= {f"tuned_{k}": v for k, v in metrics.likelihood_metrics(
        metrics.per_image(tuned, ds.test_x, device, ev.batch_size, bf16, seed), reps, seed).items()
          if k.startswith(("test_psnr", "test_recon_mse", "distortion_nats"))}
    m |= with_interval("test_iw_bpd", float(bits_per_dim(-iw.mean())),
                       bootstrap(lambda i: float(bits_per_dim(-iw[i].mean())), [n_iw], reps, seed))
    m["iw_samples"], m["iw_images"], m["latent_dim"], m["n_test_images"] = ev.iw_samples, n_iw, model.cfg.latent_dim, n_test
    timed("likelihood")

    # Organisation of the code.
    mu, logvar = images["mu"], images["logvar"]
    m |= organisation.organisation_metrics(mu, logvar, ev.active_thresholds, reps, seed)
    m["active_units"] = m[organisation.threshold_key(ev.active_thresholds[0])]
    m["tc_sampled"], m["tc_sampled_self_weight"] = organisation.sampled_total_correlation(mu, logvar,
                                                                                           ev.tc_batch_size, seed)
    m["tc_batch_size"] = min(ev.tc_batch_size, n_test)
    timed("total correlation, active units")
    train_mu, _ = metrics.encode(model, ds.train_x, device, ev.batch_size, bf16)
    correct = metrics.linear_probe(train_mu, ds.train_y, mu, ds.test_y, ev.probe_l2, ev.probe_steps)
    m |= with_interval("probe_accuracy", *mean_interval(correct, reps, seed))
    timed("linear probe")
    n_factor = min(ev.factor_images, n_test)
    transforms = factors.factor_transforms(ev)
    base, changed = factors.factor_codes(lambda x: metrics.encode(model, x, device, ev.batch_size, bf16)[0],
                                         ds.test_x[:n_factor], transforms)
    factor_m, response = factors.factor_metrics(base, changed, transforms, ev.readout_l2, reps, seed)
    m |= factor_m
    timed(f"{len(transforms)} factors")

    # Sample quality: each set of images scored by the judge (unprefixed keys) and by the audit network (audit_*),
    # against their features of the test images, and by the non-learned sharpness ratio.
    test_feats = {role: classifier.predict(net, ds.test_x, device, bf16=cfg.bf16)[0]
                  for role, (net, cfg) in scorers.items()}
    test_hf = quality.high_frequency_energy(ds.test_x)

    def judged(images_u8: torch.Tensor, name: str = "", labels: torch.Tensor | None = None) -> dict[str, float]:
        """Keys of one image set (name: "", "mixture_", "diffusion_", "ceiling_" or "recon_"): the judge's
        <name>fcd, ...; the audit's audit_<name>fcd, ... (its confidence as audit_<name>confidence);
        <name>sharpness_ratio."""
        out: dict[str, float] = {}
        for role, (net, cfg) in scorers.items():
            feats, probs = classifier.predict(net, images_u8, device, bf16=cfg.bf16)
            q = quality.sample_quality(feats, probs, test_feats[role], ev.kid_subsets, ev.kid_subset_size, seed, reps)
            if labels is not None:
                q |= with_interval("accuracy", *mean_interval((probs.argmax(1) == labels).double(), reps, seed))
            if role == "judge":
                out |= {name + k.replace("accuracy", "judge_accuracy"): v for k, v in q.items()}
            else:
                out |= {f"{role}_{name}" + k.replace("judge_", ""): v for k, v in q.items()}
        hf = quality.high_frequency_energy(images_u8)
        return out | with_interval(f"{name}sharpness_ratio", quality.sharpness_ratio(hf, test_hf),
                                   bootstrap(lambda i, j: quality.sharpness_ratio(hf[i], test_hf[j]),
                                             [len(hf), len(test_hf)], reps, seed + 3))

    def decoded(z: torch.Tensor, decoder_model: torch.nn.Module = tuned) -> torch.Tensor:
        return torch.cat([metrics.decode_uint8(decoder_model, zb) for zb in z.split(ev.batch_size)])

    g = torch.Generator().manual_seed(seed)
    # z ~ N(0, I) decoded directly (through the prior's flow for a flow-prior model), the literal prior samples.
    z = model.codes(torch.randn(ev.n_samples, model.cfg.latent_dim, generator=g))
    m |= judged(decoded(z))
    m["n_samples"] = ev.n_samples
    # The ex-post samplers, fitted once by sampler@<beta>: both judged (mixture_*, diffusion_*), the one every
    # consumer draws from also as sampler_*.
    chosen = params.sampling.prior
    drawn = {}
    for kind, sampler in fitted.items():
        drawn[f"{kind}_"] = samplers.draw(sampler, ev.n_samples, g)
        images_u8 = decoded(drawn[f"{kind}_"])
        m |= judged(images_u8, f"{kind}_")
        if kind == chosen:
            chosen_images = images_u8
    for prefix in ("", "audit_"):  # the chosen sampler's keys again under sampler_ (the judge's and the audit's)
        m |= {prefix + "sampler_" + k.removeprefix(f"{prefix}{chosen}_"): v for k, v in list(m.items())
              if k.startswith(f"{prefix}{chosen}_")}
    m["sampler_kind"] = chosen
    m["sampler_components"] = params.sampling.gmm_components
    timed(f"{ev.n_samples} samples from N(0, I) and from each sampler judged")
    # Not copies: the sampler's images against their nearest training images, beside two halves of real data.
    judge, judge_cfg = scorers["judge"]
    m |= quality.copy_check(chosen_images, ds.train_x,
                            lambda x: classifier.predict(judge, x, device, bf16=judge_cfg.bf16)[0],
                            min(ev.copy_images, len(chosen_images), len(ds.train_x) // 2), reps, seed)
    timed(f"{m['copy_images']} sampler images checked against their nearest training images")
    # The ceiling: codes of training images held out of the samplers' fits, decoded. A sampler that drew from the
    # codes' true distribution would score this; the distance of each sampler from it is the sampler's own error.
    _, held = split_codes(params, len(ds.train_x))
    held = held[:ev.n_samples]
    drawn["ceiling_"] = train_mu[held]
    m |= judged(decoded(drawn["ceiling_"]), "ceiling_")
    m["ceiling_images"] = len(held)
    timed("ceiling judged")
    n_rec = min(ev.n_samples, n_test)
    m |= judged(decoded(mu[:n_rec]), "recon_", ds.test_y[:n_rec])
    timed("reconstructions judged")
    # The same codes decoded by the decoder as trained: what the fine-tune changed, set by set.
    for name, z in drawn.items():
        m |= judged(decoded(z, model), f"trained_{name}")
    m |= judged(decoded(mu[:n_rec], model), "trained_recon_", ds.test_y[:n_rec])
    for prefix in ("", "audit_"):
        m |= {prefix + "trained_sampler_" + k.removeprefix(f"{prefix}trained_{chosen}_"): v
              for k, v in list(m.items()) if k.startswith(f"{prefix}trained_{chosen}_")}
    timed("the decoder as trained judged on the same codes")
    m["bootstrap_reps"] = reps
    m["eval_seconds"] = time.perf_counter() - t0

    metrics_out = {"beta": beta, **m}
    storage.write_json(paths.eval_metrics, metrics_out)
    kl = pd.DataFrame({"dim": range(len(kl_dims)), "kl_nats": kl_dims.tolist()})
    storage.write_text(paths.kl_per_dim, kl.to_csv(index=False))
    table = pd.DataFrame({"dim": range(len(kl_dims)), **{k: v.tolist() for k, v in response.items()}})
    storage.write_text(paths.factor_response, table.to_csv(index=False))
    run_info = storage.read_json(paths.run_file)
    with tracking.run(run_info["tracking_uri"], run_info["experiment"], run_info["run_name"],
                      run_id=run_info["run_id"]):
        # At the last epoch's step: the per-epoch charts end on the definitive test-set numbers.
        tracking.log_metrics(m, step=config["train"]["epochs"])
        tracking.log_artifact(paths.kl_per_dim)
        tracking.log_artifact(paths.factor_response)
    print(f"evaluate: β = {beta:g}: {m['test_bpd']:.3f} bits/dim (IW {m['test_iw_bpd']:.3f}), PSNR "
          f"{m['test_psnr']:.2f} dB, rate {m['rate_nats']:.1f} nats (Σ KL_j {m['kl_dims_sum_nats']:.1f}), "
          f"{m['active_units']} active units, Gaussian TC {m['total_correlation']:.2f} nats (sampled "
          f"{m['tc_sampled']:.1f}, self-weight {m['tc_sampled_self_weight']:.2f}), probe {m['probe_accuracy']:.3f}, "
          f"factor score {m['factor_score']:.3f}, readability R² {m['factor_r2']:.3f}; N(0, I): fcd {m['fcd']:.2f} "
          f"[{m['fcd_lo']:.2f}, {m['fcd_hi']:.2f}], class entropy {m['class_entropy']:.2f} bits; sampler: fcd "
          f"{m['sampler_fcd']:.2f} ({chosen}; the other {m[next(k for k in SAMPLERS if k != chosen) + '_fcd']:.2f}), "
          f"class entropy {m['sampler_class_entropy']:.2f}; ceiling fcd {m['ceiling_fcd']:.2f}; fcd to the nearest "
          f"training images {m['copy_fcd']:.2f} (two halves of the training set {m['halves_fcd']:.2f}); "
          f"reconstructions: fcd {m['recon_fcd']:.2f}, judge accuracy {m['recon_judge_accuracy']:.3f}, PSNR "
          f"{m['tuned_test_psnr']:.2f} dB; decoder as trained: sampler fcd {m['trained_sampler_fcd']:.2f}, "
          f"reconstructions fcd {m['trained_recon_fcd']:.2f}; "
          f"audit: sampler fcd {m['audit_sampler_fcd']:.2f}, reconstructions {m['audit_recon_fcd']:.2f}; "
          f"sharpness ratio: sampler "
          f"{m['sampler_sharpness_ratio']:.3f}, reconstructions {m['recon_sharpness_ratio']:.3f}; "
          f"{m['eval_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
