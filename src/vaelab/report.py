"""The markdown report: tables with 95% intervals, a summary that names a direction only where intervals separate,
the figures of every beta, the seed-to-seed spread and the ablation of the presets."""
from __future__ import annotations

import base64
import dataclasses
import html
import re
import statistics
from typing import Any, Callable, Mapping, Sequence

import markdown

from vaelab.intervals import direction
from vaelab.params import ModelConfig, TrainConfig

FIGURES = (
    ("training_curves", "Training curves"),
    ("prior_samples", "16 images decoded from z ~ N(0, I)"),
    ("sampler_samples", "16 images from the ex-post sampler (a mixture fitted to the training codes)"),
    ("interpolation_prior", "Interpolation between two random points of N(0, I)"),
    ("interpolation_test", "Interpolation between the codes of two test images of different classes"),
    ("reconstructions", "Reconstructions"),
    ("traversals", "Latent traversals of the highest-KL dimensions"),
    ("factor_response", "Factor response: each controlled factor's share of the change in μ, per dimension"),
    ("nearest_neighbours", "Sampler samples beside their nearest training images (pixel distance): copies would "
                           "show as twins"),
)
FACTORS = ("brightness", "hue", "saturation", "flip", "shift", "vshift", "rotation", "scale")
MISSING = "–"


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    """The value of `key` in `fmt`, with its 95% interval in brackets when the row has one; – when absent."""
    if key not in row:
        return MISSING
    value = row[key]
    text = fmt.format(round(value)) if fmt == "{:d}" else fmt.format(value)
    if f"{key}_lo" in row:
        lo, hi = (fmt.format(round(row[f"{key}_{e}"])) if fmt == "{:d}" else fmt.format(row[f"{key}_{e}"])
                  for e in ("lo", "hi"))
        text += f" [{lo}, {hi}]"
    return text


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]],
          label: tuple[str, Sequence[str]] | None = None) -> str:
    """A markdown table of `rows` over `columns` (value [95% interval] where a row has `_lo`/`_hi`); `label` =
    (header, one label per row) adds a first column."""
    heads = ([label[0]] if label else []) + [h for _, h, _ in columns]
    lines = ["| " + " | ".join(heads) + " |",
             "|" + ("---|" if label else "") + "|".join("---:" for _ in columns) + "|"]
    for i, r in enumerate(rows):
        cells = ([label[1][i]] if label else []) + [_cell(r, k, fmt) for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def metric_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Likelihood and reconstruction, one row per beta (sorted by beta)."""
    return table(sorted(rows, key=lambda r: r["beta"]), LIKELIHOOD_COLUMNS)


def quality_table(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any]) -> str:
    """Sample quality by the judge: the real-image reference row, then per beta z ~ N(0, I) decoded, the ex-post
    sampler's samples and the reconstructions of test images."""
    rows = sorted(rows, key=lambda r: r["beta"])
    body = [{k: reference[f"real_{k}"] for k, _, _ in QUALITY_COLUMNS}]
    labels = ["real train images (reference)"]
    for prefix, what in (("", "z ~ N(0, I) decoded"), ("sampler_", "ex-post sampler"),
                         ("recon_", "reconstructions")):
        for r in rows:
            body.append({k.removeprefix(prefix): v for k, v in r.items() if k.startswith(prefix)} if prefix else r)
            labels.append(f"β = {r['beta']:g}: {what}")
    return table(body, QUALITY_COLUMNS, ("images", labels))


def audit_table(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, Any] | None) -> str:
    """The same image sets scored by the audit network (another architecture, trained apart from the judge) and by
    the non-learned sharpness ratio: the real-image reference row (when the audit's metrics are given), then per beta
    z ~ N(0, I) decoded, the ex-post sampler's samples and the reconstructions."""
    rows = sorted(rows, key=lambda r: r["beta"])
    body, labels = [], []
    if reference is not None:
        body.append({"fcd": reference["real_fcd"], "kid": reference["real_kid"],
                     "confidence": reference["real_judge_confidence"], "class_entropy": reference["real_class_entropy"]})
        labels.append("real train images (reference)")
    for prefix, what in (("", "z ~ N(0, I) decoded"), ("sampler_", "ex-post sampler"),
                         ("recon_", "reconstructions")):
        for r in rows:
            cells = {}
            for k, v in r.items():
                if k.startswith(f"audit_{prefix}") and (prefix or not k.startswith(("audit_sampler_", "audit_recon_"))):
                    cells[k.removeprefix(f"audit_{prefix}")] = v
                elif k.startswith(f"{prefix}sharpness_ratio"):
                    cells[k.removeprefix(prefix)] = v
            body.append(cells)
            labels.append(f"β = {r['beta']:g}: {what}")
    return table(body, AUDIT_COLUMNS, ("images", labels))


def organisation_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Organisation of the latent space, one row per beta."""
    return table(sorted(rows, key=lambda r: r["beta"]), ORGANISATION_COLUMNS)


def active_units_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Active units at every threshold that was measured, one row per beta."""
    keys = sorted({k for r in rows for k in r if re.fullmatch(r"active_units_[0-9p]+", k)},
                  key=lambda k: float(k.removeprefix("active_units_").replace("p", ".")))
    columns = [("beta", "β", "{:g}")] + [(k, "Var(μ_j) > " + k.removeprefix("active_units_").replace("p", "."),
                                          "{:d}") for k in keys]
    return table(sorted(rows, key=lambda r: r["beta"]), columns)


def factor_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Per controlled factor and beta: concentration of the response and readability of the level from μ."""
    rows = sorted(rows, key=lambda r: r["beta"])
    body, labels = [], []
    for f in FACTORS:
        for r in rows:
            if f"factor_score_{f}" in r:
                body.append({"score": r[f"factor_score_{f}"], **{f"score_{e}": r.get(f"factor_score_{f}_{e}")
                                                                 for e in ("lo", "hi") if f"factor_score_{f}_{e}" in r},
                             **{k.replace(f"factor_r2_{f}", "r2"): v for k, v in r.items()
                                if k.startswith(f"factor_r2_{f}")}})
                labels.append(f"{f}, β = {r['beta']:g}")
    return table(body, (("score", "concentration (top-2 share gap) ↑", "{:.3f}"),
                        ("r2", "readability (held-out R²) ↑", "{:.3f}")), ("factor", labels))


def preset_rows(preset: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per beta of a preset's results file (reports/presets/NAME.json): train and eval metrics joined."""
    rows = []
    for b in preset["betas"]:
        row = {**b["train"], **b["eval"], "beta": b["beta"], "seed": b.get("seed")}
        row["train_minutes"] = row["train_seconds"] / 60
        rows.append(row)
    return rows


def _recipe(preset: Mapping[str, Any]) -> str:
    m, t = preset["model"], preset["train"]
    prior = f"flow prior ({m['prior_flows']} couplings)" if m.get("prior_flows") else "N(0, I) prior"
    return (f"z = {m['latent_dim']}, {prior}, {m['likelihood']}, {m['res_blocks']} res. blocks, {t['epochs']} epochs, "
            f"MMD weight {t['mmd_weight']:g}, EMA {t['ema_decay']:g}, KL warm-up {t['kl_warmup_epochs']:g} ep.")


def recipe_changes(recipe: Mapping[str, Mapping[str, Any]], preset: Mapping[str, Any]) -> list[str]:
    """`section.key = value` for every model / train key where `recipe` differs from a preset's (betas and
    threads left out: they do not change the model). A key missing from a preset's file (written before the key
    existed) counts as the code default, which is what that run used."""
    out = []
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in recipe[section].items():
            theirs = preset[section].get(key, defaults.get(key))
            if isinstance(theirs, tuple):  # a code default; the files hold lists
                theirs = list(theirs)
            if key not in ("betas", "threads") and theirs != value:
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


# What the summary weighs: (key, name, unit format, which way is better).
QUALITY = (("recon_fcd", "the reconstructions' FCD", "{:.1f}", "lower"),
           ("test_psnr", "reconstruction PSNR", "{:.2f}", "higher"),
           ("recon_judge_accuracy", "the judge's accuracy on reconstructions", "{:.3f}", "higher"),
           ("fcd", "the FCD of z ~ N(0, I) decoded", "{:.1f}", "lower"),
           ("sampler_fcd", "the ex-post sampler's FCD", "{:.1f}", "lower"))
ORGANISATION = (("total_correlation", "the Gaussian total correlation of q(z)", "{:.2f}", "lower"),
                ("factor_score", "the mean concentration of the factor responses", "{:.3f}", "higher"),
                ("factor_r2", "the mean readability of the factor levels", "{:.3f}", "higher"),
                ("probe_accuracy", "the linear-probe accuracy", "{:.3f}", "higher"))


def _span(r: Mapping[str, Any], key: str, fmt: str) -> str:
    return f"{fmt.format(r[key])} [{fmt.format(r[key + '_lo'])}, {fmt.format(r[key + '_hi'])}]"


def verdicts(lo: Mapping[str, Any], hi: Mapping[str, Any], specs: Sequence[tuple[str, str, str, str]],
             spread: Mapping[str, float] | None = None) -> list[tuple[str, str, bool | None]]:
    """Per metric of `specs` that both rows carry with intervals: (name, 'higher'/'lower'/'no measurable
    difference' of hi against lo, True if that is better, False if worse, None if no difference)."""
    out = []
    for key, name, fmt, better in specs:
        if not all(k in r for r in (lo, hi) for k in (key, f"{key}_lo", f"{key}_hi")):
            continue
        how = direction(lo, hi, key, (spread or {}).get(key))
        verdict = None if how == "no measurable difference" else how == better
        out.append((f"{name} {_span(lo, key, fmt)} → {_span(hi, key, fmt)}: {how}", name, verdict))
    return out


def summary(rows: Sequence[Mapping[str, Any]], spread: Mapping[str, float] | None = None) -> str:
    """At most 300 words on how beta changed visual quality against the organisation of the code. Every number is
    taken from `rows`; a direction ('higher', 'lower') is named only where the two 95% intervals separate and, given
    the measured seed-to-seed standard deviations `spread` (by key), the difference exceeds twice that spread."""
    rows = sorted(rows, key=lambda r: r["beta"])
    if len(rows) == 1:
        r = rows[0]
        return (f"Only β = {r['beta']:g} is listed, so there is no comparison: {_span(r, 'test_bpd', '{:.3f}')} "
                f"bits/dim, rate {_span(r, 'rate_nats', '{:.1f}')} nats, PSNR {_span(r, 'test_psnr', '{:.2f}')} dB, "
                f"Gaussian total correlation {_span(r, 'total_correlation', '{:.2f}')} nats. Add β values to "
                "`train.betas` in params.yaml to compare.")
    lo, hi = rows[0], rows[-1]
    q, o = verdicts(lo, hi, QUALITY, spread), verdicts(lo, hi, ORGANISATION, spread)
    parts = [f"From β = {lo['beta']:g} to β = {hi['beta']:g} (95% intervals in brackets; a direction is named only "
             "where the intervals separate" + (" and the change exceeds twice the measured seed-to-seed spread"
                                               if spread else "") + ").",
             f"The rate went from {_span(lo, 'rate_nats', '{:.1f}')} to {_span(hi, 'rate_nats', '{:.1f}')} nats, "
             f"with {lo['active_units']} and {hi['active_units']} active units of {lo['latent_dim']}.",
             "Visual quality: " + "; ".join(text for text, _, _ in q) + ".",
             "Organisation: " + "; ".join(text for text, _, _ in o) + "."]
    worse_q = [n for _, n, v in q if v is False]
    better_q = [n for _, n, v in q if v is True]
    better_o = [n for _, n, v in o if v is True]
    worse_o = [n for _, n, v in o if v is False]
    if worse_q and better_o and not better_q and not worse_o:
        verdict = (f"So the larger β traded visual quality ({', '.join(worse_q)} worse) for organisation "
                   f"({', '.join(better_o)} better).")
    elif not (worse_q or better_q or better_o or worse_o):
        verdict = "No quality or organisation number moved measurably between the two β."
    else:
        said = [f"{', '.join(names)} {word}" for names, word in ((better_q + better_o, "better"),
                                                                (worse_q + worse_o, "worse")) if names]
        verdict = "The larger β made " + " and ".join(said) + "; the rest moved within the noise."
    parts.append(verdict)
    top = max(r.get("factor_score", 1.0) for r in (lo, hi))
    if top < 0.1:
        parts.append(f"Neither code is axis-aligned: the mean concentration stays at or below {top:.3f} on a scale "
                     "where 1 means one dimension carries a factor.")
    parts.append("The traversal figure shows the highest-KL dimensions of both models side by side.")
    return " ".join(parts)


def seed_spread(presets: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, dict[str, float]]:
    """The first preset run with several seeds and, per metric it measured, the largest over betas of the
    seed-to-seed standard deviation."""
    for p in presets:
        rows = preset_rows(p)
        seeds = {r.get("seed") for r in rows}
        if len(seeds) < 2:
            continue
        spread: dict[str, float] = {}
        for beta in {r["beta"] for r in rows}:
            at = [r for r in rows if r["beta"] == beta]
            for key in set.intersection(*(set(r) for r in at)):
                values = [r[key] for r in at]
                if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    spread[key] = max(spread.get(key, 0.0), statistics.stdev(values))
        return p, spread
    return None, {}


SPREAD_KEYS = (("test_bpd", "test bits/dim", "{:.3f}"), ("test_psnr", "PSNR (dB)", "{:.2f}"),
               ("rate_nats", "rate (nats)", "{:.1f}"), ("fcd", "FCD, z ~ N(0, I)", "{:.2f}"),
               ("sampler_fcd", "FCD, sampler", "{:.2f}"), ("recon_fcd", "FCD, reconstructions", "{:.2f}"),
               ("total_correlation", "Gaussian TC (nats)", "{:.2f}"), ("factor_score", "mean concentration", "{:.3f}"),
               ("factor_r2", "mean readability R²", "{:.3f}"), ("probe_accuracy", "probe accuracy", "{:.3f}"))


def spread_table(preset: Mapping[str, Any]) -> str:
    """Mean and seed-to-seed standard deviation of the headline metrics of a multi-seed preset, per beta."""
    rows = preset_rows(preset)
    body, labels = [], []
    for beta in sorted({r["beta"] for r in rows}):
        at = [r for r in rows if r["beta"] == beta]
        cells = {}
        for key, _, fmt in SPREAD_KEYS:
            values = [r[key] for r in at if key in r]
            if len(values) >= 2:
                cells[key] = f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"
        body.append(cells)
        labels.append(f"β = {beta:g} ({len(at)} seeds)")
    heads = ["run"] + [h for _, h, _ in SPREAD_KEYS]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "|".join("---:" for _ in SPREAD_KEYS) + "|"]
    for label, cells in zip(labels, body):
        lines.append("| " + " | ".join([label] + [cells.get(k, MISSING) for k, _, _ in SPREAD_KEYS]) + " |")
    return "\n".join(lines)


AGREEMENT_SETS = (("sampler_", "sampler"), ("recon_", "reconstructions"))


def _towards_one(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> str:
    """'closer to 1' / 'further from 1' (b against a) where the two intervals of a ratio separate."""
    if direction(a, b, key) == "no measurable difference":
        return "no measurable difference"
    return "closer to 1" if abs(b[key] - 1) < abs(a[key] - 1) else "further from 1"


def agreement(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str) -> tuple[list[str], str]:
    """How the image set `prefix` of row b differs from row a by the judge's FCD, the audit's FCD and the sharpness
    ratio (each a direction only where the 95% intervals separate), and the verdict: 'better' or 'worse' only where
    all three agree, else 'no agreement' (or 'not measured' when a row lacks a key)."""
    keys = (f"{prefix}fcd", f"audit_{prefix}fcd", f"{prefix}sharpness_ratio")
    if not all(f"{k}{e}" in r for r in (a, b) for k in keys for e in ("", "_lo", "_hi")):
        return [MISSING] * 3, "not measured"
    said = [direction(a, b, keys[0]), direction(a, b, keys[1]), _towards_one(a, b, keys[2])]
    if said == ["lower", "lower", "closer to 1"]:
        return said, "**better**"
    if said == ["higher", "higher", "further from 1"]:
        return said, "**worse**"
    return said, "no agreement"


def agreement_table(presets: Sequence[Mapping[str, Any]]) -> str:
    """Each single-seed preset against the earlier preset run on the same budget (training images, epochs, beta)
    whose recipe differs from it in the fewest keys (the first such on a tie): do the judge, the audit network and
    the sharpness ratio see the same change? Empty when no two presets share a budget."""
    lines = ["| preset | against (what differs) | sampler: judge FCD | audit FCD | sharpness | verdict | "
             "reconstructions: judge FCD | audit FCD | sharpness | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    earlier: dict[tuple, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
    for p in presets:
        if len(p.get("seeds", [0])) != 1:
            continue
        for r in preset_rows(p):
            budget = (p.get("data", {}).get("subset"), p["train"].get("epochs"), r["beta"])
            candidates = earlier.setdefault(budget, [])
            if candidates:
                ref_preset, ref = min(candidates, key=lambda c: len(recipe_changes(p, c[0])))
                cells = []
                for prefix, _ in AGREEMENT_SETS:
                    said, verdict = agreement(ref, r, prefix)
                    cells += [*said, verdict]
                changed = ", ".join(recipe_changes(p, ref_preset)) or "no model or train key"
                lines.append(f"| `{p['preset']}` | `{ref_preset['preset']}` ({changed}) | " + " | ".join(cells) + " |")
            candidates.append((p, r))
    return "\n".join(lines) if len(lines) > 2 else ""


def ablation_section(rows: Sequence[Mapping[str, Any]], presets: Sequence[Mapping[str, Any]], judge_md5: str,
                     recipe: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """The report's ablation lines: each single-seed preset that ran at the beta nearest 1, then this run's
    default, labelled with what it changes from the baseline; a warning for presets judged by another judge."""
    intro = ("Presets are recipes in params.yaml's `presets` section, run outside the default DAG with "
             "`python -m vaelab.stages.preset NAME` (results in `reports/presets/NAME.json`, read here).")
    single = [p for p in presets if len(p.get("seeds", [0])) == 1]
    if not single:
        return [intro + " None has been run yet.", ""]
    lines = [intro, ""]
    stale = [p["preset"] for p in single if p["judge_md5"] != judge_md5]
    if stale:
        lines += [f"**Warning:** judged by another judge model than this run's: {', '.join(stale)}. Rerun "
                  "those presets for comparable sample-quality numbers.", ""]
    final = min(rows, key=lambda r: abs(r["beta"] - 1.0))
    lines += [ablation_table(single, final, recipe), ""]
    agree = agreement_table(single)
    if agree:
        lines += ["A recipe change counts only where the judge, the audit network and the sharpness ratio agree on its "
                  "direction: each preset against the earlier preset of the same budget whose recipe differs least "
                  "(95% intervals; the seed-to-seed spread is not subtracted here).", "", agree, ""]
    return lines


def render(rows: Sequence[Mapping[str, Any]], figures: Mapping[str, str], setup: Mapping[str, Any],
           reference: Mapping[str, Any], comparison: Mapping[str, str],
           presets: Sequence[Mapping[str, Any]] = (), judge_md5: str = "",
           recipe: Mapping[str, Mapping[str, Any]] | None = None,
           audit_reference: Mapping[str, Any] | None = None) -> str:
    """The whole report as markdown. `figures` maps a beta tag to its figures folder relative to the report,
    `comparison` a cross-beta figure stem to its path; `setup` describes the run (epochs, data size, model
    choices); `reference` holds the judge's metrics and the real-image reference row; `presets` the results
    of the presets that were run (ablation steps, the multi-seed spread), `judge_md5` this run's judge and
    `recipe` this run's model and train params (plain dicts), `audit_reference` the audit network's metrics."""
    rows = sorted(rows, key=lambda r: r["beta"])
    r0 = rows[0]
    spread_preset, spread = seed_spread(presets)
    head = "| " + " | ".join(f"β = {r['beta']:g}" for r in rows) + " |"
    rule = "|" + "|".join(":---:" for _ in rows) + "|"
    lines = [
        "# β-VAE on CIFAR-10: report",
        "",
        f"Generated by `dvc repro` from the measured metrics files (`metrics/`). {setup['n_train']} training and "
        f"{setup['n_test']} test images, {setup['epochs']} epochs per model, seed {setup['seed']}. Sample quality is "
        f"judged by the pipeline's own CIFAR-10 classifier (stage `judge`, never used in training): "
        f"{100 * reference['test_accuracy']:.1f}% test accuracy. Every number in brackets is a 95% bootstrap interval "
        f"over the test images ({r0.get('bootstrap_reps', 'see params.yaml `evaluate.bootstrap`')} resamples).",
        "",
        "## Samples",
        "",
        "Per β: 16 images from the ex-post sampler (a mixture fitted to the codes of the training images by stage "
        "`sampler`; what the CLI and the registered model draw), 16 decoded from z ~ N(0, I) (the same seeded draws "
        "for every β), an interpolation between the codes of two test images, and reconstructions of test images.",
        "",
        "| " + " | ".join(f"β = {r['beta']:g}: {what}" for r in rows for what in ("sampler", "z ~ N(0, I)")) + " |",
        "|" + "|".join(":---:" for _ in range(2 * len(rows))) + "|",
        "| " + " | ".join(f"![β = {r['beta']:g}, {stem}]({figures[r['tag']]}/{stem}.png)"
                          for r in rows for stem in ("sampler_samples", "prior_samples")) + " |",
        "",
        *[line for r in rows for line in (
            f"![β = {r['beta']:g}: interpolation between two test images]({figures[r['tag']]}/interpolation_test.png)",
            "", f"![β = {r['beta']:g}: reconstructions]({figures[r['tag']]}/reconstructions.png)", "")],
        "Measured on these models: "
        + "; ".join(f"β = {r['beta']:g}: sampler FCD {_cell(r, 'sampler_fcd', '{:.1f}')} (audit "
                    f"{_cell(r, 'audit_sampler_fcd', '{:.1f}')}), sharpness {_cell(r, 'sampler_sharpness_ratio', '{:.2f}')}; "
                    f"reconstructions: FCD {_cell(r, 'recon_fcd', '{:.1f}')}, judge accuracy "
                    f"{_cell(r, 'recon_judge_accuracy', '{:.3f}')}" for r in rows)
        + f" (real images: FCD {reference['real_fcd']:.2f}, judge accuracy {reference['test_accuracy']:.3f}). "
        "The section *Sample quality* has every set and the ablation table what each recipe change bought.",
        "",
        "## Summary",
        "",
        summary(rows, spread),
        "",
        "## Traversals",
        "",
        "Each row moves one latent dimension from −3 to +3 prior standard deviations around the code of the same "
        "test image; the rows are the dimensions with the highest KL against the prior.",
        "",
        f"![Traversals of the highest-KL dimensions, every β side by side]({comparison['traversals']})",
        "",
        "## Likelihood and reconstruction",
        "",
        metric_table(rows),
        "",
        "bits/dim is the test-set negative ELBO (β = 1 weighting, one posterior sample per image) under the "
        "decoder's discrete 256-level likelihood; IW bits/dim is the importance-weighted bound (Burda et al. 2015) "
        f"with K = {r0['iw_samples']} samples on {r0['iw_images']} test images. Rate is KL(q(z|x) ‖ p(z)) and "
        "distortion −log p(x|z), in nats per image; Σ_j KL_j sums the per-dimension KL against the prior the model "
        "was trained with (N(0, I): it equals the rate). PSNR compares the decoded posterior mean with the input on "
        "the [0, 1] scale.",
        "",
        "## Sample quality",
        "",
        quality_table(rows, reference),
        "",
        f"Each set has {r0['n_samples']} images (reconstructions: the decoded μ of "
        f"{min(r0['n_samples'], r0['n_test_images'])} test images); the reference row is {reference['n_real']} real "
        "training images, the floor of FCD and KID. Every set is compared with the test images through the judge's "
        "penultimate features (flip-averaged): FCD is FID's Fréchet distance on the judge's features, KID the "
        "unbiased squared MMD with the cubic kernel (Bińkowski et al. 2018) averaged over random subsets, judge "
        "confidence the mean max-softmax, class entropy the entropy of the histogram of predicted classes (3.32 bits: "
        "all ten classes equally often). The judge classifies reconstructions correctly "
        + ", ".join(f"{_cell(r, 'recon_judge_accuracy', '{:.3f}')} of the time at β = {r['beta']:g}" for r in rows)
        + f" (real test images: {reference['test_accuracy']:.3f}).",
        "",
        "The same images scored by the **audit** network (stage `audit`: a ResNet trained apart from the judge, with "
        "another seed; like the judge it never trains anything) and by the **sharpness ratio**, the mean power of "
        "the luminance above half the Nyquist frequency relative to the test images' (1: as much fine detail as "
        "real images; below 1: blurrier). Neither is the feature network of the perceptual term (stage `features`), "
        "so a change that only fools the judge, or only the network the VAE trained against, shows up here.",
        "",
        audit_table(rows, audit_reference),
        "",
        "## Organisation of the latent space",
        "",
        organisation_table(rows),
        "",
        active_units_table(rows),
        "",
        "- **Gaussian total correlation** of the aggregate posterior q(z) = mean_n N(μ_n, σ_n²) on the test set: "
        "−½ log det of the correlation matrix of its covariance Cov(μ) + mean diag(σ²), in nats. 0 for independent "
        "dimensions; it measures linear dependence only, and does not grow with the rate.",
        f"- **Sampled total correlation** (Chen et al. 2018, minibatches of M = {r0['tc_batch_size']} test codes) "
        "with its **self-weight**, the mean share of a code's own posterior in its estimated density q(z_i): near 1, "
        "the codes do not cover q(z) and the estimate tracks the rate minus log M instead of the dependence, so it is "
        "shown for reference only and used nowhere else.",
        "- **Active units**: dimensions with Var_x(μ_j) above each threshold (Burda et al. 2015 use 0.01).",
        "- **Probe accuracy**: multinomial logistic regression on the standardised μ of the training images, scored "
        "on the test images.",
        "- **Concentration** and **readability** per controlled factor (table below): the factor is applied to "
        "test images at the levels in `params.yaml` (`evaluate`); concentration is the share of the most responsive "
        "dimension in Σ_j (Δμ_j)² minus that of the second (1: one dimension carries the factor), readability the "
        "held-out R² of a ridge regression that reads the level from the change of μ (1: linearly readable).",
        "",
        factor_table(rows),
        "",
    ]
    if spread_preset is not None:
        cfg = spread_preset
        lines += ["## Seed-to-seed spread", "",
                  f"Measured by the preset `{cfg['preset']}` ({cfg['description']}): one model per seed "
                  f"{cfg['seeds']} and β. Mean ± standard deviation over seeds; the summary names a direction only "
                  "where a difference also exceeds twice the larger of the two β's standard deviations.", "",
                  spread_table(cfg), ""]
    lines += ["## Ablation", "", *ablation_section(rows, presets, judge_md5, recipe),
              "## Rate–distortion plane and KL per dimension", "",
              f"![Rate–distortion plane]({comparison['rate_distortion']})", "",
              f"![KL per dimension, sorted, one panel per β]({comparison['kl_per_dim']})", "",
              "## Model and training choices", "", *[f"- {line}" for line in setup["choices"]], ""]
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
