"""DVC stage `evaluate@<beta>`: every test-set metric of one model (likelihood, latent organisation, sample
quality by the judge), as DVC metrics and in its MLflow run."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from vaelab import data, density, factors, judge, metrics, storage, tracking
from vaelab.loss import bits_per_dim
from vaelab.params import JudgeConfig, from_dict
from vaelab.stages import layout


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = layout.beta_stage("evaluate", argv, __doc__)
    return run(params, beta, paths)


def run(params, beta: float, paths: layout.BetaPaths) -> int:
    """Evaluate the model in paths.model with the default pipeline's judge; write paths.eval_metrics and log
    them to the model's MLflow run. Returns the exit status."""
    ev, seed = params.evaluate, params.seed
    t0 = time.perf_counter()
    device = layout.device()
    model, config = storage.load_model(paths.model, device)
    bf16 = config["train"]["bf16"]
    state, judge_config = storage.load_state(layout.JUDGE_MODEL, device)
    judge_cfg = from_dict(JudgeConfig, judge_config["judge"])
    judge_net = judge.from_state(state, judge_cfg, device)
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    n_test = len(ds.test_x)

    clock = [t0]

    def timed(name: str) -> None:
        now = time.perf_counter()
        print(f"evaluate: β = {beta:g}: {name} ({now - clock[0]:.1f} s)")
        clock[0] = now

    # Likelihood, rate, distortion, reconstruction error, active units.
    m, kl_dims = metrics.evaluate(model, ds.test_x, device, ev.batch_size, ev.active_threshold, bf16=bf16, seed=seed)
    timed("negative ELBO")
    n_iw = min(ev.iw_images, n_test)
    iw = metrics.iw_log_likelihood(model, ds.test_x[:n_iw], device, ev.iw_samples, ev.batch_size, bf16, seed)
    m["test_iw_bpd"] = float(bits_per_dim(-iw.mean()))
    m["iw_samples"], m["iw_images"] = ev.iw_samples, n_iw
    timed(f"importance-weighted bound, K = {ev.iw_samples}")

    # Organisation of the latent space.
    mu, logvar = metrics.encode(model, ds.test_x, device, ev.batch_size, bf16)
    m["tc_batch_size"] = min(ev.tc_batch_size, n_test)
    m["total_correlation"] = metrics.total_correlation(mu, logvar, ev.tc_batch_size, seed)
    timed("total correlation")
    train_mu, _ = metrics.encode(model, ds.train_x, device, ev.batch_size, bf16)
    m["probe_accuracy"] = metrics.linear_probe(train_mu, ds.train_y, mu, ds.test_y, ev.probe_l2, ev.probe_steps)
    timed("linear probe")
    n_factor = min(ev.factor_images, n_test)
    response = factors.factor_response(lambda x: metrics.encode(model, x, device, ev.batch_size, bf16)[0],
                                       ds.test_x[:n_factor], factors.factor_transforms(ev))
    scores = {name: factors.factor_score(r) for name, r in response.items()}
    m.update({f"factor_score_{name}": score for name, score in scores.items()})
    m["factor_score"] = sum(scores.values()) / len(scores)
    timed("factor scores")

    # Sample quality, judged against the judge's features of the test images.
    test_feats, _ = judge.predict(judge_net, ds.test_x, device, bf16=judge_cfg.bf16)

    def judged(z: torch.Tensor, decode=metrics.sample_uint8) -> dict[str, float]:
        images = torch.cat([decode(model, zb) for zb in z.split(ev.batch_size)])
        feats, probs = judge.predict(judge_net, images, device, bf16=judge_cfg.bf16)
        return metrics.sample_quality(feats, probs, test_feats, ev.kid_subsets, ev.kid_subset_size, seed)

    g = torch.Generator().manual_seed(seed)
    # N(0, I) noise, decoded through the model's prior (the identity for p(z) = N(0, I)).
    z = torch.randn(ev.n_samples, model.cfg.latent_dim, generator=g)
    m.update(judged(z))
    m["n_samples"] = ev.n_samples
    timed(f"{ev.n_samples} prior samples judged")
    # The other samplers: the same noise at temperature tau, and a mixture fitted to the training codes.
    sp = params.sampling
    m.update({f"tau_{k}": v for k, v in judged(sp.temperature * z).items()})
    m["temperature"] = sp.temperature
    gmm = density.fit_gmm(train_mu, sp.gmm_components, sp.gmm_iterations, seed)
    m.update({f"gmm_{k}": v for k, v in judged(density.sample(gmm, ev.n_samples, g), metrics.decode_uint8).items()})
    m["gmm_components"] = sp.gmm_components
    m["gmm_test_log_prob"] = float(density.log_prob(gmm, mu).mean())  # nats per test code
    timed(f"samples at τ = {sp.temperature:g} and from a {sp.gmm_components}-component mixture on μ judged")
    n_rec = min(ev.n_samples, n_test)
    recon = torch.cat([metrics.decode_uint8(model, mb) for mb in mu[:n_rec].split(ev.batch_size)])
    feats, probs = judge.predict(judge_net, recon, device, bf16=judge_cfg.bf16)
    rec = metrics.sample_quality(feats, probs, test_feats, ev.kid_subsets, ev.kid_subset_size, seed)
    m.update({f"recon_{k}": v for k, v in rec.items()})
    m["recon_judge_accuracy"] = float((probs.argmax(1) == ds.test_y[:n_rec]).double().mean())
    timed("reconstructions judged")
    m["eval_seconds"] = time.perf_counter() - t0

    metrics_out = {"beta": beta, **m}
    storage.write_json(paths.eval_metrics, metrics_out)
    # With what it was fitted, and to which model's codes: figures@<beta> refuses a mixture that is not this one.
    storage.save_state(paths.mixture, dataclasses.asdict(gmm),
                       {**layout.mixture_settings(params), "model_md5": storage.weights_md5(paths.model)})
    kl = pd.DataFrame({"dim": range(len(kl_dims)), "kl_nats": kl_dims})
    storage.write_text(paths.kl_per_dim, kl.to_csv(index=False))
    table = pd.DataFrame({"dim": range(len(kl_dims)), **{k: v.tolist() for k, v in response.items()}})
    storage.write_text(paths.factor_response, table.to_csv(index=False))
    run = storage.read_json(paths.run_file)
    with tracking.run(run["tracking_uri"], run["experiment"], run.get("run_name", f"beta={beta:g}"),
                      run_id=run["run_id"]):
        # At the last epoch's step: the per-epoch charts end on the definitive test-set numbers.
        tracking.log_metrics(m, step=config["train"]["epochs"])
        tracking.log_artifact(paths.kl_per_dim)
        tracking.log_artifact(paths.factor_response)
    print(f"evaluate: β = {beta:g}: {m['test_bpd']:.3f} bits/dim (IW {m['test_iw_bpd']:.3f}), PSNR "
          f"{m['test_psnr']:.2f} dB, KL {m['rate_nats']:.1f} nats, {m['active_units']} active units, TC "
          f"{m['total_correlation']:.1f} nats, probe {m['probe_accuracy']:.3f}, factor score {m['factor_score']:.3f}, "
          f"fcd {m['fcd']:.2f}, kid {m['kid']:.4f}, confidence {m['judge_confidence']:.3f}, class entropy "
          f"{m['class_entropy']:.2f} bits (τ = {sp.temperature:g}: fcd {m['tau_fcd']:.2f}, class entropy "
          f"{m['tau_class_entropy']:.2f}; mixture: fcd {m['gmm_fcd']:.2f}, class entropy {m['gmm_class_entropy']:.2f}); "
          f"{m['eval_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
