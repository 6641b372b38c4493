"""Figures that compare models: the rate–distortion plane, KL spectra, metrics along the β sweep and the
control study's factor scores (matplotlib Figures; vaelab.plots draws one model's)."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


CONTROL_SCORES = (("mig", "MIG"), ("dci_disentanglement", "DCI disentanglement"),
                  ("dci_completeness", "DCI completeness"), ("dci_informativeness", "DCI informativeness"),
                  ("rate_nats", "rate KL(q(z|x) ‖ N(0, I)) (nats)"), ("active_units", "active units (Cov μ_j > 0.01)"))

SWEEP_PANELS = (("rate_nats", "rate (nats)"), ("distortion_fixed_sigma_nats", "distortion at fixed σ (nats)"),
                ("test_psnr", "reconstruction PSNR (dB)"), ("recon_fcd", "FCD of reconstructions (judge)"),
                ("sampler_fcd", "FCD of sampler images (judge)"), ("active_units_0p01", "active units (0.01)"),
                ("effective_units", "effective units exp H(KL_j / ΣKL)"),
                ("total_correlation", "Gaussian total correlation (nats)"),
                ("traversal_change", "traversal: mean |Δ pixel| (0–1)"))


def rate_distortion(rows: Sequence[dict], title: str = "Rate–distortion plane") -> plt.Figure:
    """One point per beta (rate vs distortion, nats per image) and the ELBO iso-line through beta = 1
    (or the smallest beta): rate + distortion = its negative ELBO."""
    rows = sorted(rows, key=lambda r: r["beta"])
    ref = next((r for r in rows if r["beta"] == 1), rows[0])
    fig, ax = plt.subplots(figsize=(6, 4.5), constrained_layout=True)
    rates = [r["rate_nats"] for r in rows]
    dists = [r["distortion_nats"] for r in rows]
    ax.plot(rates, dists, "o-", color="tab:blue", zorder=3)
    for r in rows:
        ax.annotate(f"β = {r['beta']:g}", (r["rate_nats"], r["distortion_nats"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=9)
    total = ref["rate_nats"] + ref["distortion_nats"]
    lo, hi = 0.0, max(rates) * 1.3 + 1
    ax.plot([lo, hi], [total - lo, total - hi], "--", color="gray",
            label=f"ELBO of β = {ref['beta']:g}: R + D = {total:.0f} nats")
    pad = 0.1 * (max(dists) - min(dists) + max(rates) - min(rates) + 1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(dists) - pad, max(dists) + pad)
    ax.set_xlabel("rate: KL(q(z|x) ‖ p(z)) (nats per image)")
    ax.set_ylabel("distortion: −log p(x|z) (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


def kl_bars(kl_by_beta: Sequence[tuple[float, Sequence[float]]]) -> plt.Figure:
    """Per-dimension KL (nats), sorted, one panel per beta, on a shared axis."""
    n = len(kl_by_beta)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), sharey=True, constrained_layout=True, squeeze=False)
    for ax, (beta, kl) in zip(axes[0], kl_by_beta):
        ax.bar(range(len(kl)), sorted(kl, reverse=True), width=1.0, color="tab:blue")
        ax.set_title(f"β = {beta:g}: {sum(kl):.1f} nats in {len(kl)} dims", fontsize=9)
        ax.set_xlabel("latent dimension (sorted)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("KL(q(z_j|x) || p(z_j)) per dimension (nats)")
    return fig


def control_scores(points: pd.DataFrame, by_beta: pd.DataFrame, title: str) -> plt.Figure:
    """One panel per score against β (log axis): every seed as a dot, the mean over seeds with its 95% interval."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, CONTROL_SCORES):
        ax.scatter(points["beta"], points[key], s=14, color="0.55", label="one seed", zorder=2)
        err = np.stack([by_beta[key] - by_beta[f"{key}_lo"], by_beta[f"{key}_hi"] - by_beta[key]])
        ax.errorbar(by_beta["beta"], by_beta[key], yerr=err, fmt="-o", color="C0", capsize=3, ms=4,
                    label="mean, 95% interval over seeds", zorder=3)
        ax.set_xscale("log")
        ax.set_xticks(list(by_beta["beta"]), [f"{b:g}" for b in by_beta["beta"]])
        ax.minorticks_off()
        ax.set_xlabel("β")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    return fig


def _errorbar(ax, rows: Sequence[dict], x: str, y: str, **kw) -> None:
    """Points (x, y) of rows with y's 95% interval as a vertical bar."""
    err = np.array([[r[y] - r.get(f"{y}_lo", r[y]) for r in rows], [r.get(f"{y}_hi", r[y]) - r[y] for r in rows]])
    ax.errorbar([r[x] for r in rows], [r[y] for r in rows], yerr=np.clip(err, 0, None), capsize=3, ms=4, **kw)


def sweep_rate_distortion(points: Sequence[dict], marked: Sequence[dict], seeds: Sequence[dict] = ()) -> plt.Figure:
    """The rate–distortion plane of the sweep (Alemi et al. 2018): one point per β with its 95% intervals, the same
    β trained with other seeds as hollow points (the seed-to-seed spread), dashed lines of equal negative ELBO
    (R + D = c), and the full-recipe models as marked points."""
    points = sorted(points, key=lambda r: r["beta"])
    fig, ax = plt.subplots(figsize=(7.5, 5.5), constrained_layout=True)
    _errorbar(ax, points, "rate_nats", "distortion_nats", fmt="o-", color="C0", label="sweep (cheap recipe)")
    if seeds:
        ax.plot([r["rate_nats"] for r in seeds], [r["distortion_nats"] for r in seeds], "o", mfc="none", ms=8,
                color="C1", label="same β, other seeds")
    for r in points:
        ax.annotate(f"β={r['beta']:g}", (r["rate_nats"], r["distortion_nats"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    for r in marked:
        ax.plot(r["rate_nats"], r["distortion_nats"], "*", ms=13, color="C3", zorder=4)
        ax.annotate(f"full recipe β={r['beta']:g}", (r["rate_nats"], r["distortion_nats"]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8, color="C3")
    every = list(points) + list(marked) + list(seeds)
    xs = [r["rate_nats"] for r in every]
    ys = [r["distortion_nats"] for r in every]
    x_hi = max(xs) * 1.15 + 1
    pad = 0.08 * (max(ys) - min(ys) + 1)
    for c in np.linspace(min(x + y for x, y in zip(xs, ys)), max(x + y for x, y in zip(xs, ys)), 4):
        ax.plot([0, x_hi], [c, c - x_hi], ":", color="0.6", lw=1)
    ax.plot([], [], ":", color="0.6", label="equal ELBO: R + D = const")
    ax.set_xlim(0, x_hi)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_xlabel("rate R = KL(q(z|x) ‖ N(0, I)) (nats per image)")
    ax.set_ylabel("distortion D = −log p(x|z), learned σ (nats per image)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("β sweep on CIFAR-10: rate against distortion (95% intervals)", fontsize=10)
    return fig


def sweep_metrics(points: Sequence[dict], marked: Sequence[dict], seeds: Sequence[dict] = ()) -> plt.Figure:
    """Each sweep metric against β (log axis) with its 95% interval; the same β with other seeds as hollow points;
    full-recipe models as stars."""
    points = sorted(points, key=lambda r: r["beta"])
    fig, axes = plt.subplots(3, 3, figsize=(13, 10), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, SWEEP_PANELS):
        have = [r for r in points if key in r]
        _errorbar(ax, have, "beta", key, fmt="o-", color="C0")
        others = [r for r in seeds if key in r]
        ax.plot([r["beta"] for r in others], [r[key] for r in others], "o", mfc="none", ms=8, color="C1")
        for r in marked:
            if key in r:
                ax.plot(r["beta"], r[key], "*", ms=11, color="C3")
        ax.set_xscale("log")
        ax.set_xlabel("β")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("β sweep: each metric against β (dots: sweep, cheap recipe; hollow: the same β, other seeds; "
                 "stars: full recipe; bars: 95% intervals)")
    return fig


def kl_spectrum(kl_by_beta: Sequence[tuple[float, Sequence[float]]]) -> plt.Figure:
    """KL per dimension (nats), sorted, one line per β, log axis: how many units carry the rate as β grows."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    cmap = plt.get_cmap("viridis")
    for i, (beta, kl) in enumerate(sorted(kl_by_beta)):
        ax.plot(range(1, len(kl) + 1), np.clip(sorted(kl, reverse=True), 1e-4, None),
                color=cmap(i / max(1, len(kl_by_beta) - 1)), label=f"β = {beta:g}")
    ax.set_yscale("log")
    ax.axhline(0.01, color="0.5", ls=":", lw=1)
    ax.set_xlabel("latent dimension, sorted by KL")
    ax.set_ylabel("KL(q(z_j|x) ‖ N(0, 1)) (nats, clipped at 1e-4)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    ax.set_title("KL spectrum per β of the sweep", fontsize=10)
    return fig
