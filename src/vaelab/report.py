"""The markdown report: per-beta metric table, a summary written from the measured numbers, every figure."""
from __future__ import annotations

import base64
import dataclasses
import html
import operator
import re
from typing import Any, Callable, Mapping, Sequence

import markdown

from vaelab.params import ModelConfig, TrainConfig

FIGURES = (
    ("training_curves", "Training curves"),
    ("prior_samples", "Samples from the prior: N(0, I) noise, decoded (through the prior flow, if any)"),
    ("samplers", "Samples from each sampler: N(0, I), reduced temperature, mixture on the training codes"),
    ("interpolation_prior", "Interpolation between two random points of N(0, I) noise"),
    ("interpolation_test", "Interpolation between the codes of two test images of different classes"),
    ("reconstructions", "Reconstructions"),
    ("traversals", "Latent traversals of the highest-KL dimensions"),
    ("factor_response", "Factor response: each controlled factor's share of the change in μ, per dimension"),
)
FACTORS = ("brightness", "hue", "flip", "shift")

# (key, header, format) of each table, in column order.
LIKELIHOOD_COLUMNS = (
    ("beta", "β", "{:g}"),
    ("test_bpd", "test bits/dim ↓", "{:.3f}"),
    ("test_iw_bpd", "IW bits/dim ↓", "{:.3f}"),
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("distortion_nats", "distortion (nats)", "{:.0f}"),
    ("test_recon_mse", "recon MSE", "{:.5f}"),
    ("test_psnr", "PSNR (dB) ↑", "{:.2f}"),
    ("train_minutes", "train time (min)", "{:.1f}"),
)
QUALITY_COLUMNS = (
    ("fcd", "FCD ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.4f}"),
    ("kid_std", "KID std", "{:.4f}"),
    ("judge_confidence", "judge confidence ↑", "{:.3f}"),
    ("class_entropy", "class entropy (bits)", "{:.2f}"),
)
ORGANISATION_COLUMNS = (
    ("beta", "β", "{:g}"),
    ("active_units", "active units", "{:d}"),
    ("total_correlation", "total correlation (nats) ↓", "{:.1f}"),
    ("probe_accuracy", "probe accuracy ↑", "{:.3f}"),
    ("factor_score", "factor score ↑", "{:.3f}"),
    *((f"factor_score_{f}", f"{f}", "{:.3f}") for f in FACTORS),
)


def _cell(value: Any, fmt: str) -> str:
    return fmt.format(int(value)) if fmt == "{:d}" else fmt.format(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]],
          label: tuple[str, Sequence[str]] | None = None) -> str:
    """A markdown table of `rows` over `columns`; `label` = (header, one label per row) adds a first column."""
    heads = ([label[0]] if label else []) + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(heads) + " |",
             "|" + ("---|" if label else "") + "|".join("---:" for _ in columns) + "|"]
    for i, r in enumerate(rows):
        cells = ([label[1][i]] if label else []) + [_cell(r[k], fmt) for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Likelihood and reconstruction, one row per beta (sorted by beta)."""
    return table(sorted(rows, key=lambda r: r["beta"]), LIKELIHOOD_COLUMNS)


def quality_table(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    """Sample quality by the judge: the real-image reference row, then per beta its samples from N(0, I), at
    reduced temperature and from the mixture on the training codes, and its reconstructions of test images."""
    rows = sorted(rows, key=lambda r: r["beta"])
    body = [{k: reference[f"real_{k}"] for k, _, _ in QUALITY_COLUMNS}]
    labels = ["real train images (reference)"]
    for r in rows:
        body.append({k: r[k] for k, _, _ in QUALITY_COLUMNS})
        labels.append(f"β = {r['beta']:g}: prior samples (N(0, I) noise)")
    for r in rows:
        body.append({k: r[f"tau_{k}"] for k, _, _ in QUALITY_COLUMNS})
        labels.append(f"β = {r['beta']:g}: prior samples (N(0, {r['temperature']:g}² I) noise)")
    for r in rows:
        body.append({k: r[f"gmm_{k}"] for k, _, _ in QUALITY_COLUMNS})
        labels.append(f"β = {r['beta']:g}: samples from a {r['gmm_components']}-component mixture on training μ")
    for r in rows:
        body.append({k: r[f"recon_{k}"] for k, _, _ in QUALITY_COLUMNS})
        labels.append(f"β = {r['beta']:g}: reconstructions")
    return table(body, QUALITY_COLUMNS, ("images", labels))


ABLATION_COLUMNS = (
    ("fcd", "FCD ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.4f}"),
    ("judge_confidence", "judge confidence ↑", "{:.3f}"),
    ("class_entropy", "class entropy (bits) ↑", "{:.2f}"),
    ("test_bpd", "test bits/dim ↓", "{:.3f}"),
    ("test_psnr", "PSNR (dB) ↑", "{:.2f}"),
    ("rate_nats", "rate (nats)", "{:.1f}"),
    ("train_minutes", "train time (min)", "{:.1f}"),
)


def preset_rows(preset: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per beta of a preset's results file (reports/presets/NAME.json): train and eval metrics joined."""
    rows = []
    for b in preset["betas"]:
        row = {**b["train"], **b["eval"], "beta": b["beta"]}
        row["train_minutes"] = row["train_seconds"] / 60
        rows.append(row)
    return rows


def _recipe(preset: Mapping[str, Any]) -> str:
    m, t = preset["model"], preset["train"]
    prior = f"flow prior ({m['prior_flows']} couplings)" if m.get("prior_flows") else "N(0, I) prior"
    return (f"z = {m['latent_dim']}, {prior}, {m['likelihood']}, {m['res_blocks']} res. blocks, {t['epochs']} epochs, "
            f"MMD weight {t['mmd_weight']:g}, EMA {t['ema_decay']:g}, KL warm-up {t['kl_warmup_epochs']:g} ep.")


def baseline_table(rows: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]) -> str:
    """Baseline preset and default model side by side, per beta both ran, N(0, I) samples (ablation columns)."""
    base = {r["beta"]: r for r in baseline}
    body, labels = [], []
    for r in sorted(rows, key=lambda r: r["beta"]):
        if r["beta"] in base:
            body += [base[r["beta"]], r]
            labels += [f"β = {r['beta']:g}: baseline", f"β = {r['beta']:g}: default"]
    return table(body, ABLATION_COLUMNS, ("model, prior samples (N(0, I) noise)", labels))


def recipe_changes(recipe: Mapping[str, Mapping[str, Any]], preset: Mapping[str, Any]) -> list[str]:
    """`section.key = value` for every model / train key where `recipe` differs from a preset's (betas and
    threads left out: they do not change the model). A key missing from a preset's file (written before the key
    existed) counts as the code default, which is what that run used."""
    out = []
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in recipe[section].items():
            if key not in ("betas", "threads") and preset[section].get(key, defaults.get(key)) != value:
                out.append(f"{section}.{key} = {value if not isinstance(value, float) else f'{value:g}'}")
    return out


def ablation_table(presets: Sequence[Mapping[str, Any]], final: Mapping[str, Any],
                   recipe: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """One row per preset that ran at final's beta (params order: baseline, then each change), then the final
    default (labelled with what it changes from the baseline, given its `recipe`); N(0, I) samples of that beta."""
    body, labels = [], []
    for p in presets:
        for r in preset_rows(p):
            if r["beta"] == final["beta"]:
                body.append(r)
                labels.append(f"`{p['preset']}`: {p['description'] or _recipe(p)}")
    body.append(final)
    base = next((p for p in presets if p["preset"] == "baseline"), None)
    changes = recipe_changes(recipe, base) if recipe is not None and base is not None else []
    labels.append("**final default**" + (f": baseline with {', '.join(changes)}" if changes else
                                         " (params.yaml `model`, `train`)"))
    return table(body, ABLATION_COLUMNS, (f"recipe (β = {final['beta']:g})", labels))


def targets(final: Mapping[str, Any], baseline: Mapping[str, Any]) -> str:
    """The modelling targets against the baseline, checked on the numbers: FCD at most half the baseline's,
    higher judge confidence, class entropy >= 3 bits (N(0, I) samples of the same beta). Where the row has the
    reconstructions' numbers, the same bars are checked on them too: the ceiling of any prior that generalises."""
    bars = [("fcd", "FCD", operator.le, 0.5 * baseline["fcd"], f"½ × baseline {0.5 * baseline['fcd']:.2f}", ".2f"),
            ("judge_confidence", "judge confidence", operator.gt, baseline["judge_confidence"],
             f"baseline {baseline['judge_confidence']:.3f}", ".3f"),
            ("class_entropy", "class entropy", operator.ge, 3.0, "3.00 bits", ".2f")]
    checks = [(clears(final[key], bar), f"{name} {final[key]:{fmt}} vs {text}")
              for key, name, clears, bar, text, fmt in bars]
    met = sum(ok for ok, _ in checks)
    line = (f"Targets at β = {final['beta']:g} (N(0, I) samples, default vs baseline): {met} of 3 met — "
            + "; ".join(f"{text}: {'met' if ok else 'missed'}" for ok, text in checks) + ".")
    if not all(f"recon_{key}" in final for key, *_ in bars):
        return line
    # Codes of images the model never saw are what a prior that generalises (rather than copies training codes)
    # would draw at best: their decoded images, the test reconstructions, bound what such a prior can reach.
    out_of_reach = [name for key, name, clears, bar, *_ in bars if not clears(final[f"recon_{key}"], bar)]
    ceiling = ", ".join(f"{name} {final[f'recon_{key}']:{fmt}}" for key, name, _, _, _, fmt in bars)
    missed = " and ".join(out_of_reach) + (" targets" if len(out_of_reach) > 1 else " target")
    return (line + f" Ceiling: the test images' reconstructions (codes of unseen images, decoded) score {ceiling}. "
            "A prior whose samples were distributed like the codes of unseen images would score like them, "
            + (f"so the {missed} {'are' if len(out_of_reach) > 1 else 'is'} out of reach of a better prior alone: "
               "it takes a better encoder and decoder." if out_of_reach else
               "so every target is within reach of a better prior" + (" alone." if met < 3 else ".")))


def organisation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Organisation of the latent space, one row per beta."""
    return table(sorted(rows, key=lambda r: r["beta"]), ORGANISATION_COLUMNS)


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


WORDS = ("none", "one", "two", "three", "four", "five")

# Directional numbers of the verdict: (key, name, higher is better).
QUALITY_VERDICT = (("fcd", "FCD", False), ("kid", "KID", False), ("judge_confidence", "judge confidence", True),
                   ("test_psnr", "PSNR", True))
ORGANISATION_VERDICT = (("total_correlation", "total correlation", False), ("factor_score", "factor score", True),
                        ("probe_accuracy", "probe accuracy", True))


def _better(lo: Mapping[str, Any], hi: Mapping[str, Any], verdict: Sequence[tuple[str, str, bool]]) -> list[str]:
    """Names of the numbers on which `hi` beats `lo` by more than the tolerance of `_change`."""
    wins = []
    for key, name, higher in verdict:
        how = _change(lo[key], hi[key])
        if how != "stayed about the same" and (how == "rose") == higher:
            wins.append(name)
    return wins


def summary(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any] | None = None) -> str:
    """At most 300 words on what changing beta did to visual quality and to the organisation of the code;
    every number is taken from `rows` (and the real-image `reference`), each direction word is computed."""
    rows = sorted(rows, key=lambda r: r["beta"])
    if len(rows) == 1:
        r = rows[0]
        return (f"Only β = {r['beta']:g} is listed, so there is no comparison: it reaches {r['test_bpd']:.3f} "
                f"bits/dim on the test set with a rate of {r['rate_nats']:.1f} nats, PSNR {r['test_psnr']:.2f} dB, "
                f"{r['active_units']} active units of {r['latent_dim']}, FCD {r['fcd']:.2f} and total correlation "
                f"{r['total_correlation']:.1f} nats. Add β values to `train.betas` in params.yaml to compare.")
    lo, hi = rows[0], rows[-1]
    betas = ", ".join(f"{r['beta']:g}" for r in rows)

    def sentence(key: str, name: str, fmt: str, unit: str = "") -> str:
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
    ref = ""
    if reference is not None:
        ref = f" (real images: {reference['real_fcd']:.2f})"
    parts.append(
        "Visual quality of prior samples, by the judge: "
        + "; ".join([sentence("fcd", "FCD", "{:.2f}") + ref, sentence("kid", "KID", "{:.4f}"),
                     sentence("judge_confidence", "judge confidence", "{:.3f}"),
                     sentence("class_entropy", "class entropy", "{:.2f}", " bits")]) + ".")
    parts.append(
        "Organisation of the code: "
        + "; ".join([sentence("total_correlation", "total correlation", "{:.1f}", " nats"),
                     sentence("factor_score", "the factor score", "{:.3f}"),
                     sentence("probe_accuracy", "linear-probe accuracy", "{:.3f}")]) + ".")
    q = _better(lo, hi, QUALITY_VERDICT)
    o = _better(lo, hi, ORGANISATION_VERDICT)
    verdict = (f"β = {hi['beta']:g} beats β = {lo['beta']:g} on {WORDS[len(q)]} of the {WORDS[len(QUALITY_VERDICT)]} "
               f"visual-quality numbers ({', '.join(q) or 'none'}) and on {WORDS[len(o)]} of the "
               f"{WORDS[len(ORGANISATION_VERDICT)]} organisation numbers ({', '.join(o) or 'none'})")
    q_up, o_up = 2 * len(q) > len(QUALITY_VERDICT), 2 * len(o) > len(ORGANISATION_VERDICT)
    if o_up and not q_up:
        verdict += ": in this run the larger β traded visual quality for organisation."
    elif q_up and not o_up:
        verdict += ": in this run the larger β helped the samples more than the organisation of the code."
    elif q_up and o_up:
        verdict += ": in this run the larger β helped both."
    else:
        verdict += ": in this run the larger β helped neither on balance."
    parts.append(verdict)
    return " ".join(parts)


def comparison_section(rows: Sequence[Mapping[str, Any]], presets: Sequence[Mapping[str, Any]],
                       judge_md5: str, figures: Mapping[str, str] | None = None,
                       recipe: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The report's 'Baseline and ablation' lines: baseline vs default per beta (table and, given the default's
    `figures` folders by tag, prior grids), the targets, the ablation table. `presets` are the results files of
    params.yaml's presets (reports/presets/NAME.json), in params order."""
    intro = ("Presets are recipes in params.yaml's `presets` section, run outside the default DAG with "
             "`python -m vaelab.stages.preset NAME` (results in `reports/presets/NAME.json`, read here).")
    if not presets:
        return [intro + " None has been run yet.", ""]
    lines = [intro, ""]
    stale = [p["preset"] for p in presets if p["judge_md5"] != judge_md5]
    if stale:
        lines += [f"**Warning:** judged by another judge model than this run's: {', '.join(stale)}. Rerun "
                  "those presets for comparable sample-quality numbers.", ""]
    base = next((p for p in presets if p["preset"] == "baseline"), None)
    if base is not None:
        base_rows = preset_rows(base)
        lines += [f"**Baseline vs default.** Baseline: {_recipe(base)}", "", baseline_table(rows, base_rows), ""]
        final = next((r for r in sorted(rows, key=lambda r: r["beta"]) if r["beta"] in
                      {b["beta"] for b in base_rows}), None)
        if final is not None:
            lines += [targets(final, next(b for b in base_rows if b["beta"] == final["beta"])), ""]
        grids = {b["beta"]: b["prior_samples"] for b in base["betas"] if b.get("prior_samples")}
        pairs = [r for r in sorted(rows, key=lambda r: r["beta"]) if r["beta"] in grids and figures]
        if pairs:
            lines += ["The same 16 draws of N(0, I) noise decoded by each model:", "",
                      "| " + " | ".join(f"β = {r['beta']:g}: {who}" for r in pairs
                                        for who in ("baseline", "default")) + " |",
                      "|" + "|".join(":---:" for _ in range(2 * len(pairs))) + "|",
                      "| " + " | ".join(f"![β = {r['beta']:g}, baseline](presets/{grids[r['beta']]}) | "
                                        f"![β = {r['beta']:g}, default]({figures[r['tag']]}/prior_samples.png)"
                                        for r in pairs) + " |", ""]
    final = min(rows, key=lambda r: abs(r["beta"] - 1.0))
    lines += ["**Ablation**: the baseline, then each preset (its description says what it changes), then this "
              "run's default with what it changes from the baseline.", "",
              ablation_table(presets, final, recipe), ""]
    return lines


def render(rows: Sequence[Mapping[str, Any]], figures: Mapping[str, str], setup: Mapping[str, Any],
           reference: Mapping[str, Any], comparison: Mapping[str, str],
           presets: Sequence[Mapping[str, Any]] = (), judge_md5: str = "",
           recipe: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The whole report as markdown. `figures` maps a beta tag to its figures folder relative to the report,
    `comparison` a cross-beta figure stem to its path; `setup` describes the run (epochs, data size, model
    choices); `reference` holds the judge's metrics and the real-image reference row; `presets` the results
    of the presets that were run (baseline, ablation steps), `judge_md5` this run's judge and `recipe` this run's
    model and train params (plain dicts)."""
    rows = sorted(rows, key=lambda r: r["beta"])
    r0 = rows[0]
    lines = [
        "# β-VAE on CIFAR-10: report",
        "",
        f"Generated by `dvc repro` from the measured metrics files (`metrics/`). {setup['n_train']} training and "
        f"{setup['n_test']} test images, {setup['epochs']} epochs per model, seed {setup['seed']}. Sample quality is "
        f"judged by the pipeline's own CIFAR-10 classifier (stage `judge`): {100 * reference['test_accuracy']:.1f}% "
        f"test accuracy after {reference['train_seconds'] / 60:.1f} min of training ({reference['epochs']:g} epochs).",
        "",
        "## Summary",
        "",
        summary(rows, reference),
        "",
        "## Baseline and ablation",
        "",
        *comparison_section(rows, presets, judge_md5, figures, recipe),
        "## Likelihood and reconstruction",
        "",
        metric_table(rows),
        "",
        "bits/dim is the test-set negative ELBO (β = 1 weighting, one posterior sample per image) under the "
        "decoder's discrete 256-level likelihood; IW bits/dim is the importance-weighted bound (Burda et al. 2015) "
        f"with K = {r0['iw_samples']} samples on {r0['iw_images']} test images, a tighter bound on −log p(x). Rate "
        "is KL(q(z|x) ‖ p(z)) and distortion −log p(x|z), in nats per image; PSNR compares the decoded posterior "
        "mean with the input on the [0, 1] scale.",
        "",
        "## Sample quality",
        "",
        quality_table(rows, reference),
        "",
        f"Each β contributes {r0['n_samples']} samples from each sampler and the reconstructions (decoded μ) of "
        f"{min(r0['n_samples'], r0['n_test_images'])} test images; the reference is {reference['n_real']} real "
        f"training images. The samplers: N(0, I) noise through the prior the model was trained with (z = f(e) for a flow "
        f"prior, z = e otherwise); the same noise at "
        f"temperature τ = {r0['temperature']:g}, which trades diversity for typicality; and an ex-post density, a "
        f"{r0['gmm_components']}-component full-covariance Gaussian mixture fitted by EM to the posterior means of "
        "the training images (Ghosh et al. 2020), which puts samples where the codes of real images are rather "
        "than in the holes of the aggregate posterior. Every set is compared with the test images through the judge's penultimate features "
        "(flip-averaged). FCD is the Fréchet distance "
        "between Gaussians fitted to the two feature sets (FID's formula on our judge); KID is the unbiased "
        "squared MMD with the cubic polynomial kernel (Bińkowski et al. 2018), mean and standard deviation over "
        "random subsets. Judge confidence is the mean max-softmax; class entropy is the entropy of the histogram "
        "of predicted classes (log2 10 = 3.32 bits: all ten classes equally often). The real-image row is the "
        "floor of FCD and KID and the ceiling of confidence. Reconstructions are classified correctly "
        + ", ".join(f"{100 * r['recon_judge_accuracy']:.1f}% of the time at β = {r['beta']:g}" for r in rows)
        + f" (real test images: {100 * reference['test_accuracy']:.1f}%).",
        "",
        "## Organisation of the latent space",
        "",
        organisation_table(rows),
        "",
        f"- **Active units** (Burda et al. 2015): dimensions with Cov_x E[z_j|x] > 0.01, out of {r0['latent_dim']}.",
        "- **Total correlation** KL(q(z) ‖ Π_j q(z_j)) of the aggregate posterior on the test set, in nats: "
        "minibatch-weighted sampling (Chen et al. 2018, β-TCVAE) with one z ~ q(z|x) per test image and "
        f"minibatches of M = {r0['tc_batch_size']} codes, so log q(z) is the log-mean of q(z|x_n) over the batch "
        "(with M = all test images it is exact for the test set). The paper's 1/(NM) weights would add the "
        "constant (D − 1)·log N; it is left out, so independent codes give 0. With N test codes the estimate "
        "cannot resolve mutual information above log N, so compare it across β, not with other papers.",
        "- **Probe accuracy**: multinomial logistic regression (L-BFGS, L2) on the standardised posterior means "
        "of the training images, scored on the test images; how linearly the class can be read from μ.",
        "- **Factor score**: controlled factors applied to test images — brightness (added to every pixel), "
        "hue (rotation of RGB about the grey axis), horizontal flip, horizontal shift (reflection padded), each at "
        "the levels in `params.yaml` (`evaluate`). For each factor, response_j is the mean over images and "
        "levels of (μ_j(changed image) − μ_j(image))², in squared prior units; its share of the total over j "
        "is plotted in the factor-response heatmaps. The score is the share of the most responsive dimension "
        "minus that of the second (MIG-style gap): 1 = one dimension carries the factor, 0 = spread evenly. "
        "The table gives each factor and their mean.",
        "",
        "## Rate–distortion plane and KL per dimension",
        "",
        f"![Rate–distortion plane]({comparison['rate_distortion']})",
        "",
        f"![KL per dimension, sorted, one panel per β]({comparison['kl_per_dim']})",
        "",
        "## Same z, every β",
        "",
        "Each grid decodes the same 16 draws of N(0, I) noise (from the seed), one model per column.",
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


HTML_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1180px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def to_html(md: str, read_image: Callable[[str], bytes], title: str = "β-VAE on CIFAR-10: report") -> str:
    """A self-contained HTML page of the markdown report: every linked PNG is embedded as a data: URI
    (`read_image` maps a link as written in the markdown to the file's bytes), so the page needs no other file."""
    body = markdown.markdown(md, extensions=["tables"], output_format="html")

    def embed(m: re.Match) -> str:
        link = html.unescape(m.group(2))
        data = base64.b64encode(read_image(link)).decode("ascii")
        return f'{m.group(1)}"data:image/png;base64,{data}"'

    body = re.sub(r'(<img[^>]*?\ssrc=)"([^"]+\.png)"', embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{HTML_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
