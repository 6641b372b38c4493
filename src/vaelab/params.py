"""Typed, frozen configuration read from params.yaml; unknown or invalid keys are rejected by name."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from vaelab.schema import ParamsError, check as _check, flatten, from_dict, read_yaml, to_dict  # noqa: F401
from vaelab.sections import (  # noqa: F401  (re-exported: every section is vaelab.params.<Name>)
    ARCHITECTURES, PREDICTIONS, SAMPLERS, AdversarialConfig, ClassifierConfig, DiffusionConfig, EvaluateConfig,
    FiguresConfig, SamplingConfig, TimingsConfig)


@dataclass(frozen=True)
class DataConfig:
    """Where CIFAR-10 comes from and how much of it to use."""

    root: str = "data"
    # Local copies are tried first, in order; relative paths are relative to the repository root.
    sources: tuple[str, ...] = ("../shared/cifar10/cifar-10-python.tar.gz",)
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: str = "c58f30108f718f92721af3b95e74349a"
    download_timeout_s: float = 60.0
    subset: int = 0  # training images to use, 0 = all 50,000; the test set is cut in proportion

    def __post_init__(self) -> None:
        _check(self.subset >= 0, "data.subset", f"must be >= 0 (0 = all), got {self.subset}")
        _check(self.subset <= 50_000, "data.subset", f"must be <= 50000, got {self.subset}")
        _check(self.download_timeout_s > 0, "data.download_timeout_s", "must be > 0")
        _check(len(self.md5) == 32, "data.md5", "must be a 32-character hex digest")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the convolutional VAE."""

    latent_dim: int = 64
    widths: tuple[int, ...] = (64, 128, 256)  # one stride-2 stage per width: 32 -> 16 -> 8 -> 4
    res_blocks: int = 1  # residual blocks per resolution, encoder and decoder
    likelihood: str = "logistic"  # "logistic" (per-pixel discretized logistic) or "gaussian" (global sigma)
    logvar_min: float = -12.0  # clamp of the posterior log-variance, keeps exp() finite
    prior_flows: int = 0  # affine couplings of the learned prior p(z) = f#N(0, I); 0 = p(z) is N(0, I)
    prior_hidden: int = 256  # hidden width of each coupling's MLP
    mlp_hidden: int = 0  # > 0: one hidden layer of this width between the 4x4 feature map and z, both ways
    # Decoder options (the encoder stays as above):
    upsample: str = "transposed"  # transposed (4x4 stride-2 transposed conv) | nearest (nearest x2, then conv3x3)
    decoder_res_blocks: int = 0  # residual blocks per resolution added in the decoder only (after res_blocks)
    decoder_widths: tuple[int, ...] = ()  # decoder widths at 16x16, 8x8 and 4x4; () = the encoder's widths
    sigma: str = "global"  # Gaussian decoder's sigma: global (one learned) | channel (one per RGB) | pixel (predicted)
    #                        | fixed (fixed_sigma, not learned)
    fixed_sigma: float = 0.1  # the decoder's sigma on the [-1, 1] pixel scale when sigma = fixed

    def __post_init__(self) -> None:
        _check(self.latent_dim >= 1, "model.latent_dim", f"must be >= 1, got {self.latent_dim}")
        _check(len(self.widths) == 3 and all(w >= 1 for w in self.widths), "model.widths",
               f"must list 3 widths >= 1 (32 -> 16 -> 8 -> 4 pixels), got {list(self.widths)}")
        _check(self.likelihood in LIKELIHOODS, "model.likelihood", f"must be one of {LIKELIHOODS}")
        _check(self.prior_flows >= 0, "model.prior_flows", f"must be >= 0, got {self.prior_flows}")
        _check(self.prior_hidden >= 1, "model.prior_hidden", f"must be >= 1, got {self.prior_hidden}")
        _check(self.mlp_hidden >= 0, "model.mlp_hidden", f"must be >= 0, got {self.mlp_hidden}")
        _check(self.upsample in UPSAMPLES, "model.upsample", f"must be one of {UPSAMPLES}, got {self.upsample!r}")
        for key in ("res_blocks", "decoder_res_blocks"):
            _check(getattr(self, key) >= 0, f"model.{key}", f"must be >= 0, got {getattr(self, key)}")
        _check(len(self.decoder_widths) in (0, 3) and all(w >= 1 for w in self.decoder_widths),
               "model.decoder_widths", f"must be [] or list 3 widths >= 1, got {list(self.decoder_widths)}")
        _check(self.sigma in SIGMAS, "model.sigma", f"must be one of {SIGMAS}, got {self.sigma!r}")
        _check(self.sigma == "global" or self.likelihood == "gaussian", "model.sigma",
               "applies to the gaussian likelihood only (the logistic one predicts a scale per pixel)")
        _check(math.isfinite(self.fixed_sigma) and self.fixed_sigma > 0, "model.fixed_sigma",
               f"must be a number > 0, got {self.fixed_sigma}")
        _check(self.prior_flows == 0 or self.latent_dim >= 2, "model.prior_flows",
               "a flow prior needs model.latent_dim >= 2 (each coupling splits z in two)")


LIKELIHOODS = ("logistic", "gaussian")
UPSAMPLES = ("transposed", "nearest")
SIGMAS = ("global", "channel", "pixel", "fixed")


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe; `betas` lists one model per value."""

    betas: tuple[float, ...] = (1.0, 5.0)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200  # linear learning-rate warm-up, then cosine decay to zero
    kl_warmup_epochs: float = 0.0  # KL weight ramps linearly 0 -> beta over this many epochs (0 = off)
    mmd_weight: float = 0.0  # weight of the MMD(aggregate posterior, N(0, I)) term (InfoVAE), 0 = plain beta-VAE
    perceptual_weight: float = 0.0  # lambda_p of lambda_p * D_feat(x, x_hat) in nats per unit distance; 0 = off
    ema_decay: float = 0.0  # exponential moving average of the weights, used for evaluation and saved (0 = off)
    weight_decay: float = 0.0
    grad_clip: float = 200.0  # max global gradient norm
    bf16: bool = True  # bf16 autocast where the hardware computes bf16 (CUDA, AVX512-BF16/AMX CPUs); else float32
    threads: int = 0  # torch intra-op threads per process, 0 = the cores shared out over the processes
    processes: int = 1  # data-parallel processes (torchrun, DDP); the global batch stays batch_size
    log_every: int = 50  # steps per row of the per-step training curve (each term's mean over those steps)

    def __post_init__(self) -> None:
        _check(len(self.betas) >= 1, "train.betas", "must list at least one beta")
        _check(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        for b in self.betas:
            _check(math.isfinite(b) and b > 0, "train.betas", f"every beta must be a finite number > 0, got {b}")
        _check(len(set(self.betas)) == len(self.betas), "train.betas", f"has duplicates: {list(self.betas)}")
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 2, "train.batch_size", f"must be >= 2, got {self.batch_size}")
        _check(self.processes >= 1, "train.processes", f"must be >= 1, got {self.processes}")
        _check(self.batch_size % self.processes == 0 and self.batch_size // self.processes >= 2, "train.processes",
               f"must split train.batch_size ({self.batch_size}) into equal shares of >= 2 images, got {self.processes}")
        _check(math.isfinite(self.lr) and self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _check(math.isfinite(self.mmd_weight) and self.mmd_weight >= 0, "train.mmd_weight",
               f"must be a finite number >= 0, got {self.mmd_weight}")
        _check(math.isfinite(self.perceptual_weight) and self.perceptual_weight >= 0, "train.perceptual_weight",
               f"must be a finite number >= 0, got {self.perceptual_weight}")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        _check(self.grad_clip > 0, "train.grad_clip", "must be > 0")
        for key in ("warmup_steps", "kl_warmup_epochs", "weight_decay", "threads"):
            _check(getattr(self, key) >= 0, f"train.{key}", f"must be >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class SweepConfig:
    """The β sweep (stages sweep@<beta>, sweep_eval@<beta>, sweep_report): the `model` section's VAE trained from
    scratch per beta at this cheap recipe (no perceptual term), measured on `eval_images` test images."""

    betas: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0)
    subset: int = 10000  # training images (a seeded draw, as data.subset); 0 = all
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 100
    bf16: bool = True
    eval_images: int = 2000  # test images measured per point; as many samples from its sampler are judged
    fixed_sigma: float = 0.1  # the decoder sigma ([-1, 1] scale) of the distortion that compares across points
    traversal_dims: int = 8  # highest-KL dimensions whose traversal's pixel change is measured
    traversal_span: float = 2.5  # +- prior standard deviations
    # The seed-to-seed spread of this recipe: these betas trained again with these seeds (besides the top-level
    # seed of every point), stages sweep_seed@<beta>-<seed>; the report's verdicts along the sweep use it.
    spread_betas: tuple[float, ...] = (1.0, 64.0)
    spread_seeds: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        _check(len(self.betas) >= 1 and all(math.isfinite(b) and b > 0 for b in self.betas), "sweep.betas",
               f"must list betas > 0, got {list(self.betas)}")
        _check(len(set(self.betas)) == len(self.betas), "sweep.betas", f"has duplicates: {list(self.betas)}")
        _check(len(set(self.spread_betas)) == len(self.spread_betas) and set(self.spread_betas) <= set(self.betas),
               "sweep.spread_betas", f"must list distinct values of sweep.betas, got {list(self.spread_betas)}")
        _check(len(self.spread_seeds) >= 1 and len(set(self.spread_seeds)) == len(self.spread_seeds)
               and all(0 <= s < 2**31 for s in self.spread_seeds), "sweep.spread_seeds",
               f"must list distinct seeds in [0, 2**31), got {list(self.spread_seeds)}")
        _check(self.subset >= 0, "sweep.subset", f"must be >= 0, got {self.subset}")
        _check(self.eval_images >= 2, "sweep.eval_images", "must be >= 2")
        _check(math.isfinite(self.fixed_sigma) and self.fixed_sigma > 0, "sweep.fixed_sigma", "must be > 0")
        _check(self.traversal_dims >= 1, "sweep.traversal_dims", "must be >= 1")
        _check(self.traversal_span > 0, "sweep.traversal_span", "must be > 0")
        try:
            self.train_config()
        except ParamsError as e:
            raise ParamsError(str(e).replace("'train.", "'sweep.")) from None

    def train_config(self) -> TrainConfig:
        """The sweep's training recipe: the plain β-VAE (no perceptual term, no EMA), one process."""
        return TrainConfig(betas=self.betas, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, bf16=self.bf16)


@dataclass(frozen=True)
class ControlConfig:
    """The control study (stages control@<beta>-<seed>, control_eval): VAEs on the rendered dataset of known
    factors (vaelab.control), one per beta and seed, scored by MIG and DCI against the true factors."""

    betas: tuple[float, ...] = (1.0, 16.0, 64.0, 256.0)  # one model per beta and seed: control@<beta>-<seed>
    seeds: tuple[int, ...] = (0, 1, 2)
    test_fraction: float = 0.1  # images held out of training (their loss is the test curve); all are scored
    subset: int = 0  # training images to use (a seeded draw), 0 = all
    latent_dim: int = 10
    widths: tuple[int, ...] = (32, 32, 64)
    mlp_hidden: int = 256  # hidden units between the conv stack and z, both ways (model.mlp_hidden)
    fixed_sigma: float = 0.2  # the Gaussian decoder's fixed sigma ([-1, 1] scale): a learned one -> 0 on clean data
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    bf16: bool = True
    score_images: int = 10000  # images (a seeded draw of the factorial) whose codes MIG is computed on
    mig_bins: int = 20  # equal-width bins per code dimension (disentanglement_lib's MIG)
    dci_train: int = 2000  # of those images, this many fit DCI's boosted trees ...
    dci_test: int = 1000  # ... and this many score their accuracy (informativeness)
    traversal_steps: int = 9
    traversal_range: float = 2.5  # +- this many prior standard deviations

    def __post_init__(self) -> None:
        _check(len(self.betas) >= 1 and all(math.isfinite(b) and b > 0 for b in self.betas), "control.betas",
               f"must list betas > 0, got {list(self.betas)}")
        _check(len(set(self.betas)) == len(self.betas), "control.betas", f"has duplicates: {list(self.betas)}")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
               and all(0 <= s < 2**31 for s in self.seeds), "control.seeds",
               f"must list distinct seeds in [0, 2**31), got {list(self.seeds)}")
        _check(0 < self.test_fraction < 1, "control.test_fraction", f"must be in (0, 1), got {self.test_fraction}")
        _check(self.subset >= 0, "control.subset", f"must be >= 0, got {self.subset}")
        _check(self.latent_dim >= 2, "control.latent_dim", "must be >= 2 (MIG compares two codes)")
        _check(self.score_images >= self.dci_train + self.dci_test, "control.score_images",
               "must be at least control.dci_train + control.dci_test")
        for key in ("epochs", "batch_size", "mig_bins", "dci_train", "dci_test", "traversal_steps"):
            _check(getattr(self, key) >= 2 or (key == "epochs" and self.epochs >= 1), f"control.{key}",
                   f"must be >= {1 if key == 'epochs' else 2}, got {getattr(self, key)}")
        _check(self.traversal_range > 0, "control.traversal_range", "must be > 0")
        _check(self.warmup_steps >= 0, "control.warmup_steps", "must be >= 0")
        # The same checks as the main VAE's, naming control's keys.
        try:
            self.model_config(), self.train_config()
        except ParamsError as e:
            raise ParamsError(str(e).replace("'model.", "'control.").replace("'train.", "'control.")) from None

    def model_config(self) -> ModelConfig:
        """The VAE of the control study: no residual blocks, a Gaussian decoder with fixed sigma."""
        return ModelConfig(latent_dim=self.latent_dim, widths=self.widths, res_blocks=0, likelihood="gaussian",
                           sigma="fixed", fixed_sigma=self.fixed_sigma, mlp_hidden=self.mlp_hidden)

    def train_config(self) -> TrainConfig:
        """Its training recipe (no perceptual term, no EMA, one process)."""
        return TrainConfig(betas=self.betas, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=self.warmup_steps, bf16=self.bf16)


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow experiment; an empty uri means sqlite:///<repo>/mlflow.db (MLFLOW_TRACKING_URI overrides)."""

    experiment: str = "cifar10-beta-vae"
    judge_experiment: str = "cifar10-judge"  # the judge's run, kept apart so beta runs compare cleanly
    uri: str = ""
    registered_model: str = "cifar10-vae"  # Model Registry name: one version per beta, alias beta-<beta>

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "tracking.experiment", "must not be empty")
        _check(bool(self.judge_experiment.strip()), "tracking.judge_experiment", "must not be empty")
        _check(re.fullmatch(r"[\w\-.]+", self.registered_model) is not None, "tracking.registered_model",
               f"must be a name of letters, digits, '_', '-' or '.', got {self.registered_model!r}")


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoder: AdversarialConfig = field(default_factory=AdversarialConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    judge: ClassifierConfig = field(default_factory=ClassifierConfig)
    audit: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(arch="resnet", seed=1))
    features: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(arch="vgg", seed=2))
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    timings: TimingsConfig = field(default_factory=TimingsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**31, "seed", f"must be an integer in [0, 2**31), got {self.seed}")
        archs = {role: getattr(self, role).arch for role in ("judge", "audit", "features")}
        # Three independent networks: the audit is only an audit if it does not share the judge's architecture, and
        # a perceptual term built on the judge's (or the audit's) architecture would teach the VAE what they score.
        _check(len(set(archs.values())) == 3, "audit.arch",
               f"judge, audit and features must have three different architectures, got {archs}")
        _check(len({self.judge.seed, self.audit.seed, self.features.seed}) == 3, "features.seed",
               "judge, audit and features must be trained with three different seeds")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml (missing keys take the dataclass defaults). The `presets` section is left to
    `vaelab.presets.load_presets`: only the report and the preset command read it, and `presets` is a param of
    the report stage alone, so an edited preset is validated by the next `dvc repro` at once."""
    raw = read_yaml(path)
    return from_dict(Params, {k: v for k, v in raw.items() if k != "presets"})
