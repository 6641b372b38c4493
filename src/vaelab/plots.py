"""Figures as matplotlib Figures: training curves, labelled image tables, and every figure of one model."""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: stages run without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from vaelab import data, quality  # noqa: E402
from vaelab.metrics import decode_uint8, encode, sample_uint8  # noqa: E402
from vaelab.model import VAE  # noqa: E402
from vaelab.params import FiguresConfig  # noqa: E402

# The weighted parts of the objective as steps.csv names them, with their labels; they sum to the loss.
OBJECTIVE_LABELS = (("recon", "reconstruction −log p(x|z)"), ("perceptual_term", "λ_p·D_feat (perceptual)"),
                    ("kl_term", "β·KL(q(z|x) ‖ p(z))"), ("mmd_term", "MMD term"))


def _epoch_steps(steps: pd.DataFrame) -> dict[int, int]:
    """The global step at which each epoch ended (the per-step rows at whole epochs)."""
    ends = steps[(steps["epoch"] - steps["epoch"].round()).abs() < 1e-9]
    return {int(round(e)): int(st) for e, st in zip(ends["epoch"], ends["step"])}


def training_curves(history: pd.DataFrame, steps: pd.DataFrame, beta: float, perceptual_weight: float,
                    mmd_weight: float, title: str) -> plt.Figure:
    """2x2 panels against the training step: each weighted term of the objective and their sum (train, per
    logged window of steps; test, per epoch), bits/dim (train and test per epoch), the decoder's σ̂ and the
    learning rate. Terms that are zero throughout (no perceptual or MMD term) are left out."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    at = _epoch_steps(steps)
    line = "-" if len(steps) >= 30 else ".-"  # few logged rows (a short run): show each point
    test_x = [at[int(e)] for e in history["epoch"]]
    # The test set's weighted terms, from its unweighted ones: the same sum as the training loss.
    test_parts = {"recon": history["test_recon"], "perceptual_term": perceptual_weight * history["test_perceptual"],
                  "kl_term": beta * history["test_kl"], "mmd_term": mmd_weight * history["test_mmd"]}
    ax = axes[0][0]
    ax.plot(steps["step"], steps["loss"], line, color="black", lw=2, label="total loss (sum of the terms)")
    ax.plot(test_x, history["test_loss"], "s", color="black", ms=5, mfc="none", label="test, per epoch")
    for i, (key, label) in enumerate(OBJECTIVE_LABELS):
        if not (steps[key].abs() > 0).any():
            continue
        colour = f"C{i}"
        ax.plot(steps["step"], steps[key], line, color=colour, label=label)
        ax.plot(test_x, test_parts[key], "s", color=colour, ms=5, mfc="none")
    drawn = [y for ln in ax.get_lines() for y in ln.get_ydata()]
    # Log scale where every drawn value is positive (an MMD estimate can be negative: then symmetric log).
    ax.set_yscale("log") if min(drawn) > 0 else ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("Objective per image (nats): train per logged steps, test (□) per epoch", fontsize=10)
    ax.set_ylabel("nats per image (log scale)")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    ax.plot(test_x, history["train_bpd"], "-o", ms=3, label="train (epoch mean)")
    ax.plot(test_x, history["test_bpd"], "--s", ms=3, label="test")
    ax.set_title("Negative ELBO (bits/dim)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1][0]
    if steps["sigma"].notna().any():
        ax.plot(steps["step"], steps["sigma"], line, color="C4")
        ax.set_title("Decoder σ̂ ([-1, 1] pixel scale)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "σ is predicted per pixel: no single σ̂", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("Decoder σ̂", fontsize=10)
    ax = axes[1][1]
    ax.plot(steps["step"], steps["lr"], line, color="C5")
    ax.set_title("Learning rate (warm-up, then cosine decay)", fontsize=10)
    for ax in axes.flat:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


def training_curves_by_beta(curves: dict[float, tuple[pd.DataFrame, pd.DataFrame]], title: str) -> plt.Figure:
    """Every β overlaid: the training loss and its β·KL term per logged steps, the decoder's σ̂, and test bits/dim
    per epoch. `curves` maps β to its (history, steps)."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), constrained_layout=True)
    for i, (beta, (history, steps)) in enumerate(sorted(curves.items())):
        colour, label = f"C{i}", f"β = {beta:g}"
        line = "-" if len(steps) >= 30 else ".-"  # few logged rows (a short run): show each point
        axes[0].plot(steps["step"], steps["loss"], line, color=colour, label=label)
        axes[1].plot(steps["step"], steps["kl_term"], line, color=colour, label=label)
        axes[2].plot(steps["step"], steps["sigma"], line, color=colour, label=label)
        at = _epoch_steps(steps)
        axes[3].plot([at[int(e)] for e in history["epoch"]], history["test_bpd"], "-s", ms=3, color=colour,
                     label=label)
    for ax, name in zip(axes, ("training loss (nats, log scale)", "β·KL term (nats)", "decoder σ̂",
                               "test bits/dim per epoch")):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle(title)
    return fig


def image_table(
    rows: Sequence[torch.Tensor],
    title: str = "",
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: float = 0.9,
) -> plt.Figure:
    """Tile rows of uint8 images (each (K, 3, 32, 32)) into one labelled figure; `scale` inches per image."""
    n_rows, n_cols, pad = len(rows), max(len(r) for r in rows), 2
    canvas = np.ones((n_rows * (32 + pad) + pad, n_cols * (32 + pad) + pad, 3), dtype=np.uint8) * 255
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (32 + pad), pad + j * (32 + pad)
            canvas[y : y + 32, x : x + 32] = img.permute(1, 2, 0).cpu().numpy()  # (32, 32, 3)
    left = 1.4 if row_labels else 0.1
    top = 0.5 if (title or col_labels) else 0.1
    w, h = n_cols * scale + left + 0.1, n_rows * scale + top + 0.1
    fig = plt.figure(figsize=(w, h))
    ax = fig.add_axes((left / w, 0.1 / h, (w - left - 0.1) / w, (h - top - 0.1) / h))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([pad + j * (32 + pad) + 16 for j in range(n_cols)], col_labels or [""] * n_cols, fontsize=7)
    ax.set_yticks([pad + i * (32 + pad) + 16 for i in range(n_rows)], row_labels or [""] * n_rows, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / h, va="top")
    return fig


def image_grid(images: torch.Tensor, nrow: int, title: str = "") -> plt.Figure:
    """A square-ish grid of uint8 images (N, 3, 32, 32), `nrow` per row."""
    rows = [images[i : i + nrow] for i in range(0, len(images), nrow)]
    return image_table(rows, title=title)


def save(fig: plt.Figure, path) -> None:
    """Write a figure as PNG (to a path the caller makes atomic) and free it."""
    fig.savefig(path, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def lerp(z1: torch.Tensor, z2: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points from z1 to z2 on a straight line, endpoints included: (steps, z)."""
    t = torch.linspace(0, 1, steps).unsqueeze(1)  # (steps, 1)
    return (1 - t) * z1 + t * z2


def factor_heatmap(response: pd.DataFrame, kl_dims: Sequence[float], title: str) -> plt.Figure:
    """Heatmap of each factor's share of its response (rows) over latent dimensions (columns, sorted by KL,
    highest first); `response` has a `dim` column and one column per factor (mean squared change of mu)."""
    names = [c for c in response.columns if c != "dim"]
    order = sorted(range(len(kl_dims)), key=lambda j: -kl_dims[j])
    r = response[names].to_numpy().T[:, order]  # (factors, dims)
    share = r / np.clip(r.sum(1, keepdims=True), 1e-30, None)
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.16 * len(order)), 0.5 * len(names) + 1.6), constrained_layout=True)
    im = ax.imshow(share, aspect="auto", cmap="magma", vmin=0, vmax=max(float(share.max()), 1e-9))
    ax.set_yticks(range(len(names)), names)
    step = max(1, len(order) // 16)
    ax.set_xticks(range(0, len(order), step), [f"z{order[i]}" for i in range(0, len(order), step)], fontsize=7,
                  rotation=90)
    ax.set_xlabel("latent dimension, sorted by KL (highest first)")
    for i, row in enumerate(share):
        top = int(row.argmax())
        # Dark text on the bright (top) cells of the colour map, light text on dark ones.
        light = row[top] < 0.6 * float(share.max())
        ax.text(top, i, f"{row[top]:.2f}", ha="center", va="center", fontsize=7, color="white" if light else "black")
    fig.colorbar(im, ax=ax, label="share of the factor's response")
    ax.set_title(title, fontsize=10)
    return fig


def class_interpolation(model: VAE, draw: Callable[[int, torch.Generator], torch.Tensor],
                        classify: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                        names: Sequence[str], steps: int, seed: int, title: str, pool: int = 64) -> plt.Figure:
    """A transition between classes: of `pool` sampler draws, the one the judge is surest of and the surest one of
    another class, joined by `steps` decoded codes on a line, the judge's label and confidence under each frame."""
    z = draw(pool, torch.Generator().manual_seed(seed + 1))  # (pool, z)
    labels, conf = classify(decode_uint8(model, z))
    a = int(conf.argmax())
    other = (labels != labels[a]).nonzero().flatten()
    b = int(other[conf[other].argmax()]) if len(other) else int(conf.argsort(descending=True)[1])
    frames = decode_uint8(model, lerp(z[a], z[b], steps))
    frame_labels, frame_conf = classify(frames)
    where = (f"between two sampler draws of different judge classes, from a {names[int(labels[a])]} to a "
             f"{names[int(labels[b])]}" if len(other) else
             f"between the two sampler draws the judge is surest of (all {pool} draws are one class, "
             f"{names[int(labels[a])]})")
    return image_table([frames], f"{title}: {where}; the judge's label and confidence under each frame",
                       col_labels=[f"{names[int(k)]}\n{c:.2f}" for k, c in zip(frame_labels, frame_conf.tolist())])


def make_figures(model: VAE, ds: data.CIFAR10, history: pd.DataFrame, steps: pd.DataFrame, kl_dims: list[float],
                 response: pd.DataFrame, beta: float, perceptual_weight: float, mmd_weight: float, cfg: FiguresConfig,
                 draw: Callable[[int, torch.Generator], torch.Tensor], sampler_name: str,
                 classify: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], seed: int,
                 device: torch.device) -> dict[str, plt.Figure]:
    """All figures of one model, keyed by file stem; `history` and `steps` are its per-epoch and per-step curves,
    `perceptual_weight` and `mmd_weight` the weights it was trained with; `draw(n, generator)` gives n codes (n, z) of the ex-post
    sampler fitted to its training codes, named `sampler_name` in titles; `classify(images_u8)` gives the judge's
    class index (N,) and confidence (N,) of uint8 images.
    Prior codes depend only on the seed, so every beta decodes the same z (the report's side-by-side)."""
    g = torch.Generator().manual_seed(seed)
    zdim = model.cfg.latent_dim
    n = cfg.grid_size**2
    figs = {"training_curves": training_curves(history, steps, beta, perceptual_weight, mmd_weight,
                                               f"β = {beta:g}: training curves")}
    # With a flow prior the noise e ~ N(0, I) is mapped to codes z = f(e) before decoding.
    flow = model.prior is not None
    noise = "z = f(e), e ~ N(0, I)" if flow else "z ~ N(0, I)"
    z = torch.randn(n, zdim, generator=g)
    figs["prior_samples"] = image_grid(sample_uint8(model, z), cfg.grid_size, f"β = {beta:g}: {n} samples, {noise}")
    figs["sampler_samples"] = image_grid(decode_uint8(model, draw(n, g)), cfg.grid_size,
                                         f"β = {beta:g}: {n} samples from the ex-post sampler "
                                         f"({sampler_name} on training μ)")
    z1, z2 = torch.randn(2, zdim, generator=g)
    figs["interpolation_prior"] = image_table(
        [sample_uint8(model, lerp(z1, z2, cfg.interp_steps))],
        f"β = {beta:g}: linear interpolation between e1, e2 ~ N(0, I), decoded through the prior flow z = f(e)" if flow
        else f"β = {beta:g}: linear interpolation between z1, z2 ~ N(0, I)",
        col_labels=[f"{t:.2f}" for t in torch.linspace(0, 1, cfg.interp_steps).tolist()])
    # Two test images of different classes, chosen by the seed.
    order = torch.randperm(len(ds.test_x), generator=g)
    a = int(order[0])
    b = int(next(i for i in order.tolist() if ds.test_y[i] != ds.test_y[a]))
    mu, _ = encode(model, ds.test_x[[a, b]], device)
    names = [ds.label_names[int(ds.test_y[i])] for i in (a, b)]
    frames = decode_uint8(model, lerp(mu[0], mu[1], cfg.interp_steps))
    figs["interpolation_test"] = image_table(
        [torch.cat([ds.test_x[[a]], frames, ds.test_x[[b]]])],
        f"β = {beta:g}: interpolation between the codes of a test {names[0]} and a test {names[1]}",
        col_labels=[f"{names[0]}\n(input)", *[f"{t:.2f}" for t in torch.linspace(0, 1, cfg.interp_steps).tolist()],
                    f"{names[1]}\n(input)"])
    figs["interpolation_sampler"] = class_interpolation(model, draw, classify, ds.label_names, cfg.interp_steps,
                                                        seed, f"β = {beta:g}")
    idx = order[: cfg.n_reconstructions]
    mu, _ = encode(model, ds.test_x[idx], device)
    figs["reconstructions"] = image_table(
        [ds.test_x[idx], decode_uint8(model, mu)], f"β = {beta:g}: test inputs and reconstructions (decoded μ)",
        row_labels=["input", "reconstruction"])
    # Traversals of the highest-KL dimensions around the code of one test image.
    top = sorted(range(zdim), key=lambda j: -kl_dims[j])[: cfg.traversal_dims]
    values = torch.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.traversal_steps)
    base = mu[0]
    rows = []
    for j in top:
        zs = base.repeat(cfg.traversal_steps, 1)  # (steps, z)
        zs[:, j] = values
        rows.append(decode_uint8(model, zs))
    figs["traversals"] = image_table(
        rows, f"β = {beta:g}: traversals of the {len(top)} highest-KL dimensions (others at a test image's μ)",
        row_labels=[f"z{j} ({kl_dims[j]:.1f} nats)" for j in top], col_labels=[f"{v:+.1f}" for v in values.tolist()])
    figs["factor_response"] = factor_heatmap(
        response, kl_dims, f"β = {beta:g}: where each controlled factor moves the code (share of Σ_j Δμ_j²)")
    # Copies would show as twins: the first samples of the sampler grid above beside their nearest training images.
    k = min(8, n)
    samples = decode_uint8(model, draw(n, torch.Generator().manual_seed(seed)))[:k]
    near, dist = quality.nearest_images(samples, ds.train_x)
    figs["nearest_neighbours"] = image_table(
        [samples, ds.train_x[near]], f"β = {beta:g}: sampler samples and their nearest training images",
        row_labels=["sample", "nearest training\nimage"], col_labels=[f"RMSE {d:.3f}" for d in dist.tolist()])
    return figs


def side_by_side(images: Sequence[np.ndarray], titles: Sequence[str], title: str) -> plt.Figure:
    """Figures already drawn (RGB(A) arrays, e.g. read from PNG) in one row, each with its title."""
    widths = [im.shape[1] / im.shape[0] for im in images]
    fig, axes = plt.subplots(1, len(images), figsize=(5.5 * sum(widths), 6.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths}, constrained_layout=True)
    for ax, im, t in zip(axes[0], images, titles):
        ax.imshow(im)
        ax.set_title(t, fontsize=12)
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    return fig


def tile(images: torch.Tensor, nrow: int, pad: int = 2, upscale: int = 1) -> np.ndarray:
    """uint8 images (N, 3, H, W), `nrow` per row, on a white canvas with `pad`-pixel gaps, every pixel repeated
    `upscale` times (nearest neighbour): a (rows * (H + pad) + pad) * upscale by (cols * (W + pad) + pad) * upscale
    RGB uint8 array, ready for PIL.Image.fromarray."""
    n, _, h, w = images.shape
    cols, rows = min(nrow, n), -(-n // nrow)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k, img in enumerate(images):
        y, x = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        canvas[y : y + h, x : x + w] = img.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    return canvas.repeat(upscale, axis=0).repeat(upscale, axis=1)


@torch.no_grad()
def traversal_rows(model: VAE, base: torch.Tensor, dims: Sequence[int], steps: int, span: float) -> list[torch.Tensor]:
    """Decoded uint8 images (steps, 3, 32, 32) per dimension: z_j of the code `base` (z,) set to evenly spaced
    values in [-span, span], the other coordinates kept."""
    values = torch.linspace(-span, span, steps)
    rows = []
    for j in dims:
        z = base.repeat(steps, 1)  # (steps, z)
        z[:, j] = values
        rows.append(decode_uint8(model, z))
    return rows
