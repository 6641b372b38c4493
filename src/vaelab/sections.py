"""The params.yaml sections of what follows the VAE's training: evaluation, the samplers, the decoder fine-tune,
the three classifiers, figures and timings (typed, frozen; invalid values are rejected by key name)."""
from __future__ import annotations

from dataclasses import dataclass, field

from vaelab.schema import check as _check

ARCHITECTURES = ("airbench", "resnet", "vgg")  # classifier modules (vaelab.network.ARCHITECTURE_MODULES)


@dataclass(frozen=True)
class EvaluateConfig:
    """Test-set evaluation: likelihood bounds, latent organisation and sample quality, each with an interval."""

    batch_size: int = 500
    active_thresholds: tuple[float, ...] = (0.01, 0.1, 0.5)  # a unit is active when Cov_x E[z_j | x] > t
    iw_samples: int = 64  # K of the importance-weighted bound (Burda et al. 2015)
    iw_images: int = 1000  # test images it is computed on
    tc_batch_size: int = 2000  # minibatch M of the sampled total-correlation estimate
    probe_l2: float = 1e-4  # L2 penalty of the linear probe on standardised mu
    probe_steps: int = 300  # L-BFGS iterations of the probe
    factor_images: int = 1000  # test images the factors are applied to (half fit the readout, half score it)
    readout_l2: float = 1.0  # ridge penalty of the regression that reads a factor's level from mu
    brightness_levels: tuple[float, ...] = (-0.2, -0.1, 0.1, 0.2)  # added to pixels on the [0, 1] scale
    hue_levels_deg: tuple[float, ...] = (-60.0, -30.0, 30.0, 60.0)  # rotation about the grey axis of RGB
    saturation_levels: tuple[float, ...] = (0.25, 0.5, 1.5, 2.0)  # colourfulness multiplier (1 = unchanged)
    shift_levels_px: tuple[int, ...] = (-3, -2, 2, 3)  # horizontal translation, reflection padded
    vshift_levels_px: tuple[int, ...] = (-3, -2, 2, 3)  # vertical translation, reflection padded
    rotation_levels_deg: tuple[float, ...] = (-20.0, -10.0, 10.0, 20.0)  # rotation about the centre
    scale_levels: tuple[float, ...] = (0.8, 0.9, 1.1, 1.25)  # zoom about the centre (1 = unchanged)
    n_samples: int = 10000  # samples (and real / reconstructed images) scored by the judge
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    bootstrap: int = 200  # resamples of the test images behind every 95% interval
    copy_images: int = 2000  # sampler images checked against their nearest training images (quality.copy_check)

    def __post_init__(self) -> None:
        for key, least in (("batch_size", 1), ("iw_samples", 1), ("tc_batch_size", 2), ("probe_steps", 1),
                           ("n_samples", 2), ("kid_subsets", 1), ("kid_subset_size", 2), ("bootstrap", 2),
                           ("copy_images", 2)):
            _check(getattr(self, key) >= least, f"evaluate.{key}", f"must be >= {least}, got {getattr(self, key)}")
        _check(len(self.active_thresholds) >= 1 and all(t > 0 for t in self.active_thresholds),
               "evaluate.active_thresholds", f"must list thresholds > 0, got {list(self.active_thresholds)}")
        _check(1 <= self.iw_images <= 10_000, "evaluate.iw_images", "must be in 1..10000")
        _check(self.probe_l2 >= 0, "evaluate.probe_l2", "must be >= 0")
        _check(4 <= self.factor_images <= 10_000, "evaluate.factor_images", "must be in 4..10000")
        _check(self.readout_l2 > 0, "evaluate.readout_l2", "must be > 0")
        for key, identity in (("brightness_levels", 0), ("hue_levels_deg", 0), ("saturation_levels", 1),
                              ("shift_levels_px", 0), ("vshift_levels_px", 0), ("rotation_levels_deg", 0),
                              ("scale_levels", 1)):
            levels = getattr(self, key)
            _check(len(levels) >= 1 and all(v != identity for v in levels), f"evaluate.{key}",
                   f"must list at least one level other than {identity} (unchanged), got {list(levels)}")
        _check(all(abs(v) < 1 for v in self.brightness_levels), "evaluate.brightness_levels", "must lie in (-1, 1)")
        for key in ("shift_levels_px", "vshift_levels_px"):
            _check(all(abs(v) <= 8 for v in getattr(self, key)), f"evaluate.{key}", "must lie in [-8, 8]")
        _check(all(0 <= v <= 10 for v in self.saturation_levels), "evaluate.saturation_levels", "must lie in [0, 10]")
        _check(all(abs(v) <= 90 for v in self.rotation_levels_deg), "evaluate.rotation_levels_deg",
               "must lie in [-90, 90]")
        _check(all(0.25 <= v <= 4 for v in self.scale_levels), "evaluate.scale_levels", "must lie in [0.25, 4]")


PREDICTIONS = ("v", "eps")


@dataclass(frozen=True)
class DiffusionConfig:
    """The learned prior over codes (vaelab.diffusion): the denoiser's size, its fit and its sampling."""

    hidden: int = 256  # width of the residual MLP
    blocks: int = 3  # residual blocks
    timesteps: int = 1000  # noise levels of the forward process
    train_steps: int = 6000  # optimiser steps of the fit
    batch_size: int = 256
    lr: float = 1e-3
    sample_steps: int = 50  # DDIM steps at sampling, spread evenly over the timesteps
    temperature: float = 1.0  # the starting noise's standard deviation (< 1: fewer, more typical samples)
    prediction: str = "v"  # what the network predicts: v = √ᾱ·ε − √(1−ᾱ)·x (Salimans & Ho 2022) or eps (the noise)

    def __post_init__(self) -> None:
        _check(self.prediction in PREDICTIONS, "sampling.diffusion.prediction",
               f"must be one of {PREDICTIONS}, got {self.prediction!r}")
        for name in ("hidden", "blocks", "timesteps", "train_steps", "batch_size", "sample_steps"):
            _check(getattr(self, name) >= 1, f"sampling.diffusion.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(self.sample_steps <= self.timesteps, "sampling.diffusion.sample_steps",
               f"must be <= timesteps ({self.timesteps}), got {self.sample_steps}")
        _check(self.lr > 0, "sampling.diffusion.lr", f"must be > 0, got {self.lr}")
        _check(0 < self.temperature <= 2, "sampling.diffusion.temperature",
               f"must be in (0, 2], got {self.temperature}")


@dataclass(frozen=True)
class AdversarialConfig:
    """The patch adversarial fine-tune of the decoder (stage decoder@<beta>, vaelab.adversarial): its
    discriminator and its schedule. The defaults are the recipe measured by scripts/finetune_probe.py
    (docs/metrics.md)."""

    disc_widths: tuple[int, ...] = (64, 128, 256)  # discriminator convolutions: 32 -> 16 -> 8 pixels, then 8x8 logits
    steps: int = 600  # optimiser steps of the fine-tune (decoder and discriminator one step each)
    batch_size: int = 64
    lr: float = 1e-4  # the decoder's learning rate (Adam, β = (0.5, 0.9) as in VQGAN)
    disc_lr: float = 1e-4
    disc_start: int = 150  # steps of the discriminator alone before its term reaches the decoder (VQGAN's warm-up)
    disc_weight: float = 0.5  # the adversarial term's weight on top of the adaptive λ; 0 = a reconstruction-only fine-tune
    lambda_max: float = 1e4  # the adaptive λ is clamped to [0, lambda_max]: it explodes when ∇L_G vanishes
    augment_px: int = 2  # random translation of D's inputs, real and fake alike (DiffAugment); 0 = off
    checkpoint_every: int = 100  # steps between checkpoints (a killed stage resumes from the last one)

    def __post_init__(self) -> None:
        _check(len(self.disc_widths) == 3 and all(w >= 1 for w in self.disc_widths), "decoder.disc_widths",
               f"must list 3 widths >= 1, got {list(self.disc_widths)}")
        for key in ("steps", "batch_size", "checkpoint_every"):
            _check(getattr(self, key) >= 1, f"decoder.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "disc_lr", "lambda_max"):
            _check(getattr(self, key) > 0, f"decoder.{key}", f"must be > 0, got {getattr(self, key)}")
        _check(0 <= self.disc_start < self.steps, "decoder.disc_start", f"must be in [0, steps), got {self.disc_start}")
        _check(self.disc_weight >= 0, "decoder.disc_weight", f"must be >= 0, got {self.disc_weight}")
        _check(0 <= self.augment_px <= 8, "decoder.augment_px", f"must be in 0..8, got {self.augment_px}")


SAMPLERS = ("mixture", "diffusion")


@dataclass(frozen=True)
class SamplingConfig:
    """The ex-post samplers (stage sampler@<beta>): densities fitted to the training codes once; every sample grid,
    judged sample set, the CLI and the registered MLflow model draw from the one named by `prior`."""

    prior: str = "mixture"  # what every consumer draws from: mixture | diffusion (both are fitted and judged)
    holdout: int = 10000  # training images kept out of both fits: their decoded codes are the ceiling set
    gmm_components: int = 10  # full-covariance Gaussian mixture fitted to the training codes mu (Ghosh et al. 2020)
    gmm_iterations: int = 100  # EM iterations at most
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        _check(self.prior in SAMPLERS, "sampling.prior", f"must be one of {SAMPLERS}, got {self.prior!r}")
        _check(2 <= self.holdout <= 40_000, "sampling.holdout", f"must be in 2..40000, got {self.holdout}")
        _check(1 <= self.gmm_components <= 1000, "sampling.gmm_components", f"must be in 1..1000, got "
               f"{self.gmm_components}")
        _check(self.gmm_iterations >= 1, "sampling.gmm_iterations", f"must be >= 1, got {self.gmm_iterations}")


@dataclass(frozen=True)
class ClassifierConfig:
    """One CIFAR-10 classifier (params sections judge, audit, features): its architecture, seed and the
    airbench-style recipe it is trained with. Error messages name the section ({section} below)."""

    arch: str = "airbench"  # airbench (judge) | resnet (audit) | vgg (features); see network.py
    seed: int = 0  # the classifier's own training seed (batch order, augmentation, initialisation)
    widths: tuple[int, ...] = (32, 128, 128)  # conv widths of the three groups
    epochs: float = 8.0
    batch_size: int = 1024
    lr: float = 11.5  # per 1024 examples of a summed loss, as in airbench
    momentum: float = 0.85
    weight_decay: float = 0.0153
    label_smoothing: float = 0.2
    translate: int = 2  # random translation in pixels (reflection padded)
    whiten_width: int = 24  # airbench only: 2 x 12 whitening filters of 2x2x3 patches
    bf16: bool = True

    def __post_init__(self) -> None:
        _check(self.arch in ARCHITECTURES, "{section}.arch", f"must be one of {ARCHITECTURES}, got {self.arch!r}")
        _check(0 <= self.seed < 2**31, "{section}.seed", f"must be an integer in [0, 2**31), got {self.seed}")
        _check(len(self.widths) == 3 and all(w >= 1 for w in self.widths), "{section}.widths",
               f"must list 3 widths >= 1, got {list(self.widths)}")
        _check(self.epochs > 0, "{section}.epochs", "must be > 0")
        _check(self.batch_size >= 2, "{section}.batch_size", "must be >= 2")
        _check(self.lr > 0, "{section}.lr", "must be > 0")
        _check(0 <= self.momentum < 1, "{section}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "{section}.weight_decay", "must be >= 0")
        _check(0 <= self.label_smoothing < 1, "{section}.label_smoothing", "must be in [0, 1)")
        _check(0 <= self.translate <= 8, "{section}.translate", "must be in 0..8")
        _check(self.whiten_width >= 2 and self.whiten_width % 2 == 0 and self.whiten_width <= 24,
               "{section}.whiten_width", "must be even, in 2..24 (pairs of the 12 patch eigenvectors)")


@dataclass(frozen=True)
class FiguresConfig:
    """What the figures show."""

    grid_size: int = 4  # grid_size x grid_size prior samples
    interp_steps: int = 10  # images per interpolation, endpoints included
    n_reconstructions: int = 16
    traversal_dims: int = 8  # highest-KL dimensions to traverse
    traversal_steps: int = 9
    traversal_range: float = 3.0  # traverse z_j over [-r, r] standard deviations of the prior

    def __post_init__(self) -> None:
        _check(self.grid_size >= 1, "figures.grid_size", "must be >= 1")
        _check(self.interp_steps >= 2, "figures.interp_steps", "must be >= 2")
        _check(self.n_reconstructions >= 1, "figures.n_reconstructions", "must be >= 1")
        _check(self.traversal_dims >= 1, "figures.traversal_dims", "must be >= 1")
        _check(self.traversal_steps >= 2, "figures.traversal_steps", "must be >= 2")
        _check(self.traversal_range > 0, "figures.traversal_range", "must be > 0")


@dataclass(frozen=True)
class TimingsConfig:
    """Stage `timings`: how long it measures the train benchmark and profiles a training step."""

    benchmark_steps: int = 30  # timed training steps per variant (plain, with the perceptual term)
    benchmark_warmup: int = 5  # untimed steps before them
    profile_steps: int = 10  # profiled steps (the median is reported)

    def __post_init__(self) -> None:
        for key in ("benchmark_steps", "profile_steps"):
            _check(getattr(self, key) >= 1, f"timings.{key}", "must be >= 1")
        _check(self.benchmark_warmup >= 0, "timings.benchmark_warmup", "must be >= 0")
