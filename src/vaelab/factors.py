"""Controlled factors we can apply to CIFAR images ourselves, and how the code responds to each.

A disentangled code changes few latent dimensions when one factor of the image changes. For each factor we
apply it at several levels to the same test images and measure, per latent dimension j, the mean squared change
of the posterior mean, response_j = E_{x, level}[(mu_j(T(x)) - mu_j(x))^2], in squared prior units (every
dimension has the same N(0, 1) prior, so the units are comparable). With share_j = response_j / sum_k response_k,
the concentration score is share_(1) - share_(2), the gap between the most and second most responsive dimension
(MIG-style, Chen et al. 2018): 1 when one dimension carries the whole change, near 0 when it is spread.
Readability is the held-out R^2 of a ridge regression that reads the factor's level from the change of the code,
mu(T(x)) - mu(x): 1 when the code moves along a consistent direction by an amount that tells the level, 0 when the
level cannot be read linearly from the change. (From mu(T(x)) alone the level of a shift or a rotation is not
identifiable at all: the unchanged image is unknown.) A binary factor (one level besides the identity: the flip)
moves the code by a change whose sign depends on the image, so no linear function of the signed change reads it;
its level is read by a logistic regression on |mu(T(x)) - mu(x)|, scored by the same held-out R^2 of its predicted
probabilities (1 - Brier score / variance of the level).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vaelab.intervals import bootstrap, with_interval
from vaelab.params import EvaluateConfig

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Factor:
    """A factor: the level that leaves an image unchanged, and (level, transform) pairs of the other levels."""

    identity: float
    levels: tuple[tuple[float, Transform], ...]

    @property
    def binary(self) -> bool:
        """One level besides the identity: read from the size of the change, not its sign."""
        return len(self.levels) == 1


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 255).round().to(torch.uint8)


def brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Add `delta` (on the [0, 1] scale) to every pixel of uint8 images (N, 3, 32, 32), clipped."""
    return _to_uint8(x.float() + 255.0 * delta)


def hue_rotation(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate the colours of uint8 images about the grey axis (1, 1, 1) of RGB space by `degrees` (a hue shift
    that keeps each pixel's mean intensity), clipped."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    # Rodrigues' rotation about the unit vector (1, 1, 1) / sqrt(3).
    a, b = (1 - c) / 3, s / math.sqrt(3)
    rot = torch.tensor([[c + a, a - b, a + b], [a + b, c + a, a - b], [a - b, a + b, c + a]])
    return _to_uint8(torch.einsum("ij,njhw->nihw", rot, x.float()))  # (N, 3, 32, 32)


def saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale the colourfulness of uint8 images: each pixel moves away from (factor > 1) or towards (factor < 1)
    its own grey level, the mean of its three channels, which stays the same (up to clipping)."""
    xf = x.float()
    grey = xf.mean(1, keepdim=True)  # (N, 1, 32, 32)
    return _to_uint8(grey + factor * (xf - grey))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror uint8 images left to right."""
    return x.flip(3)


def shift(x: torch.Tensor, px: int, axis: int = 3) -> torch.Tensor:
    """Translate uint8 images by `px` pixels along `axis` (3: right for px > 0; 2: down), filling by reflection."""
    if px == 0:
        return x
    k = abs(px)
    pad = (k, k, 0, 0) if axis == 3 else (0, 0, k, k)
    padded = F.pad(x.float(), pad, mode="reflect")  # 2k wider (or taller)
    start = k - px  # px > 0 moves content right (down): take the window that starts before the original
    return padded.narrow(axis, start, x.shape[axis]).to(torch.uint8)


def affine(x: torch.Tensor, degrees: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Rotate uint8 images by `degrees` (counter-clockwise as displayed, rows running down) and zoom them by
    `scale` (> 1 magnifies) about the centre, bilinear, reflection at the borders."""
    t = math.radians(degrees)
    # affine_grid maps output (x right, y down) coordinates to input ones: the inverse of the rotation and zoom.
    theta = torch.tensor([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]) / scale
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)  # (N, 32, 32, 2)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return _to_uint8(out)


def factor_transforms(cfg: EvaluateConfig) -> dict[str, Factor]:
    """Each factor with its levels from params: brightness, hue, saturation, horizontal flip, horizontal and
    vertical shift, rotation, scale."""
    return {
        "brightness": Factor(0.0, tuple((d, lambda x, d=d: brightness(x, d)) for d in cfg.brightness_levels)),
        "hue": Factor(0.0, tuple((d, lambda x, d=d: hue_rotation(x, d)) for d in cfg.hue_levels_deg)),
        "saturation": Factor(1.0, tuple((s, lambda x, s=s: saturation(x, s)) for s in cfg.saturation_levels)),
        "flip": Factor(0.0, ((1.0, hflip),)),
        "shift": Factor(0.0, tuple((p, lambda x, p=p: shift(x, p, 3)) for p in cfg.shift_levels_px)),
        "vshift": Factor(0.0, tuple((p, lambda x, p=p: shift(x, p, 2)) for p in cfg.vshift_levels_px)),
        "rotation": Factor(0.0, tuple((d, lambda x, d=d: affine(x, degrees=d)) for d in cfg.rotation_levels_deg)),
        "scale": Factor(1.0, tuple((s, lambda x, s=s: affine(x, scale=s)) for s in cfg.scale_levels)),
    }


def factor_codes(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 factors: dict[str, Factor]) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """mu (N, D) of uint8 images x, and per factor mu (N, D) of x changed to each of its levels."""
    return encode(x), {name: [encode(t(x)) for _, t in f.levels] for name, f in factors.items()}


def squared_changes(base: torch.Tensor, changed: list[torch.Tensor]) -> torch.Tensor:
    """Per image and dimension, the mean over levels of (mu_j(T(x)) - mu_j(x))^2: (N, D), float64."""
    return torch.stack([(c - base).double().pow(2) for c in changed]).mean(0)


def shares(response: torch.Tensor) -> torch.Tensor:
    """Each dimension's share of the total response, (D,), summing to 1 (all zero if nothing responds)."""
    total = response.sum()
    return response / total if total > 0 else torch.zeros_like(response)


def factor_score(response: torch.Tensor) -> float:
    """Gap between the largest and second-largest share of one factor's response (D,), in [0, 1]."""
    top = torch.topk(shares(response), min(2, len(response))).values
    return float(top[0] - top[1]) if len(top) > 1 else float(top[0])


def ridge_r2(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             l2: float = 1.0) -> torch.Tensor:
    """Squared errors and squared deviations (each (M,)) of a ridge regression of y on standardised x (N, D),
    fitted on the train rows and applied to the test rows: R^2 = 1 - sum(err) / sum(dev)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a = ((train_x - mean) / std).double()
    b = ((test_x - mean) / std).double()
    y_mean = train_y.double().mean()
    w = torch.linalg.solve(a.T @ a + l2 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ (train_y.double() - y_mean))
    pred = b @ w + y_mean
    return torch.stack([(pred - test_y.double()).pow(2), (test_y.double() - test_y.double().mean()).pow(2)])


def logistic_r2(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                l2: float = 1.0, iterations: int = 50) -> torch.Tensor:
    """Squared errors of the predicted probabilities and squared deviations (each (M,)) of an L2-penalised logistic
    regression of a 0/1 label y on standardised x (N, D), fitted by Newton's method on the train rows and applied
    to the test rows: R^2 = 1 - sum(err) / sum(dev) (Efron's pseudo-R^2, 1 - Brier score / variance)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a = torch.cat([((train_x - mean) / std).double(), torch.ones(len(train_x), 1, dtype=torch.float64)], 1)
    b = torch.cat([((test_x - mean) / std).double(), torch.ones(len(test_x), 1, dtype=torch.float64)], 1)
    y = train_y.double()
    penalty = l2 * torch.eye(a.shape[1], dtype=a.dtype)
    penalty[-1, -1] = 0.0  # the intercept is not penalised
    w = torch.zeros(a.shape[1], dtype=a.dtype)
    for _ in range(iterations):
        p = torch.sigmoid(a @ w)
        grad = a.T @ (p - y) + penalty @ w
        hess = (a * (p * (1 - p))[:, None]).T @ a + penalty
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    pred = torch.sigmoid(b @ w)
    return torch.stack([(pred - test_y.double()).pow(2), (test_y.double() - test_y.double().mean()).pow(2)])


def _readout_errors(base: torch.Tensor, changed: list[torch.Tensor], factor: Factor, l2: float) -> torch.Tensor:
    """The factor's level read from the change of mu (a ridge regression; for a binary factor a logistic
    regression on the size of the change), fitted on the first half of the images (every level, the unchanged
    image included) and applied to the other half: per held-out image, the squared errors and squared deviations
    summed over its levels, (2, M)."""
    n = len(base)
    half = n // 2
    codes = [torch.zeros_like(base), *(c - base for c in changed)]  # (N, D) each: the change of the code
    if factor.binary:
        codes = [c.abs() for c in codes]
    values = [factor.identity, *(v for v, _ in factor.levels)]

    def xs(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([c[rows] for c in codes])  # (L * len(rows), D), level-major

    def ys(rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full((len(rows),), v, dtype=torch.float64) for v in values])

    train_rows, test_rows = torch.arange(half), torch.arange(half, n)
    if factor.binary:  # the level as a 0/1 label: the identity's value is 0, the other level's 1
        label = lambda rows: (ys(rows) != factor.identity).double()  # noqa: E731
        sq = logistic_r2(xs(train_rows), label(train_rows), xs(test_rows), label(test_rows), l2)  # (2, 2 * M)
    else:
        sq = ridge_r2(xs(train_rows), ys(train_rows), xs(test_rows), ys(test_rows), l2)  # (2, L * M)
    return sq.view(2, len(values), n - half).sum(1)


def _r2(errors: torch.Tensor, rows: torch.Tensor) -> float:
    return float(1 - errors[0, rows].sum() / errors[1, rows].sum())


def factor_metrics(base: torch.Tensor, changed: dict[str, list[torch.Tensor]], factors: dict[str, Factor],
                   l2: float, reps: int, seed: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Per factor, the concentration score factor_score_<name> (over all images) and the readability
    factor_r2_<name> (held-out R^2 of the level read from the change of mu), and their means over factors factor_score and
    factor_r2, each with a 95% bootstrap interval over the images (one joint resample for the means); and the
    response (D,) of each factor. base: mu (N, D) of the unchanged images; changed: per factor, mu per level."""
    n = len(base)
    sq = {name: squared_changes(base, changed[name]) for name in factors}  # each (N, D)
    errors = {name: _readout_errors(base, changed[name], f, l2) for name, f in factors.items()}  # each (2, M)
    all_rows, held_out = torch.arange(n), torch.arange(errors[next(iter(factors))].shape[1])
    out: dict[str, float] = {}
    for name in factors:
        out |= with_interval(f"factor_score_{name}", factor_score(sq[name].mean(0)),
                             bootstrap(lambda i, name=name: factor_score(sq[name][i].mean(0)), [n], reps, seed))
        out |= with_interval(f"factor_r2_{name}", _r2(errors[name], held_out),
                             bootstrap(lambda i, name=name: _r2(errors[name], i), [len(held_out)], reps, seed))
    mean_score = lambda i: sum(factor_score(sq[f][i].mean(0)) for f in factors) / len(factors)  # noqa: E731
    mean_r2 = lambda i: sum(_r2(errors[f], i) for f in factors) / len(factors)  # noqa: E731
    out |= with_interval("factor_score", mean_score(all_rows), bootstrap(mean_score, [n], reps, seed))
    out |= with_interval("factor_r2", mean_r2(held_out), bootstrap(mean_r2, [len(held_out)], reps, seed))
    return out, {name: v.mean(0) for name, v in sq.items()}
