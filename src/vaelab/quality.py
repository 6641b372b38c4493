"""Sample quality as a classifier sees it: FCD and KID of its features against a reference set, its confidence and
the entropy of its predicted classes, each headline number with a bootstrap interval. Independent of the VAE, so
that stage `reference` (real images scored by the judge and the audit) does not depend on the VAE's code."""
from __future__ import annotations

from typing import Any, Callable

import torch

from vaelab.intervals import bootstrap, with_interval


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, F) and b (M, F) (FID's formula):
    |mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    c_a, c_b = torch.cov(a.T), torch.cov(b.T)
    # Tr (C_a C_b)^(1/2) = sum sqrt(eig(C_a^(1/2) C_b C_a^(1/2))), a symmetric PSD matrix: stable via eigh.
    evals, evecs = torch.linalg.eigh(c_a)
    sqrt_a = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ c_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(c_a) + torch.trace(c_b) - 2 * cross)


def kernel_distance(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / F + 1)^3, mean and standard
    deviation over `subsets` random subsets of `subset_size` from each set (capped at the smaller set)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    f = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        k_xx, k_yy, k_xy = ((x @ x.T) / f + 1) ** 3, ((y @ y.T) / f + 1) ** 3, ((x @ y.T) / f + 1) ** 3
        # Unbiased: the diagonals (k(x, x)) are left out of the within-set means.
        mmd = ((k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())) / (m * (m - 1)) \
            - 2 * k_xy.mean()
        values.append(float(mmd))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def class_entropy(probs: torch.Tensor, n_classes: int = 10) -> float:
    """Entropy in bits of the histogram of predicted classes (argmax of probs (N, C)); log2(C) = all classes
    equally often, 0 = one class."""
    p = torch.bincount(probs.argmax(1), minlength=n_classes).double() / len(probs)
    p = p[p > 0]
    return max(0.0, float(-(p * p.log2()).sum()))  # max: no "-0.0"


def sample_quality(feats: torch.Tensor, probs: torch.Tensor, ref_feats: torch.Tensor, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, seed: int = 0, reps: int = 0) -> dict[str, float]:
    """The judge's verdict on a set of images: fcd and kid (+ kid_std, the spread over subsets) of their features
    (N, F) against reference features (M, F), judge_confidence (mean max softmax of probs (N, C)) and
    class_entropy (bits). With reps > 0, fcd, judge_confidence and class_entropy get 95% bootstrap intervals
    (`_lo`, `_hi`): the images and the reference images resampled independently (evaluation noise)."""
    kid, kid_std = kernel_distance(feats, ref_feats, kid_subsets, kid_subset_size, seed)
    confidence = probs.max(1).values.double()  # (N,)
    out = {"fcd": frechet_distance(feats, ref_feats), "kid": kid, "kid_std": kid_std,
           "judge_confidence": float(confidence.mean()), "class_entropy": class_entropy(probs)}
    if reps > 0:
        out |= with_interval("fcd", out["fcd"], bootstrap(lambda i, j: frechet_distance(feats[i], ref_feats[j]),
                                                          [len(feats), len(ref_feats)], reps, seed))
        out |= with_interval("judge_confidence", out["judge_confidence"],
                             bootstrap(lambda i: float(confidence[i].mean()), [len(probs)], reps, seed + 1))
        out |= with_interval("class_entropy", out["class_entropy"],
                             bootstrap(lambda i: class_entropy(probs[i]), [len(probs)], reps, seed + 2))
    return out


def high_frequency_energy(images_u8: torch.Tensor, cutoff: float = 0.5, batch_size: int = 2000) -> torch.Tensor:
    """Per image (N,), the power of the luminance (on the [0, 1] scale) at spatial frequencies above `cutoff` times
    the Nyquist frequency, per pixel: what blur removes first. A non-learned sharpness measure, independent of every
    network in the pipeline. images_u8: (N, 3, H, W) uint8."""
    h, w = images_u8.shape[-2:]
    fy = torch.fft.fftfreq(h).abs().view(h, 1) * 2  # in units of the Nyquist frequency (0.5 cycles per pixel)
    fx = torch.fft.fftfreq(w).abs().view(1, w) * 2
    band = (torch.maximum(fy, fx) > cutoff).double()  # (H, W): outside the central square of half the bandwidth
    out = []
    for chunk in images_u8.split(batch_size):
        grey = (chunk.double() / 255 * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)).sum(1)
        power = torch.fft.fft2(grey).abs().pow(2) / (h * w)  # (B, H, W); Parseval: sums to the sum of squares
        out.append((power * band).sum((1, 2)) / (h * w))
    return torch.cat(out)


def sharpness_ratio(energy: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean high-frequency energy of a set of images over that of reference images (1 = as sharp as real images,
    < 1 = blurrier, > 1 = noisier)."""
    return float(energy.double().mean() / reference.double().mean())


def nearest_images(images: torch.Tensor, pool: torch.Tensor, batch_size: int = 5000) -> tuple[torch.Tensor, torch.Tensor]:
    """For each uint8 image (K, 3, 32, 32), the index in `pool` (N, 3, 32, 32) of the nearest image by pixel
    distance, and that distance as the root mean squared difference on the [0, 1] scale: (K,), (K,)."""
    q = images.flatten(1).double() / 255  # (K, 3072)
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    arg = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(pool), batch_size):
        d = torch.cdist(q, pool[start : start + batch_size].flatten(1).double() / 255)  # (K, b)
        value, index = d.min(1)
        better = value < best
        best, arg = torch.where(better, value, best), torch.where(better, index + start, arg)
    return arg, best / q.shape[1] ** 0.5


def copy_check(samples_u8: torch.Tensor, train_u8: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor],
               n: int, reps: int, seed: int) -> dict[str, Any]:
    """Are samples copies of training images? copy_fcd: the Fréchet distance between the features of the first n
    samples and of their nearest training images (pixel distance); halves_fcd: between two disjoint seeded draws
    of n training images. Both with 95% bootstrap intervals (pairs resampled together for copy_fcd). Copies give
    copy_fcd ≈ 0, below two halves of real data; samples_not_copies is True when copy_fcd's interval lies above
    halves_fcd's."""
    samples = samples_u8[:n]
    k = len(samples)
    if 2 * k > len(train_u8):
        raise ValueError(f"two halves of {k} images need {2 * k} training images, got {len(train_u8)}")
    near, _ = nearest_images(samples, train_u8)
    f_s, f_n = features(samples).double(), features(train_u8[near]).double()
    perm = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(seed))
    f_a, f_b = features(train_u8[perm[:k]]).double(), features(train_u8[perm[k:2 * k]]).double()
    out = with_interval("copy_fcd", frechet_distance(f_s, f_n),
                        bootstrap(lambda i: frechet_distance(f_s[i], f_n[i]), [len(f_s)], reps, seed))
    out |= with_interval("halves_fcd", frechet_distance(f_a, f_b),
                         bootstrap(lambda i, j: frechet_distance(f_a[i], f_b[j]), [len(f_a), len(f_b)], reps, seed))
    out["samples_not_copies"] = bool(out["copy_fcd_lo"] > out["halves_fcd_hi"])
    out["copy_images"] = len(samples)
    return out
