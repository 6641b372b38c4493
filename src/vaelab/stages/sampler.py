"""DVC stage `sampler@<beta>`: fit the ex-post density (a full-covariance Gaussian mixture) to the posterior means
of the training images once; every consumer draws from this one file: evaluate, figures, the CLI and the model
registered in MLflow (a Codec that samples through it), which this stage logs and registers."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from vaelab import data, density, layout, metrics, storage, tracking
from vaelab.model import Codec, load_model
from vaelab.params import Params
from vaelab.stages import runtime


def sampler_settings(params: Params) -> dict[str, int]:
    """What sampler@<beta> fits the ex-post mixture with: saved beside it, checked by every stage that draws from
    it."""
    return {"components": params.sampling.gmm_components, "iterations": params.sampling.gmm_iterations,
            "seed": params.seed}


def load_sampler(paths: layout.BetaPaths, params: Params) -> density.GaussianMixture:
    """The ex-post mixture sampler@<beta> fitted for the model in paths.model with params.yaml's settings; raises
    density.StaleSamplerError naming the stage to rerun otherwise."""
    try:
        return density.load_fitted(paths.sampler, storage.weights_md5(paths.model), sampler_settings(params))
    except density.StaleSamplerError as e:
        raise density.StaleSamplerError(f"{e}; run `dvc repro sampler@{paths.tag}` first") from None


def main(argv: list[str] | None = None) -> int:
    params, beta, paths = runtime.beta_stage("sampler", argv, __doc__)
    return runtime.finish(f"sampler@{paths.tag}", run(params, beta, paths))


def run(params, beta: float, paths: layout.BetaPaths, preset: str = "") -> int:
    """Fit, save, log and register the sampler of the model in paths.model; `preset` names a params preset
    (registry alias `<preset>-beta-B`). Returns the exit status."""
    t0 = time.perf_counter()
    device = runtime.device()
    model, config = load_model(paths.model, device)
    bf16 = config["train"]["bf16"]
    ds = data.load(Path(params.data.root) / layout.BATCHES, config["data"]["subset"], config["seed"])
    sp = params.sampling
    train_mu, _ = metrics.encode(model, ds.train_x, device, params.evaluate.batch_size, bf16)
    test_mu, _ = metrics.encode(model, ds.test_x, device, params.evaluate.batch_size, bf16)
    gmm = density.fit_gmm(train_mu, sp.gmm_components, sp.gmm_iterations, params.seed)
    fit_seconds = time.perf_counter() - t0
    summary = {"beta": beta, "components": sp.gmm_components, "fit_seconds": fit_seconds,
               # nats per code: how well the density fits the codes it was fitted to, and codes of unseen images
               "train_log_prob": float(density.log_prob(gmm, train_mu).mean()),
               "test_log_prob": float(density.log_prob(gmm, test_mu).mean())}
    # With what it was fitted, and to which model's codes: every consumer refuses a sampler that is not this one.
    storage.save_state(paths.sampler, density.to_state(gmm),
                       {**sampler_settings(params), "model_md5": storage.weights_md5(paths.model)})
    storage.write_json(paths.sampler_metrics, summary)
    run = storage.read_json(paths.run_file)
    description = (f"{preset + ' preset: ' if preset else ''}β = {beta:g}, z = {model.cfg.latent_dim}; samples "
                   f"through a {sp.gmm_components}-component mixture fitted to the training codes")
    with tracking.run(run["tracking_uri"], run["experiment"], run["run_name"], run_id=run["run_id"]):
        tracking.log_metrics({f"sampler_{k}": v for k, v in summary.items() if k != "beta"})
        tracking.log_artifact(paths.sampler, "sampler")
        model_uri = tracking.log_model(Codec(model.cpu(), gmm), (model.cfg.latent_dim,))
        alias = f"{preset}-" * bool(preset) + tracking.model_alias(beta)
        version = tracking.register_model(model_uri, params.tracking.registered_model, alias, description)
    storage.write_json(paths.registered, {"model_uri": model_uri, "registered_model": params.tracking.registered_model,
                                          "version": version, "alias": alias, "run_id": run["run_id"],
                                          "tracking_uri": run["tracking_uri"]})
    print(f"sampler: β = {beta:g}: {sp.gmm_components}-component mixture on {len(train_mu)} training codes, "
          f"{summary['train_log_prob']:.1f} / {summary['test_log_prob']:.1f} nats per train / test code; "
          f"registered {params.tracking.registered_model} v{version} @{alias}; {fit_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
