"""The control dataset: 32x32 RGB images of one object on a black background, rendered in code as the full
factorial of six independent factors whose values are known (shape, hue, orientation, scale, x, y), so that what a
VAE's codes organise can be scored against the truth (MIG, DCI: `disentanglement`). No download; deterministic.

Each (shape, orientation, scale) silhouette is drawn once at 8x resolution and box-filtered down (anti-aliased
edges), then shifted by whole pixels and coloured: 27,648 images in about a second.
"""
from __future__ import annotations

import colorsys
import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Vertices inside the unit disc, y up. None of the three has a rotational symmetry, so every orientation is
# identifiable from the image.
SHAPES: dict[str, tuple[tuple[float, float], ...]] = {
    "arrow": ((0.95, 0.0), (0.1, 0.6), (0.1, 0.25), (-0.85, 0.25), (-0.85, -0.25), (0.1, -0.25), (0.1, -0.6)),
    "ell": ((-0.55, 0.8), (-0.55, -0.75), (0.65, -0.75), (0.65, -0.3), (-0.1, -0.3), (-0.1, 0.8)),
    "wedge": ((-0.65, -0.65), (0.85, -0.65), (-0.65, 0.75)),
}
SIZE = 32
SUPERSAMPLE = 8
RADIUS_PX = 10.0 # the unit disc's radius at scale 1, in pixels


@dataclass(frozen=True)
class Factors:
    """The values of each factor; the dataset is their full factorial (product of the lengths, in this order)."""

    shapes: tuple[str, ...] = ("arrow", "ell", "wedge")
    # Hue and orientation span an interval, not the full circle: a code can hold an interval on one axis, while a
    # closed circle needs two (its cosine and sine), which no one-code score such as MIG can credit.
    hues_deg: tuple[float, ...] = (0, 30, 60, 90, 120, 150, 180, 210)  # red to blue, by way of green
    orientations_deg: tuple[float, ...] = (0, 20, 40, 60, 80, 100, 120, 140)
    scales: tuple[float, ...] = (0.55, 0.7, 0.85, 1.0)
    x_px: tuple[int, ...] = (-5, -3, -1, 1, 3, 5)  # shift of the centre from the image centre, whole pixels
    y_px: tuple[int, ...] = (-5, -3, -1, 1, 3, 5)

    @property
    def names(self) -> tuple[str, ...]:
        return ("shape", "hue", "orientation", "scale", "x", "y")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(v) for v in (self.shapes, self.hues_deg, self.orientations_deg, self.scales,
                                      self.x_px, self.y_px))

    def check(self) -> None:
        """Raise ValueError naming the first factor whose values are unusable."""
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"control shapes: unknown {unknown}; known: {sorted(SHAPES)}")
        for name, size in zip(self.names, self.sizes):
            if size < 2:
                raise ValueError(f"control factor {name} needs at least 2 values, got {size}")
        for name, values in (("shapes", self.shapes), ("hues_deg", self.hues_deg),
                             ("orientations_deg", self.orientations_deg), ("scales", self.scales),
                             ("x_px", self.x_px), ("y_px", self.y_px)):
            if len(set(values)) != len(values):
                raise ValueError(f"control {name} has duplicate values: {list(values)}")
        if not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"control scales must lie in (0, 1], got {list(self.scales)}")
        reach = RADIUS_PX * max(self.scales) + max(abs(v) for v in self.x_px + self.y_px)
        if reach > SIZE / 2 - 1:
            raise ValueError(f"control positions and scales put the object {reach:.1f} px from the centre: "
                             f"it must stay inside the {SIZE}x{SIZE} image (at most {SIZE / 2 - 1:.0f} px)")


def silhouette(shape: str, orientation_deg: float, scale: float) -> np.ndarray:
    """Coverage in [0, 1] of the object centred in a SIZE x SIZE image: (SIZE, SIZE) float32."""
    big = SIZE * SUPERSAMPLE
    c, s = math.cos(math.radians(orientation_deg)), math.sin(math.radians(orientation_deg))
    r = RADIUS_PX * scale * SUPERSAMPLE
    # Rotate counter-clockwise, then flip y: image rows grow downwards.
    pts = [(big / 2 + r * (c * x - s * y), big / 2 - r * (s * x + c * y)) for x, y in SHAPES[shape]]
    img = Image.new("L", (big, big), 0)
    ImageDraw.Draw(img).polygon(pts, fill=255)
    small = img.resize((SIZE, SIZE), Image.BOX)  # the mean over each 8x8 block: exact anti-aliasing
    return np.asarray(small, dtype=np.float32) / 255.0


def hue_rgb(hue_deg: float) -> np.ndarray:
    """The fully saturated, full-value colour of a hue: (3,) float32 in [0, 1]."""
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360) / 360.0, 1.0, 1.0), dtype=np.float32)


def render(factors: Factors = Factors()) -> tuple[np.ndarray, np.ndarray]:
    """The full factorial: images (N, 3, SIZE, SIZE) uint8 and factor indices (N, 6) int64 (columns in
    `factors.names` order, row-major: shape varies slowest, y fastest)."""
    factors.check()
    idx = np.array(list(itertools.product(*(range(n) for n in factors.sizes))), dtype=np.int64)  # (N, 6)
    masks = np.stack([silhouette(sh, o, sc) for sh in factors.shapes for o in factors.orientations_deg
                      for sc in factors.scales])  # (shapes*orientations*scales, SIZE, SIZE)
    colours = np.stack([hue_rgb(h) for h in factors.hues_deg])  # (hues, 3)
    n_o, n_sc = len(factors.orientations_deg), len(factors.scales)
    images = np.empty((len(idx), 3, SIZE, SIZE), dtype=np.uint8)
    for i, (sh, hu, o, sc, xi, yi) in enumerate(idx):
        mask = np.roll(masks[(sh * n_o + o) * n_sc + sc], (-factors.y_px[yi], factors.x_px[xi]), axis=(0, 1))
        images[i] = np.rint(colours[hu][:, None, None] * mask[None] * 255.0)  # (3, SIZE, SIZE)
    return images, idx


def split(n: int, test_fraction: float, seed: int, subset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of n indices into (train, test), each sorted; subset > 0 keeps that many training
    indices (a seeded draw) and the test part in proportion."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    train, test = perm[n_test:], perm[:n_test]
    if subset:
        if subset > len(train):
            raise ValueError(f"control.subset {subset} exceeds the {len(train)} training images")
        train, test = train[:subset], test[:max(1, int(round(subset * test_fraction / (1 - test_fraction))))]
    return np.sort(train), np.sort(test)
