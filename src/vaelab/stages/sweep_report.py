"""DVC stage `sweep_report`: every point of the β sweep in one file (metrics/sweep.json, and metrics/sweep_points.csv
for `dvc plots`), with the full-recipe models of train.betas beside them, and the sweep's figures: the
rate–distortion plane, the metrics against β, the KL spectrum and traversals at a low, the assignment's and a high β."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vaelab import comparison_plots, data, layout, plots, storage, tracking
from vaelab.intervals import seed_sd
from vaelab.layout import BetaPaths, SweepPaths
from vaelab.model import load_model
from vaelab.stages import runtime
from vaelab.stages.publish import publish

# Columns of metrics/sweep_points.csv (with _lo/_hi where the point has them).
POINT_KEYS = ("rate_nats", "distortion_nats", "distortion_fixed_sigma_nats", "test_psnr", "recon_fcd", "sampler_fcd",
              "active_units_0p01", "active_units_0p1", "active_units_0p5", "effective_units", "units_90",
              "total_correlation", "factor_score", "factor_r2", "traversal_change")


def traversal_figure(tags: list[str], betas: list[float], x: torch.Tensor, params) -> plots.plt.Figure:
    """Traversals of the highest-KL dimensions of each listed sweep point around the same test image's code."""
    figs = []
    for tag, beta in zip(tags, betas):
        model, _ = load_model(SweepPaths(tag).model)
        kl = torch.tensor(pd.read_csv(SweepPaths(tag).kl_per_dim)["kl_nats"].to_numpy())
        dims = kl.argsort(descending=True)[: params.sweep.traversal_dims].tolist()
        mu, _ = model.encoder(x[:1].float() / 127.5 - 1.0)
        rows = plots.traversal_rows(model, mu[0], dims, params.figures.traversal_steps, params.sweep.traversal_span)
        fig = plots.image_table(rows, title=f"β = {beta:g}", row_labels=[f"z{j} (KL {kl[j]:.2f})" for j in dims],
                                col_labels=[f"{v:+.1f}" for v in np.linspace(-params.sweep.traversal_span,
                                                                              params.sweep.traversal_span,
                                                                              params.figures.traversal_steps)])
        fig.canvas.draw()
        figs.append(np.asarray(fig.canvas.buffer_rgba()))
        plots.plt.close(fig)
    return plots.side_by_side(figs, [f"β = {b:g}" for b in betas],
                              "Traversals of the highest-KL dimensions (±σ of the prior) around one test image's code")


def main() -> int:
    params = runtime.load("sweep_report")
    sw = params.sweep
    tags = [f"{b:g}" for b in sw.betas]
    extra = [SweepPaths(f"{b:g}", s) for b in sw.spread_betas for s in sw.spread_seeds]
    missing = [p.eval_stage for p in [SweepPaths(t) for t in tags] + extra if not p.point.is_file()]
    if missing:
        print(f"sweep_report: no measurements of {', '.join(missing)}; run dvc repro", file=sys.stderr)
        return 2
    points = sorted((storage.read_json(SweepPaths(t).point) for t in tags), key=lambda p: p["beta"])
    # The seed spread: each spread beta's point with the top-level seed and again with every spread seed.
    runs = [{k: r[k] for k in ("beta", "seed", *POINT_KEYS) if k in r}
            for r in [p for p in points if p["beta"] in sw.spread_betas] + [storage.read_json(p.point) for p in extra]]
    spread = {"betas": list(sw.spread_betas), "seeds": [params.seed, *sw.spread_seeds], "sd": seed_sd(runs),
              "runs": runs}
    # The assignment's models, trained at the full recipe, as marked points (their eval.json has the same keys).
    marked = [storage.read_json(BetaPaths(f"{b:g}").eval_metrics) | {"beta": b} for b in params.train.betas
              if BetaPaths(f"{b:g}").eval_metrics.is_file()]
    lowest = points[0]
    summary = {"points": points, "full_recipe": [{k: r[k] for k in ("beta", *POINT_KEYS) if k in r} for r in marked],
               "recipe": {"subset": sw.subset, "epochs": sw.epochs, "batch_size": sw.batch_size, "lr": sw.lr,
                          "perceptual_weight": 0},
               "rate_monotone": all(b["rate_nats"] <= a["rate_nats_hi"] for a, b in zip(points, points[1:])),
               "lowest_rate_nats": lowest["rate_nats"],
               "highest_rate_share": points[-1]["rate_nats"] / max(lowest["rate_nats"], 1e-12), "seed_spread": spread}
    storage.write_json(layout.SWEEP_METRICS, summary)
    cols = ["beta"] + [c for k in POINT_KEYS for c in (k, f"{k}_lo", f"{k}_hi") if c in points[0]]
    storage.write_text(layout.SWEEP_POINTS, pd.DataFrame(points)[cols].to_csv(index=False))
    kl = [(p["beta"], pd.read_csv(SweepPaths(f"{p['beta']:g}").kl_per_dim)["kl_nats"].tolist()) for p in points]
    ds = data.load(Path(params.data.root) / layout.BATCHES, sw.subset, params.seed)
    near5 = min(points, key=lambda p: abs(np.log(p["beta"] / 5.0)))["beta"]
    # The high β shown is the one above 5 whose traversal changes the image most: at the very top of a wide grid
    # the code has collapsed and every row would show the same image.
    above = [p for p in points if p["beta"] > near5] or points[-1:]
    high = max(above, key=lambda p: p["traversal_change"])["beta"]
    shown = sorted({points[0]["beta"], near5, high})
    with torch.no_grad():
        traversals = traversal_figure([f"{b:g}" for b in shown], shown, ds.test_x, params)
    seeds = [r for r in runs if r["seed"] != params.seed]  # drawn beside the sweep's own points
    figures = {"rate_distortion.png": comparison_plots.sweep_rate_distortion(points, marked, seeds),
               "metrics_vs_beta.png": comparison_plots.sweep_metrics(points, marked, seeds),
               "kl_spectrum.png": comparison_plots.kl_spectrum(kl), "traversals.png": traversals}
    publish(params, tracking.SWEEP, figures, layout.SWEEP_FIGURES, layout.SWEEP_METRICS)
    print(f"sweep_report: {len(points)} points, rate {points[0]['rate_nats']:.1f} → {points[-1]['rate_nats']:.1f} "
          f"nats; {layout.SWEEP_METRICS}, {layout.SWEEP_FIGURES}/")
    return 0


if __name__ == "__main__":
    sys.exit(runtime.finish("sweep_report", main()))
