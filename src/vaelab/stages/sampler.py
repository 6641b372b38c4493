"""DVC stage `sampler@<beta>`: fit both ex-post samplers to the posterior means of the training images once (a
full-covariance Gaussian mixture and a diffusion prior, vaelab.samplers), leaving `sampling.holdout` images out of
both fits (evaluate decodes their codes as the ceiling set). Every consumer draws from the one named by
`sampling.prior`: evaluate (which judges the other one beside it), figures, the CLI and the model registered in
MLflow (a Codec that samples through it), which this stage logs and registers. It reads the model of decoder@<beta>
(the encoder as trained, so the codes are the trained model's; the decoder fine-tuned), which every consumer of the
sampler decodes with."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from vaelab import data, density, diffusion, layout, metrics, quality, samplers, storage, tracking
from vaelab.codec import Codec
from vaelab.model import load_model
from vaelab.params import SAMPLERS, Params, to_dict
from vaelab.stages import runtime


def sampler_settings(params: Params, kind: str) -> dict[str, Any]:
    """What sampler@<beta> fits a sampler of `kind` with: saved beside it, checked by every stage that draws from
    it."""
    sp = params.sampling
    fitted = ({"components": sp.gmm_components, "iterations": sp.gmm_iterations} if kind == "mixture"
              else {"diffusion": to_dict(sp.diffusion)})
    return {"kind": kind, **fitted, "holdout": sp.holdout, "seed": params.seed}


def split_codes(params: Params, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held) of a model's n training codes: the samplers are fitted to the first, evaluate decodes the
    second as the ceiling set (at most half of the codes are held out)."""
    return samplers.holdout_split(n, min(params.sampling.holdout, n // 2), params.seed)


def load_sampler(paths: layout.BetaPaths, params: Params, alternative: bool = False) -> samplers.Sampler:
    """The sampler of `sampling.prior` (or, with `alternative`, the other kind) that sampler@<beta> fitted for the
    model in paths.tuned_model with params.yaml's settings; raises samplers.StaleSamplerError naming the stage to rerun
    otherwise."""
    kind = params.sampling.prior
    if alternative:
        kind = next(k for k in SAMPLERS if k != kind)
    path = paths.alternative_sampler if alternative else paths.sampler
    try:
        return samplers.load(path, storage.weights_md5(paths.tuned_model), sampler_settings(params, kind))
    except samplers.StaleSamplerError as e:
        raise samplers.StaleSamplerError(f"{e}; run `dvc repro sampler@{paths.tag}` first") from None


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("sampler", argv, __doc__)
    return runtime.finish(f"sampler@{paths.tag}", run(params, beta, paths))


def run(params, beta: float, paths: layout.BetaPaths, preset: str = "") -> int:
    """Fit, save, log and register the sampler of the model in paths.tuned_model; `preset` names a params preset
    (registry alias `<preset>-beta-B`). Returns the exit status."""
    t0 = time.perf_counter()
    device = runtime.device()
    model, config = load_model(paths.tuned_model, device)
    bf16 = config["train"]["bf16"]
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    sp = params.sampling
    train_mu, _ = metrics.encode(model, ds.train_x, device, params.evaluate.batch_size, bf16)
    test_mu, _ = metrics.encode(model, ds.test_x, device, params.evaluate.batch_size, bf16)
    fit_idx, held_idx = split_codes(params, len(train_mu))
    fit_mu = train_mu[fit_idx]
    summary: dict[str, Any] = {"beta": beta, "prior": sp.prior, "fit_codes": len(fit_mu), "held_out": len(held_idx)}
    t = time.perf_counter()
    gmm = density.fit_gmm(fit_mu, sp.gmm_components, sp.gmm_iterations, params.seed)
    summary |= {"components": sp.gmm_components, "mixture_fit_seconds": time.perf_counter() - t,
                # nats per code: how well the mixture fits the codes it was fitted to, and codes of unseen images
                "train_log_prob": float(density.log_prob(gmm, fit_mu).mean()),
                "test_log_prob": float(density.log_prob(gmm, test_mu).mean())}
    t = time.perf_counter()
    with torch.enable_grad():
        prior = diffusion.fit(fit_mu, sp.diffusion, params.seed)
    # The denoiser's objective on fitted and on unseen codes: close values mean it did not memorise its codes.
    summary |= {"diffusion_fit_seconds": time.perf_counter() - t,
                "diffusion_train_loss": diffusion.loss(prior, fit_mu[:len(test_mu)], params.seed),
                "diffusion_test_loss": diffusion.loss(prior, test_mu, params.seed)}
    # Each sampler's own job, matching the codes: its draws against the held-out codes on the encoder's scale.
    held_mu = train_mu[held_idx]
    for kind, sampler in (("mixture", gmm), ("diffusion", prior)):
        z = samplers.draw(sampler, len(held_mu), torch.Generator().manual_seed(params.seed))
        summary |= {f"{kind}_code_fd": quality.frechet_distance(z.double(), held_mu.double()),
                    f"{kind}_code_sd_ratio": float((z.std(0) / held_mu.std(0).clamp_min(1e-12)).median())}
    summary["fit_seconds"] = time.perf_counter() - t0
    chosen, other = (prior, gmm) if sp.prior == "diffusion" else (gmm, prior)
    # With what each was fitted, and to which model's codes: every consumer refuses a sampler that is not this one.
    md5 = storage.weights_md5(paths.tuned_model)
    samplers.save(paths.sampler, chosen, {**sampler_settings(params, sp.prior), "model_md5": md5})
    samplers.save(paths.alternative_sampler, other,
                  {**sampler_settings(params, samplers.kind(other)), "model_md5": md5})
    storage.write_json(paths.sampler_metrics, summary)
    run = storage.read_json(paths.run_file)
    what = (f"a {sp.gmm_components}-component mixture" if sp.prior == "mixture" else
            f"a diffusion prior ({sp.diffusion.sample_steps} DDIM steps, temperature {sp.diffusion.temperature:g})")
    description = (f"{preset + ' preset: ' if preset else ''}β = {beta:g}, z = {model.cfg.latent_dim}; samples "
                   f"through {what} fitted to the training codes")
    with tracking.run(run["tracking_uri"], run["experiment"], run["run_name"], run_id=run["run_id"]):
        tracking.log_metrics({f"sampler_{k}": v for k, v in summary.items() if isinstance(v, float)})
        tracking.log_artifact(paths.sampler, "sampler")
        model_uri = tracking.log_model(Codec(model.cpu(), chosen), (model.cfg.latent_dim,))
        alias = f"{preset}-" * bool(preset) + tracking.model_alias(beta)
        version = tracking.register_model(model_uri, params.tracking.registered_model, alias, description)
    storage.write_json(paths.registered, {"model_uri": model_uri, "registered_model": params.tracking.registered_model,
                                          "version": version, "alias": alias, "run_id": run["run_id"],
                                          "tracking_uri": run["tracking_uri"]})
    print(f"sampler: β = {beta:g}: fitted to {len(fit_mu)} training codes ({len(held_idx)} held out): "
          f"{sp.gmm_components}-component mixture, {summary['train_log_prob']:.1f} / {summary['test_log_prob']:.1f} "
          f"nats per fitted / test code; diffusion prior, {sp.diffusion.prediction} loss "
          f"{summary['diffusion_train_loss']:.4f} / {summary['diffusion_test_loss']:.4f}; FD of the drawn codes to "
          f"held-out ones: mixture "
          f"{summary['mixture_code_fd']:.2f}, diffusion {summary['diffusion_code_fd']:.2f}; draws from the {sp.prior}; "
          f"registered "
          f"{params.tracking.registered_model} v{version} @{alias}; {summary['fit_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
