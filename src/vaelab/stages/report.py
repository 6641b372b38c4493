"""DVC stage `report`: reports/report.md and the cross-beta figures (reports/comparison/) for exactly the betas
listed in params.yaml train.betas."""
from __future__ import annotations

import os
import sys

from matplotlib.image import imread
import pandas as pd

from vaelab import comparison_plots, plots, report, storage, webpage
from vaelab.params import ParamsError, Params, load_params, to_dict
from vaelab.presets import load_presets
from vaelab.layout import (AUDIT, BETA_METRICS, COMPARISON, CONTROL_FIGURES, CONTROL_METRICS, CURVES, JUDGE,
                           PARAMS_FILE, REFERENCE, REPORT, REPORT_HTML, SWEEP_FIGURES, SWEEP_METRICS, BetaPaths,
                           preset_results_file)
from vaelab.stages import runtime

def collect(params: Params) -> list[dict]:
    """One row per listed beta, joined from its train and eval metrics; a removed beta's stale files are
    ignored. Tags are read from the metrics folders, so 1 and 1.0 both resolve."""
    found = {}
    for d in sorted(BETA_METRICS.glob("beta_*")):
        tag = d.name.removeprefix("beta_")
        try:
            found[float(tag)] = tag
        except ValueError:
            continue
    rows = []
    for beta in params.train.betas:
        if beta not in found:
            raise FileNotFoundError(f"no metrics for β = {beta:g} under {BETA_METRICS}: run its stages (dvc repro)")
        paths = BetaPaths(found[beta])
        row = {**storage.read_json(paths.train_metrics), **storage.read_json(paths.eval_metrics), "tag": paths.tag}
        row["train_minutes"] = row["train_seconds"] / 60
        if paths.decoder_metrics.is_file():  # stage decoder@<beta>: the fine-tune's steps, time, final λ and logits
            row |= {f"finetune_{k}": v for k, v in storage.read_json(paths.decoder_metrics).items() if k != "beta"}
        rows.append(row)
    return rows


def preset_results() -> list[dict]:
    """The results files of params.yaml's presets that have been run, in params order (reports/presets/)."""
    return [storage.read_json(preset_results_file(name)) for name in load_presets(PARAMS_FILE)
            if preset_results_file(name).is_file()]


def choices(params: Params, precisions: list[str]) -> list[str]:
    """The modelling choices of this run, in words, from params and the precision each model trained in (for the
    report)."""
    m, t = params.model, params.train
    lik = {"logistic": "a per-pixel discretized logistic over the 256 intensity levels (mean and scale per "
                       "pixel and channel), so the reconstruction term is an exact discrete log-likelihood",
           "gaussian": "a discretized Gaussian with " + {
               "global": "one learned global σ (σ-VAE style)", "channel": "one learned σ per colour channel",
               "pixel": "a σ per pixel and channel predicted by the decoder"}[m.sigma]}[m.likelihood]
    objective = "−log p(x|z) + β · KL(q(z|x) ‖ N(0, I)), the KL in closed form: the β-VAE objective"
    if t.perceptual_weight > 0:
        objective = (f"−log p(x|z) + {t.perceptual_weight:g} · D_feat(x, x̂) + β · KL(q(z|x) ‖ N(0, I)), the KL in "
                     "closed form; D_feat is the perceptual distance in the activations of the `features` network "
                     f"({params.features.arch}, never used to score), which bits/dim leaves out")
    if m.prior_flows:
        objective = (f"−log p(x|z) + β · KL(q(z|x) ‖ p(z)) with a learned prior p(z): N(0, I) pushed through "
                     f"{m.prior_flows} affine couplings (RealNVP), the KL a single-sample estimate")
    if t.mmd_weight > 0:
        objective += f", plus {t.mmd_weight:g} · MMD(codes, N(0, I)) (InfoVAE)"
    return [
        f"Loss: {objective}; β multiplies the KL only.",
        f"Latent size z = {m.latent_dim}; encoder and decoder are convolutional with widths {list(m.widths)} "
        f"(32 → 16 → 8 → 4 pixels) and {m.res_blocks} residual block(s) per resolution; the decoder upsamples by "
        + ("4×4 transposed convolutions" if m.upsample == "transposed" else "nearest-neighbour ×2 then a 3×3 convolution")
        + (f", with widths {list(m.decoder_widths)}" if m.decoder_widths else "")
        + (f" and {m.decoder_res_blocks} more residual block(s) per resolution" if m.decoder_res_blocks else "") + ".",
        f"Decoder likelihood: {lik}.",
        f"AdamW, learning rate {t.lr:g} with {t.warmup_steps} warm-up steps and cosine decay, batch {t.batch_size}, "
        f"{t.epochs} epochs, gradient-norm clip {t.grad_clip:g}; train.bf16 = {t.bf16} (bf16 autocast where the "
        f"hardware computes bf16, else float32): trained in {', '.join(sorted(set(precisions)))}.",
        "KL warm-up: " + (f"β ramps up linearly over the first {t.kl_warmup_epochs:g} epochs."
                          if t.kl_warmup_epochs > 0 else "none (β applies from the first step)."),
        "Weights evaluated and saved: " + (f"exponential moving average, decay {t.ema_decay:g}."
                                           if t.ema_decay > 0 else "the last step's."),
        f"Ex-post samplers (stage `sampler`), both fitted to the posterior means of the training images less "
        f"{params.sampling.holdout} held out (the ceiling set): a {params.sampling.gmm_components}-component "
        f"full-covariance Gaussian mixture fitted by EM (Ghosh et al. 2020), and a diffusion prior "
        f"({params.sampling.diffusion.prediction}-prediction, {params.sampling.diffusion.blocks} residual MLP "
        f"blocks of width {params.sampling.diffusion.hidden}, "
        f"{params.sampling.diffusion.train_steps} steps; DDIM sampling in {params.sampling.diffusion.sample_steps} "
        f"steps at temperature {params.sampling.diffusion.temperature:g}; Dai & Wipf 2019's two-stage VAE). Every "
        f"figure, the CLI and the registered model draw from the {params.sampling.prior} (`sampling.prior`).",
    ]


def main() -> int:
    try:
        params = load_params(PARAMS_FILE)
        rows = collect(params)
        for need, stage in ((JUDGE.metrics, "judge"), (AUDIT.metrics, "audit"), (REFERENCE, "reference")):
            if not need.is_file():
                raise FileNotFoundError(f"{need} is missing: run the {stage} stage (dvc repro)")
        # Each scorer's own metrics (test accuracy) with its real-image reference row (stage `reference`).
        real = storage.read_json(REFERENCE)
        reference = storage.read_json(JUDGE.metrics) | real["judge"] | {"n_real": real["n_real"]}
        audit_reference = storage.read_json(AUDIT.metrics) | real["audit"] | {"n_real": real["n_real"]}
        presets = preset_results()
    except (ParamsError, FileNotFoundError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    figures = {r["tag"]: os.path.relpath(BetaPaths(r["tag"]).figures, REPORT.parent) for r in rows}
    for r in rows:
        missing = [s for s, _ in report.FIGURES if not (BetaPaths(r["tag"]).figures / f"{s}.png").is_file()]
        if missing:
            print(f"report: β = {r['beta']:g} lacks figures {missing}: run its figures stage", file=sys.stderr)
            return 1
    setup = {"n_train": rows[0]["n_train"], "n_test": rows[0]["n_test_images"], "epochs": params.train.epochs,
             "seed": params.seed, "choices": choices(params, [r.get("precision", "a precision not recorded") for r in rows])}
    kl = [(r["beta"], pd.read_csv(BetaPaths(r["tag"]).kl_per_dim)["kl_nats"].tolist()) for r in rows]
    traversals = plots.side_by_side(
        [imread(BetaPaths(r["tag"]).figures / "traversals.png") for r in rows],
        [f"β = {r['beta']:g}" for r in rows], "Traversals of the highest-KL dimensions around one test image's code")
    curves_by_beta = {r["beta"]: (pd.read_csv(BetaPaths(r["tag"]).history), pd.read_csv(BetaPaths(r["tag"]).steps))
                      for r in rows}
    comparison = {"rate_distortion": comparison_plots.rate_distortion(rows), "kl_per_dim": comparison_plots.kl_bars(kl),
                  "traversals": traversals,
                  "training_curves": plots.training_curves_by_beta(curves_by_beta, "Training curves, every β")}
    links = {}
    for stem, fig in comparison.items():
        out = COMPARISON / f"{stem}.png"
        with storage.atomic_path(out) as tmp:
            plots.save(fig, tmp)
        links[stem] = os.path.relpath(out, REPORT.parent)
    curves = pd.concat([pd.read_csv(BetaPaths(r["tag"]).history).assign(beta=f"{r['beta']:g}") for r in rows])
    storage.write_text(CURVES, curves[["beta", *curves.columns.drop("beta")]].to_csv(index=False))
    judge_md5 = storage.weights_md5(JUDGE.model)
    recipe = {"model": to_dict(params.model), "train": to_dict(params.train), "decoder": to_dict(params.decoder)}
    study = storage.read_json(CONTROL_METRICS) if CONTROL_METRICS.is_file() else None
    sweep = storage.read_json(SWEEP_METRICS) if SWEEP_METRICS.is_file() else None
    md = report.render(rows, figures, setup, reference, links, presets, judge_md5, recipe, audit_reference, study,
                       os.path.relpath(CONTROL_FIGURES, REPORT.parent), sweep,
                       os.path.relpath(SWEEP_FIGURES, REPORT.parent))
    html = webpage.to_html(md, lambda link: (REPORT.parent / link).read_bytes())
    storage.write_text(REPORT, md)
    storage.write_text(REPORT_HTML, html)
    betas = ", ".join(f"{r['beta']:g}" for r in rows)
    print(f"report: wrote {REPORT} and {REPORT_HTML} for β = {betas}")
    return runtime.finish("report", 0)


if __name__ == "__main__":
    sys.exit(main())
