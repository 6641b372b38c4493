"""Percentile-bootstrap intervals and the rule the report's wording follows: a direction only where intervals
separate."""
from __future__ import annotations

import statistics
from typing import Callable, Mapping, Sequence

import torch

LEVEL = 0.95  # every interval in eval.json is a 95% interval


def bootstrap(statistic: Callable[..., float], sizes: Sequence[int], reps: int, seed: int,
              level: float = LEVEL) -> tuple[float, float]:
    """95% interval of the evaluation noise of `statistic(*index_tensors)` at these sample sizes, by bootstrap: each
    rep resamples, with replacement, an index tensor of each length in `sizes` (one per data set the statistic
    reads, resampled independently). Plug-in statistics such as FCD or a log-determinant are biased by the
    duplicates a resample holds, so the bootstrap distribution is centred on the full-data estimate before its
    percentiles are read (its bias removed, its spread kept): for a mean this is the plain percentile interval."""
    if reps < 2:
        raise ValueError(f"a bootstrap needs at least 2 reps, got {reps}")
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor([statistic(*(torch.randint(n, (n,), generator=g) for n in sizes)) for _ in range(reps)],
                          dtype=torch.float64)
    shift = statistic(*(torch.arange(n) for n in sizes)) - float(values.mean())
    alpha = (1.0 - level) / 2
    return float(values.quantile(alpha)) + shift, float(values.quantile(1.0 - alpha)) + shift


def with_interval(key: str, value: float, interval: tuple[float, float]) -> dict[str, float]:
    """{key: value, key_lo: ..., key_hi: ...}: the layout of every interval in eval.json."""
    return {key: value, f"{key}_lo": interval[0], f"{key}_hi": interval[1]}


def mean_interval(values: torch.Tensor, reps: int, seed: int) -> tuple[float, tuple[float, float]]:
    """Mean of per-item values (N,) and its bootstrap interval over the items."""
    v = values.double()
    return float(v.mean()), bootstrap(lambda i: float(v[i].mean()), [len(v)], reps, seed)


def seed_sd(rows: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """Per numeric key, the largest over betas of the seed-to-seed standard deviation (n - 1 in the denominator) of
    rows that each carry `beta` (rows of one beta differ by seed only); betas with one row are skipped."""
    sd: dict[str, float] = {}
    for beta in sorted({float(r["beta"]) for r in rows}):
        at = [r for r in rows if float(r["beta"]) == beta]
        if len(at) < 2:
            continue
        for key in set.intersection(*(set(r) for r in at)) - {"beta", "seed"}:
            values = [r[key] for r in at]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                sd[key] = max(sd.get(key, 0.0), statistics.stdev(values))
    return sd


def direction(a: Mapping[str, float], b: Mapping[str, float], key: str,
              spread: float | None = None) -> str:
    """'higher', 'lower' (b against a) or 'no measurable difference' for metric `key` of two rows that carry
    `key_lo` / `key_hi`: a direction only where the two intervals do not overlap and, given the measured
    seed-to-seed standard deviation `spread`, the difference also exceeds twice that spread."""
    lo_a, hi_a, lo_b, hi_b = a[f"{key}_lo"], a[f"{key}_hi"], b[f"{key}_lo"], b[f"{key}_hi"]
    separated = hi_b < lo_a or hi_a < lo_b
    if separated and spread is not None and abs(b[key] - a[key]) <= 2 * spread:
        separated = False
    if not separated:
        return "no measurable difference"
    return "higher" if b[key] > a[key] else "lower"
