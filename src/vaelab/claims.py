"""Which statements the numbers allow: the summary of how beta changed quality against organisation, the verdict
per metric, the seed-to-seed spread and whether the judge, the audit and the sharpness ratio agree on a change. Pure
functions on metric rows (dicts whose headline numbers carry `<key>_lo` / `<key>_hi`, a 95% interval)."""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

from vaelab.intervals import direction, seed_sd
from vaelab.recipes import preset_rows, recipe_changes

MISSING = "–"  # what the report shows where a number was not measured
NO_DIFFERENCE = "no measurable difference"

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
# The image sets whose recipe changes the agreement rule judges: (key prefix, name).
AGREEMENT_SETS = (("sampler_", "sampler"), ("recon_", "reconstructions"))


class Verdict(NamedTuple):
    """One metric compared between two rows: `how` it moved, whether that is `better` (None: no difference)."""
    key: str
    name: str
    how: str
    better: bool | None
    text: str


def _span(r: Mapping[str, Any], key: str, fmt: str) -> str:
    """`value [lo, hi]` of `key` in `fmt`."""
    return f"{fmt.format(r[key])} [{fmt.format(r[key + '_lo'])}, {fmt.format(r[key + '_hi'])}]"


def verdicts(lo: Mapping[str, Any], hi: Mapping[str, Any], specs: Sequence[tuple[str, str, str, str]],
             spread: Mapping[str, float] | None = None) -> list[Verdict]:
    """Per metric of `specs` that both rows carry with intervals: how `hi` moved against `lo` ('higher', 'lower' or
    'no measurable difference', by `intervals.direction` given the seed spread) and whether that is better."""
    out = []
    for key, name, fmt, better in specs:
        if not all(k in r for r in (lo, hi) for k in (key, f"{key}_lo", f"{key}_hi")):
            continue
        how = direction(lo, hi, key, (spread or {}).get(key))
        verdict = None if how == NO_DIFFERENCE else how == better
        out.append(Verdict(key, name, how, verdict, f"{name} {_span(lo, key, fmt)} → {_span(hi, key, fmt)}: {how}"))
    return out


def _trade(quality: Sequence[Verdict], organisation: Sequence[Verdict]) -> str:
    """The sentence that weighs the quality verdicts against the organisation verdicts."""
    worse_q = [v.name for v in quality if v.better is False]
    better_q = [v.name for v in quality if v.better is True]
    better_o = [v.name for v in organisation if v.better is True]
    worse_o = [v.name for v in organisation if v.better is False]
    if worse_q and better_o and not better_q and not worse_o:
        return (f"So the larger β traded visual quality ({', '.join(worse_q)} worse) for organisation "
                f"({', '.join(better_o)} better).")
    if not (worse_q or better_q or better_o or worse_o):
        return "No quality or organisation number moved measurably between the two β."
    said = [f"{', '.join(names)} {word}" for names, word in ((better_q + better_o, "better"),
                                                            (worse_q + worse_o, "worse")) if names]
    return "The larger β made " + " and ".join(said) + "; the rest moved within the noise."


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
             "Visual quality: " + "; ".join(v.text for v in q) + ".",
             "Organisation: " + "; ".join(v.text for v in o) + ".",
             _trade(q, o)]
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
        if len({r.get("seed") for r in rows}) >= 2:
            return p, seed_sd(rows)
    return None, {}


def _towards_one(a: Mapping[str, Any], b: Mapping[str, Any], key: str) -> str:
    """'closer to 1' / 'further from 1' (b against a) where the two intervals of a ratio separate."""
    if direction(a, b, key) == NO_DIFFERENCE:
        return NO_DIFFERENCE
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


class Comparison(NamedTuple):
    """A preset's row at one beta against the row of the reference preset it is judged against."""
    preset: Mapping[str, Any]
    row: Mapping[str, Any]
    reference: Mapping[str, Any]
    reference_row: Mapping[str, Any]


def comparisons(presets: Sequence[Mapping[str, Any]]) -> list[Comparison]:
    """Each single-seed preset's row against the earlier preset run on the same budget (training images, epochs,
    beta) whose recipe differs from it in the fewest keys (the first such on a tie); none for the first of a
    budget."""
    out = []
    earlier: dict[tuple, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
    for p in presets:
        if len(p.get("seeds", [0])) != 1:
            continue
        for r in preset_rows(p):
            budget = (p.get("data", {}).get("subset"), p["train"].get("epochs"), r["beta"])
            candidates = earlier.setdefault(budget, [])
            if candidates:
                ref, ref_row = min(candidates, key=lambda c: len(recipe_changes(p, c[0])))
                out.append(Comparison(p, r, ref, ref_row))
            candidates.append((p, r))
    return out


def control_verdict(study: Mapping[str, Any]) -> str:
    """What the control study allows to say about beta and disentanglement: the best beta by mean MIG, and a
    direction against beta = 1 only where every seed or the seed intervals separate."""
    rows = {r["beta"]: r for r in study["by_beta"]}
    best = rows[study["best_beta"]]
    n = len(best["seeds"])
    text = f"The highest mean MIG is at β = {best['beta']:g}: {_span(best, 'mig', '{:.2f}')}, over {n} seed{'s' * (n > 1)}."
    if 1.0 not in rows or best["beta"] == 1.0:
        return text + (" β = 1 itself is the best of the grid." if best["beta"] == 1.0 else
                       " β = 1 is not in the grid, so nothing is compared with it.")
    one = rows[1.0]
    if study.get("best_seeds_all_above_beta_1"):
        text += (f" Every one of its seeds scores a higher MIG than every seed at β = 1 "
                 f"({_span(one, 'mig', '{:.2f}')}).")
    else:
        text += (f" Its seeds overlap those of β = 1 ({_span(one, 'mig', '{:.2f}')}): the grid does not show that "
                 "this β disentangles more than β = 1.")
    d = verdicts(one, best, [("dci_disentanglement", "DCI disentanglement", "{:.2f}", "higher")])
    return text + "".join(f" {v.text} (β = 1 → β = {best['beta']:g}, 95% intervals over seeds)." for v in d)


def _nearest(points: Sequence[Mapping[str, Any]], beta: float) -> Mapping[str, Any]:
    return min(points, key=lambda p: abs(math.log(p["beta"] / beta)))


def beta_analysis(rows: Sequence[Mapping[str, Any]], sweep: Mapping[str, Any],
                  control: Mapping[str, Any] | None, spread: Mapping[str, float] | None = None) -> str:
    """The summary as an analysis of at most 300 words: what changes along β in the sweep, why (the likelihood's
    scale), what the control set with known factors shows, and what that means for the assignment's β values. A
    direction is named only where 95% intervals separate and the difference exceeds twice the seed-to-seed
    standard deviation measured for that recipe (the sweep's own, the presets' for the full recipe)."""
    pts = sorted(sweep["points"], key=lambda p: p["beta"])
    lo, hi = pts[0], pts[-1]
    # The sweep recipe's own seed-to-seed spread (sweep.spread_betas x spread_seeds) gates its directions.
    sweep_sd = sweep.get("seed_spread", {}).get("sd", {})
    rate_dir = direction(lo, hi, "rate_nats", sweep_sd.get("rate_nats"))
    q = verdicts(lo, hi, (("distortion_fixed_sigma_nats", "distortion at a fixed σ", "{:.0f}", "lower"),
                          ("recon_fcd", "the reconstructions' FCD", "{:.1f}", "lower")), sweep_sd)
    parts = [
        f"Along the sweep (β = {lo['beta']:g} to {hi['beta']:g}, one cheap recipe), the rate goes from "
        f"{_span(lo, 'rate_nats', '{:.0f}')} to {_span(hi, 'rate_nats', '{:.1f}')} nats ({rate_dir}) and the active "
        f"units from {lo['active_units_0p01']:.0f} to {hi['active_units_0p01']:.0f}; "
        + "; ".join(f"{v.name} {v.how}" for v in q) + ".",
        "Why so little moves at small β: the decoder learns its σ, so a nat of rate is weighed against "
        f"log-squared-error; β·2σ̂² is {lo['beta_2sigma2']:.2g} at β = {lo['beta']:g} and {hi['beta_2sigma2']:.2g} at "
        f"β = {hi['beta']:g} (the KL's weight per pixel of squared error).",
    ]
    five = _nearest(pts, 5.0)
    share = five["rate_nats"] / lo["rate_nats"]
    parts.append(f"The assignment's β = 5 sits near the sweep's β = {five['beta']:g}, where the rate is "
                 f"{100 * share:.0f}% of the lowest β's" + (": the trade-off has barely begun there" if share >= 0.8
                                                           else "") +
                 "; the rate–distortion plane and the KL spectrum show where it bites.")
    if control is not None:
        verdict = control_verdict(control)
        parts.append("On the control set, whose factors are known, " + verdict[0].lower() + verdict[1:])
    full = sorted(rows, key=lambda r: r["beta"])
    if len(full) >= 2:
        a, b = full[0], full[-1]
        moved = [v for v in verdicts(a, b, QUALITY + ORGANISATION, spread) if v.better is not None]
        parts.append(f"For the full-recipe models, β = {a['beta']:g} against β = {b['beta']:g}: " + (
            "; ".join(f"{v.name} {v.how}" for v in moved) if moved else
            "no quality or organisation number separates beyond its interval") + ".")
    text = " ".join(parts)
    words = len(text.split())
    if words > 300:
        raise ValueError(f"the β analysis has {words} words, more than 300")
    return text
