"""DVC stage `control_eval`: score every control model against the known factors (MIG, DCI, rate, active units),
summarise per beta with the seed-to-seed interval, and draw the scores against beta and a traversal per beta whose
rows are labelled with the factor each code dimension is most informative about."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from vaelab import comparison_plots, control, disentanglement, layout, plots, storage, tracking
from vaelab.intervals import mean_interval
from vaelab.layout import ControlPaths
from vaelab.loss import kl_normal
from vaelab.metrics import encode
from vaelab.model import load_model
from vaelab.stages import runtime
from vaelab.stages.publish import publish

SCORES = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "rate_nats", "active_units")


def score_model(model, images: torch.Tensor, factors: np.ndarray, cfg, seed: int, reps: int) -> dict:
    """One model's scores on the drawn images: MIG, DCI, the rate (nats, with its bootstrap interval over
    images), active units, KL per dimension and the normalised MI matrix."""
    mu, logvar = encode(model, images, torch.device("cpu"), bf16=False)
    kl = kl_normal(mu, logvar)  # (N, z)
    rate, (lo, hi) = mean_interval(kl.sum(1), reps, seed)
    out = disentanglement.scores(mu.numpy(), factors, cfg.mig_bins, cfg.dci_train, cfg.dci_test, seed)
    out |= {"rate_nats": rate, "rate_nats_lo": lo, "rate_nats_hi": hi,
            "active_units": int((mu.var(0) > 0.01).sum()), "kl_per_dim": kl.mean(0).tolist(),
            "base_code": mu[0].tolist()}
    return out


def summarise(points: list[dict]) -> list[dict]:
    """Per beta: the mean of each score over seeds with its Student-t 95% interval (the seed spread)."""
    rows = []
    for beta in sorted({p["beta"] for p in points}):
        mine = [p for p in points if p["beta"] == beta]
        row = {"beta": beta, "seeds": [p["seed"] for p in mine]}
        for key in SCORES:
            mean, lo, hi = disentanglement.seed_interval([p[key] for p in mine])
            row |= {key: mean, f"{key}_lo": lo, f"{key}_hi": hi}
        rows.append(row)
    return rows


def verdict(points: list[dict], by_beta: list[dict]) -> dict:
    """The beta of the highest mean MIG, and whether each of its seeds beats every seed at beta = 1 on MIG and
    its mean DCI disentanglement interval lies above beta = 1's."""
    best = max(by_beta, key=lambda r: r["mig"])
    out: dict = {"best_beta": best["beta"], "best_mig": best["mig"]}
    ones = [r for r in by_beta if r["beta"] == 1.0]
    if ones and best["beta"] != 1.0:
        one = ones[0]
        out["best_seeds_all_above_beta_1"] = (
            min(p["mig"] for p in points if p["beta"] == best["beta"])
            > max(p["mig"] for p in points if p["beta"] == 1.0))
        out["best_dci_d_separated_above_beta_1"] = best["dci_disentanglement_lo"] > one["dci_disentanglement_hi"]
    return out


def traversal(model, point: dict, names: tuple[str, ...], cfg, beta: float):
    """Every code dimension, most KL first, traversed around one image's code; each row names the factor it is
    most informative about (normalised MI) and its KL."""
    kl = np.asarray(point["kl_per_dim"])
    mi = np.asarray(point["normalised_mi"])  # (D, K)
    dims = [int(j) for j in np.argsort(-kl)]
    labels = [f"z{j}: {names[int(mi[j].argmax())]} {mi[j].max():.2f}, KL {kl[j]:.2f}" if kl[j] >= 0.01
              else f"z{j}: inactive, KL {kl[j]:.3f}" for j in dims]
    rows = plots.traversal_rows(model, torch.tensor(point["base_code"]), dims, cfg.traversal_steps,
                                cfg.traversal_range)
    cols = [f"{v:+.1f}" for v in np.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.traversal_steps)]
    return plots.image_table(rows, title=f"Control set, β = {beta:g} (seed {point['seed']}): each row moves one "
                             f"code; label = factor it informs most (MI / H)", row_labels=labels,
                             col_labels=cols)


def main() -> int:
    params = runtime.load("control_eval")
    cfg = params.control
    runtime.set_threads(params.train.threads)
    images, factors = control.render()
    names = control.Factors().names
    pick = np.random.default_rng(params.seed).choice(len(images), cfg.score_images, replace=False)
    x, f = torch.from_numpy(images[pick]), factors[pick]
    missing = [ControlPaths(f"{b:g}", s).stage for b in cfg.betas for s in cfg.seeds
               if not ControlPaths(f"{b:g}", s).model.is_file()]
    if missing:
        print(f"control_eval: no model for {', '.join(missing)}; run dvc repro", file=sys.stderr)
        return 2
    points, models = [], {}
    for beta in cfg.betas:
        for seed in cfg.seeds:
            paths = ControlPaths(f"{beta:g}", seed)
            model, _ = load_model(paths.model)
            score = score_model(model, x, f, cfg, params.seed, params.evaluate.bootstrap)
            points.append({"beta": beta, "seed": seed, **score})
            models[(beta, seed)] = model
            print(f"control_eval: β = {beta:g}, seed {seed}: MIG {score['mig']:.3f}, DCI D "
                  f"{score['dci_disentanglement']:.3f}, rate {score['rate_nats']:.1f} nats")
    by_beta = summarise(points)
    summary = {"factors": list(names), "n_images": len(images), "n_scored": cfg.score_images,
               "points": [{k: v for k, v in p.items() if k not in ("base_code", "normalised_mi", "importance")}
                          for p in points],
               "by_beta": by_beta, **verdict(points, by_beta)}
    storage.write_json(layout.CONTROL_METRICS, summary)
    table = pd.DataFrame([{k: p[k] for k in ("beta", "seed", *SCORES)} for p in points])
    storage.write_text(layout.CONTROL_POINTS, table.to_csv(index=False))
    figures = {"scores.png": comparison_plots.control_scores(
        table, pd.DataFrame(by_beta), "Control set with known factors: scores against β")}
    first = cfg.seeds[0]
    for beta in cfg.betas:
        point = next(p for p in points if p["beta"] == beta and p["seed"] == first)
        figures[f"traversal_beta_{beta:g}.png"] = traversal(models[(beta, first)], point, names, cfg, beta)
    figures["examples.png"] = plots.image_grid(x[:32], 8, "Control set: 32 of the rendered images")
    publish(params, tracking.CONTROL_STUDY, figures, layout.CONTROL_FIGURES, layout.CONTROL_METRICS,
            {f"{k}_beta_{row['beta']:g}": row[k] for row in by_beta for k in SCORES})
    print(f"control_eval: best β = {summary['best_beta']:g} (mean MIG {summary['best_mig']:.3f}); "
          f"{layout.CONTROL_METRICS}, {layout.CONTROL_FIGURES}/")
    return 0


if __name__ == "__main__":
    sys.exit(runtime.finish("control_eval", main()))
