"""The report's markdown tables: every number with its 95% interval in brackets, MISSING where a row lacks it."""
from __future__ import annotations

import re
import statistics
from typing import Any, Callable, Mapping, Sequence

from vaelab.claims import AGREEMENT_SETS, MISSING, agreement, comparisons
from vaelab.recipes import describe, preset_rows, recipe_changes

FACTORS = ("brightness", "hue", "saturation", "flip", "shift", "vshift", "rotation", "scale")
# The image sets every beta is scored on: (key prefix, label).
# The samplers' rows are both kinds fitted by stage sampler (the sampler_* keys repeat the one sampling.prior names),
# beside their ceiling: the codes of training images held out of both fits, decoded.
IMAGE_SETS = (("", "z ~ N(0, I) decoded"), ("mixture_", "mixture sampler"), ("diffusion_", "diffusion sampler"),
              ("ceiling_", "ceiling: held-out training codes decoded"), ("recon_", "reconstructions"))
REAL = "real train images (reference)"

# (key, header, format) of each table, in column order.
LIKELIHOOD_COLUMNS = (
    ("beta", "β", "{:g}"),
    ("test_bpd", "test bits/dim ↓", "{:.3f}"),
    ("test_iw_bpd", "IW bits/dim ↓", "{:.3f}"),
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("kl_dims_sum_nats", "Σ_j KL_j (nats)", "{:.1f}"),
    ("distortion_nats", "distortion (nats)", "{:.0f}"),
    ("test_psnr", "PSNR (dB) ↑", "{:.2f}"),
    ("train_minutes", "train time (min)", "{:.1f}"),
)
QUALITY_COLUMNS = (
    ("fcd", "FCD ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.3f}"),
    ("judge_confidence", "judge confidence ↑", "{:.3f}"),
    ("class_entropy", "class entropy (bits)", "{:.2f}"),
)
AUDIT_COLUMNS = (
    ("fcd", "audit FCD ↓", "{:.2f}"),
    ("kid", "audit KID ↓", "{:.3f}"),
    ("confidence", "audit confidence ↑", "{:.3f}"),
    ("class_entropy", "audit class entropy (bits)", "{:.2f}"),
    ("sharpness_ratio", "sharpness ratio (real = 1)", "{:.3f}"),
)
ORGANISATION_COLUMNS = (
    ("beta", "β", "{:g}"),
    ("total_correlation", "Gaussian TC of q(z) (nats) ↓", "{:.2f}"),
    ("tc_sampled", "sampled TC (nats)", "{:.1f}"),
    ("tc_sampled_self_weight", "its self-weight", "{:.2f}"),
    ("probe_accuracy", "probe accuracy ↑", "{:.3f}"),
    ("factor_score", "mean concentration ↑", "{:.3f}"),
    ("factor_r2", "mean readability R² ↑", "{:.3f}"),
)
FACTOR_COLUMNS = (
    ("score", "concentration (top-2 share gap) ↑", "{:.3f}"),
    ("r2", "readability (held-out R²) ↑", "{:.3f}"),
)
ABLATION_COLUMNS = (
    ("fcd", "FCD, z ~ N(0, I) ↓", "{:.1f}"),
    ("sampler_fcd", "FCD, sampler ↓", "{:.1f}"),
    ("recon_fcd", "FCD, reconstructions ↓", "{:.1f}"),
    ("recon_judge_accuracy", "judge accuracy, reconstructions ↑", "{:.3f}"),
    ("audit_sampler_fcd", "audit FCD, sampler ↓", "{:.1f}"),
    ("audit_recon_fcd", "audit FCD, reconstructions ↓", "{:.1f}"),
    ("sampler_sharpness_ratio", "sharpness, sampler", "{:.3f}"),
    ("recon_sharpness_ratio", "sharpness, reconstructions", "{:.3f}"),
    ("test_bpd", "test bits/dim ↓", "{:.3f}"),
    ("test_psnr", "PSNR (dB) ↑", "{:.2f}"),
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("train_minutes", "train time (min)", "{:.1f}"),
)
# The decoder ablation (stage decoder@<beta>): each set of codes decoded by the decoder as trained (trained_* keys)
# and by the fine-tuned one (unprefixed), judged alike.
DECODERS = (("trained_", "as trained"), ("", "fine-tuned"))
DECODER_SETS = (("mixture_", "mixture sampler"), ("diffusion_", "diffusion sampler"),
                ("ceiling_", "ceiling"), ("recon_", "reconstructions"))
DECODER_COLUMNS = (
    ("fcd", "FCD ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.3f}"),
    ("judge_confidence", "judge confidence ↑", "{:.3f}"),
    ("class_entropy", "class entropy (bits)", "{:.2f}"),
    ("sharpness_ratio", "sharpness (real = 1)", "{:.3f}"),
    ("judge_accuracy", "judge accuracy ↑", "{:.3f}"),
    ("psnr", "PSNR (dB) ↑", "{:.2f}"),
)
SPREAD_COLUMNS = (
    ("test_bpd", "test bits/dim", "{:.3f}"),
    ("test_psnr", "PSNR (dB)", "{:.2f}"),
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("fcd", "FCD, z ~ N(0, I)", "{:.2f}"),
    ("sampler_fcd", "FCD, sampler", "{:.2f}"),
    ("recon_fcd", "FCD, reconstructions", "{:.2f}"),
    ("total_correlation", "Gaussian TC (nats)", "{:.2f}"),
    ("factor_score", "mean concentration", "{:.3f}"),
    ("factor_r2", "mean readability R²", "{:.3f}"),
    ("probe_accuracy", "probe accuracy", "{:.3f}"),
)


def _format(value: Any, fmt: str) -> str:
    return fmt.format(round(value)) if fmt == "{:d}" else fmt.format(value)


def cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    """The value of `key` in `fmt`, with its 95% interval in brackets when the row has one; MISSING when absent."""
    if key not in row:
        return MISSING
    text = _format(row[key], fmt)
    if f"{key}_lo" in row:
        text += f" [{_format(row[f'{key}_lo'], fmt)}, {_format(row[f'{key}_hi'], fmt)}]"
    return text


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]],
          label: tuple[str, Sequence[str]] | None = None) -> str:
    """A markdown table of `rows` over `columns` (value [95% interval] where a row has `_lo`/`_hi`); `label` =
    (header, one label per row) adds a first column."""
    heads = ([label[0]] if label else []) + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(heads) + " |",
             "|" + ("---|" if label else "") + "|".join("---:" for _ in columns) + "|"]
    for i, r in enumerate(rows):
        cells = ([label[1][i]] if label else []) + [cell(r, k, fmt) for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_beta(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda r: r["beta"])


def metric_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Likelihood and reconstruction, one row per beta (sorted by beta)."""
    return table(_by_beta(rows), LIKELIHOOD_COLUMNS)


def _per_image_set(rows: Sequence[Mapping[str, Any]], cells: Callable[[Mapping[str, Any], str], dict[str, Any]],
                   body: list[dict[str, Any]], labels: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """`body` and `labels` extended by one row per image set and beta: `cells(row, prefix)` picks its numbers."""
    for prefix, what in IMAGE_SETS:
        for r in _by_beta(rows):
            body.append(cells(r, prefix))
            labels.append(f"β = {r['beta']:g}: {what}")
    return body, labels


def _judged(r: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The judge's numbers of one image set, its prefix removed."""
    return {k.removeprefix(prefix): v for k, v in r.items() if k.startswith(prefix)} if prefix else dict(r)


def _audited(r: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The audit network's and the sharpness ratio's numbers of one image set, their prefixes removed."""
    cells = {}
    for k, v in r.items():
        others = tuple(f"audit_{p}" for p, _ in IMAGE_SETS if p) + ("audit_sampler_",)
        if k.startswith(f"audit_{prefix}") and (prefix or not k.startswith(others)):
            cells[k.removeprefix(f"audit_{prefix}")] = v
        elif k.startswith(f"{prefix}sharpness_ratio"):
            cells[k.removeprefix(prefix)] = v
    return cells


def quality_table(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    """Sample quality by the judge: the real-image reference row, then per beta z ~ N(0, I) decoded, the ex-post
    sampler's samples and the reconstructions of test images."""
    real = {k: reference[f"real_{k}"] for k, _, _ in QUALITY_COLUMNS}
    body, labels = _per_image_set(rows, _judged, [real], [REAL])
    return table(body, QUALITY_COLUMNS, ("images", labels))


def audit_table(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any] | None) -> str:
    """The same image sets scored by the audit network and by the sharpness ratio: the real-image reference row
    (when the audit's metrics are given), then per beta z ~ N(0, I) decoded, the sampler's and the reconstructions."""
    body, labels = [], []
    if reference is not None:
        body.append({"fcd": reference["real_fcd"], "kid": reference["real_kid"],
                     "confidence": reference["real_judge_confidence"],
                     "class_entropy": reference["real_class_entropy"]})
        labels.append(REAL)
    body, labels = _per_image_set(rows, _audited, body, labels)
    return table(body, AUDIT_COLUMNS, ("images", labels))


def decoder_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per beta and set of codes (each sampler's draws, the ceiling, the test images' μ), the images of the decoder
    as trained beside those of the fine-tuned decoder: the same codes, judged alike; PSNR for reconstructions."""
    body, labels = [], []
    for r in _by_beta(rows):
        for prefix, what in DECODER_SETS:
            for decoder, name in DECODERS:
                cells = {k.removeprefix(decoder + prefix): v for k, v in r.items() if k.startswith(decoder + prefix)}
                if prefix == "recon_":  # the decoded posterior mean's PSNR over the test set
                    psnr = "test_psnr" if decoder else "tuned_test_psnr"
                    cells |= {"psnr" + k.removeprefix(psnr): v for k, v in r.items() if k.startswith(psnr)}
                body.append(cells)
                labels.append(f"β = {r['beta']:g}: {what}, decoder {name}")
    return table(body, DECODER_COLUMNS, ("images", labels))


def organisation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Organisation of the latent space, one row per beta."""
    return table(_by_beta(rows), ORGANISATION_COLUMNS)


def active_units_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Active units at every threshold that was measured, one row per beta."""
    keys = sorted({k for r in rows for k in r if re.fullmatch(r"active_units_[0-9p]+", k)},
                  key=lambda k: float(k.removeprefix("active_units_").replace("p", ".")))
    columns = [("beta", "β", "{:g}")] + [(k, "Var(μ_j) > " + k.removeprefix("active_units_").replace("p", "."),
                                          "{:d}") for k in keys]
    return table(_by_beta(rows), columns)


def factor_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per controlled factor and beta: concentration of the response and readability of the level from μ."""
    body, labels = [], []
    for f in FACTORS:
        for r in _by_beta(rows):
            if f"factor_score_{f}" in r:
                body.append({k.replace(f"factor_score_{f}", "score").replace(f"factor_r2_{f}", "r2"): v
                             for k, v in r.items() if k.startswith((f"factor_score_{f}", f"factor_r2_{f}"))})
                labels.append(f"{f}, β = {r['beta']:g}")
    return table(body, FACTOR_COLUMNS, ("factor", labels))


def ablation_table(presets: Sequence[Mapping[str, Any]], final: Mapping[str, Any],
                   recipe: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """One row per preset that ran at final's beta (params order: baseline, then each change), then the final
    default (labelled with what it changes from the baseline, given its `recipe`); N(0, I) samples of that beta."""
    body, labels = [], []
    for p in presets:
        for r in preset_rows(p):
            if r["beta"] == final["beta"]:
                body.append(r)
                labels.append(f"`{p['preset']}`: {p['description'] or describe(p)}")
    body.append(final)
    base = next((p for p in presets if p["preset"] == "baseline"), None)
    changes = recipe_changes(recipe, base) if recipe is not None and base is not None else []
    labels.append("**final default**" + (f": baseline with {', '.join(changes)}" if changes else
                                         " (params.yaml `model`, `train`)"))
    return table(body, ABLATION_COLUMNS, (f"recipe (β = {final['beta']:g})", labels))


def spread_table(preset: Mapping[str, Any]) -> str:
    """Mean ± seed-to-seed standard deviation of the headline metrics of a multi-seed preset, per beta."""
    rows = preset_rows(preset)
    body, labels = [], []
    for beta in sorted({r["beta"] for r in rows}):
        at = [r for r in rows if r["beta"] == beta]
        cells = {}
        for key, _, fmt in SPREAD_COLUMNS:
            values = [r[key] for r in at if key in r]
            if len(values) >= 2:
                cells[key] = f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"
        body.append(cells)
        labels.append(f"β = {beta:g} ({len(at)} seeds)")
    return table(body, [(k, h, "{}") for k, h, _ in SPREAD_COLUMNS], ("run", labels))


def agreement_table(presets: Sequence[Mapping[str, Any]]) -> str:
    """Per comparison of `claims.comparisons`: do the judge, the audit network and the sharpness ratio see the same
    change, on the sampler's images and on the reconstructions? Empty when no two presets share a budget."""
    lines = ["| preset | against (what differs) | sampler: judge FCD | audit FCD | sharpness | verdict | "
             "reconstructions: judge FCD | audit FCD | sharpness | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons(presets):
        cells = []
        for prefix, _ in AGREEMENT_SETS:
            said, verdict = agreement(c.reference_row, c.row, prefix)
            cells += [*said, verdict]
        changed = ", ".join(recipe_changes(c.preset, c.reference)) or "no model or train key"
        lines.append(f"| `{c.preset['preset']}` | `{c.reference['preset']}` ({changed}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


CONTROL_COLUMNS = (
    ("mig", "MIG", "{:.3f}"),
    ("dci_disentanglement", "DCI disentanglement", "{:.3f}"),
    ("dci_completeness", "DCI completeness", "{:.3f}"),
    ("dci_informativeness", "DCI informativeness", "{:.3f}"),
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("active_units", "active units", "{:.1f}"),
)


def control_table(by_beta: Sequence[Mapping[str, Any]]) -> str:
    """The control study per beta: each score's mean over seeds [95% Student-t interval over the seeds]."""
    rows = _by_beta(by_beta)
    return table(rows, CONTROL_COLUMNS, ("β (seeds)", [f"{r['beta']:g} ({len(r['seeds'])})" for r in rows]))


SWEEP_COLUMNS = (
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("distortion_fixed_sigma_nats", "distortion, fixed σ (nats)", "{:.0f}"),
    ("test_psnr", "PSNR (dB)", "{:.2f}"),
    ("recon_fcd", "recon FCD", "{:.1f}"),
    ("sampler_fcd", "sampler FCD", "{:.1f}"),
    ("active_units_0p01", "active (0.01)", "{:d}"),
    ("effective_units", "effective units", "{:.1f}"),
    ("units_90", "units for 90% KL", "{:d}"),
    ("total_correlation", "Gaussian TC (nats)", "{:.1f}"),
    ("traversal_change", "traversal Δ pixel", "{:.4f}"),
)


def sweep_table(points: Sequence[Mapping[str, Any]]) -> str:
    """One row per swept beta: the sweep's measurements with their 95% intervals, and β·2σ̂²."""
    rows = _by_beta(points)
    return table(rows, SWEEP_COLUMNS, ("β (β·2σ̂²)", [f"{r['beta']:g} ({r['beta_2sigma2']:.2g})" for r in rows]))


def sweep_spread_table(spread: Mapping[str, Any]) -> str:
    """The sweep recipe's seed spread: one row per (spread beta, seed) and a last row of the largest per-beta
    seed-to-seed standard deviation, over the sweep table's columns."""
    columns = [(k, h, "{:.1f}" if k.startswith("active") or k == "units_90" else f)
               for k, h, f in SWEEP_COLUMNS if k in spread["sd"]]
    runs = sorted(spread["runs"], key=lambda r: (r["beta"], r.get("seed", 0)))
    labels = [f"{r['beta']:g}, seed {r.get('seed', '?')}" for r in runs] + ["seed SD (largest over β)"]
    return table([*runs, spread["sd"]], columns, ("β, seed", labels))
