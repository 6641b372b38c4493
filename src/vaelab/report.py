"""The markdown report: per-beta metric table, a summary written from the measured numbers, every figure."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

FIGURES = (
    ("training_curves", "Training curves"),
    ("prior_samples", "Samples decoded from z ~ N(0, I)"),
    ("interpolation_prior", "Interpolation between two random points z1, z2 ~ N(0, I)"),
    ("interpolation_test", "Interpolation between the codes of two test images of different classes"),
    ("reconstructions", "Reconstructions"),
    ("traversals", "Latent traversals of the highest-KL dimensions"),
)

# (key, header, format) of the metric table, in column order.
COLUMNS = (
    ("beta", "β", "{:g}"),
    ("test_bpd", "test bits/dim ↓", "{:.3f}"),
    ("rate_nats", "KL / rate (nats)", "{:.1f}"),
    ("distortion_nats", "distortion (nats)", "{:.0f}"),
    ("test_recon_mse", "recon MSE", "{:.5f}"),
    ("test_psnr", "PSNR (dB) ↑", "{:.2f}"),
    ("active_units", "active units", "{:d}"),
    ("train_minutes", "train time (min)", "{:.1f}"),
)


def metric_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table with one row per beta (rows sorted by beta)."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    body = []
    for r in sorted(rows, key=lambda r: r["beta"]):
        cells = []
        for key, _, fmt in COLUMNS:
            v = r[key]
            cells.append(fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def _change(a: float, b: float, rel_tol: float = 0.005) -> str:
    """'rose' / 'fell' / 'stayed about the same' for a change from a to b (relative tolerance)."""
    if abs(b - a) <= rel_tol * max(abs(a), abs(b), 1e-12):
        return "stayed about the same"
    return "rose" if b > a else "fell"


def _trend(values: Sequence[float]) -> str:
    """' monotonically' when a sequence only rises or only falls, else ' (not monotonically)'."""
    if len(values) < 3:
        return ""
    d = [b - a for a, b in zip(values, values[1:])]
    if all(x > 0 for x in d) or all(x < 0 for x in d):
        return " monotonically"
    return " (not monotonically)"


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """At most 300 words on what changing beta did; every number is taken from `rows`, and each direction
    word is computed from them."""
    rows = sorted(rows, key=lambda r: r["beta"])
    if len(rows) == 1:
        r = rows[0]
        return (f"Only β = {r['beta']:g} is listed, so there is no comparison: it reaches {r['test_bpd']:.3f} "
                f"bits/dim on the test set with a rate of {r['rate_nats']:.1f} nats, PSNR {r['test_psnr']:.2f} dB "
                f"and {r['active_units']} active units of {r['latent_dim']}. Add β values to `train.betas` in "
                f"params.yaml to compare.")
    lo, hi = rows[0], rows[-1]
    betas = ", ".join(f"{r['beta']:g}" for r in rows)

    def sentence(key: str, name: str, fmt: str, unit: str) -> str:
        vals = [r[key] for r in rows]
        how = _change(lo[key], hi[key])
        a, b = fmt.format(lo[key]), fmt.format(hi[key])
        if how == "stayed about the same":
            return f"{name} {how} ({a} → {b}{unit})"
        return f"{name} {how}{_trend(vals)} from {a} to {b}{unit}"

    parts = [
        f"Across β ∈ {{{betas}}}, going from β = {lo['beta']:g} to β = {hi['beta']:g}: "
        + "; ".join([
            sentence("rate_nats", "the KL (rate)", "{:.1f}", " nats"),
            sentence("distortion_nats", "the distortion", "{:.0f}", " nats"),
            sentence("test_psnr", "reconstruction PSNR", "{:.2f}", " dB"),
            sentence("active_units", "the number of active units", "{:d}", f" of {lo['latent_dim']}"),
        ])
        + ".",
    ]
    best = min(rows, key=lambda r: r["test_bpd"])
    parts.append(
        f"The best test negative ELBO is {best['test_bpd']:.3f} bits/dim, at β = {best['beta']:g}"
        + (" — the β that optimises the ELBO itself." if best["beta"] == 1 else ".")
    )
    rate_fell = _change(lo["rate_nats"], hi["rate_nats"]) == "fell"
    psnr_move = _change(lo["test_psnr"], hi["test_psnr"])
    if rate_fell and psnr_move == "fell":
        parts.append(
            f"So the larger β bought a {lo['rate_nats'] - hi['rate_nats']:.1f}-nat lower rate with "
            f"{lo['test_psnr'] - hi['test_psnr']:.2f} dB of reconstruction PSNR: the code carries less about "
            f"each image, and reconstructions lose detail.")
    elif rate_fell and psnr_move == "stayed about the same":
        parts.append(
            f"The larger β cut the rate by {lo['rate_nats'] - hi['rate_nats']:.1f} nats while PSNR moved by only "
            f"{abs(lo['test_psnr'] - hi['test_psnr']):.2f} dB: most of the information it removed from the code "
            f"did not show up as pixel error.")
    return " ".join(parts)


def render(rows: Sequence[Mapping[str, Any]], figures: Mapping[str, str], setup: Mapping[str, Any]) -> str:
    """The whole report as markdown. `figures` maps a beta tag to its figures folder relative to the report;
    `setup` describes the run (epochs, data size, model) for the header and the modelling-choices section."""
    rows = sorted(rows, key=lambda r: r["beta"])
    lines = [
        "# β-VAE on CIFAR-10: report",
        "",
        f"Generated by `dvc repro` from the measured metrics files (`metrics/beta_*/`). "
        f"{setup['n_train']} training and {setup['n_test']} test images, {setup['epochs']} epochs per model, "
        f"seed {setup['seed']}.",
        "",
        "## Metrics per β",
        "",
        metric_table(rows),
        "",
        "bits/dim is the test-set negative ELBO (β = 1 weighting, one posterior sample per image) under the "
        "decoder's discrete 256-level likelihood; rate is KL(q(z|x) ‖ p(z)) and distortion −log p(x|z), in nats "
        "per image; PSNR compares the decoded posterior mean with the input on the [0, 1] scale; a unit is active "
        "when Cov_x E[z_j|x] > 0.01 (Burda et al. 2015).",
        "",
        "## Summary",
        "",
        summary(rows),
        "",
        "## Same z, every β",
        "",
        "Each grid decodes the same 16 codes z ~ N(0, I) (drawn from the seed), one model per column.",
        "",
        "| " + " | ".join(f"β = {r['beta']:g}" for r in rows) + " |",
        "|" + "|".join(":---:" for _ in rows) + "|",
        "| " + " | ".join(f"![β = {r['beta']:g}]({figures[r['tag']]}/prior_samples.png)" for r in rows) + " |",
        "",
        "## Model and training choices",
        "",
        *[f"- {line}" for line in setup["choices"]],
        "",
    ]
    for r in rows:
        lines += [f"## β = {r['beta']:g}", ""]
        for stem, caption in FIGURES:
            lines += [f"**{caption}**", "", f"![{caption}, β = {r['beta']:g}]({figures[r['tag']]}/{stem}.png)", ""]
    return "\n".join(lines)
