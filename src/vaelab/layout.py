"""Where every stage reads and writes: the one definition of the repository layout (per classifier, per β, per
stage), used by the stages, the CLI and the notebook, and held to dvc.yaml by tests/test_layout.py. Torch-free."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
BATCHES = Path("cifar-10-batches-py")

# The cross-beta figures of the report stage.
COMPARISON = Path("reports") / "comparison"
# Every beta's metrics folder (BetaPaths.metrics_dir) lies in this one.
BETA_METRICS = Path("metrics") / "betas"
# The report stage's outputs: the markdown, the same report with every image embedded (one file to open or send),
# and every beta's history in one long table (column `beta`), from which `dvc plots show` overlays the betas.
REPORT = Path("reports") / "report.md"
REPORT_HTML = Path("reports") / "report.html"
CURVES = COMPARISON / "training_curves.csv"
# Real images scored by the judge and the audit exactly like samples (stage `reference`).
REFERENCE = Path("metrics") / "reference.json"
# Each stage's own wall time (metrics/timings/<stage>.json, stage as DVC names it: train@1) and their sum.
TIMINGS_DIR = Path("metrics") / "timings"
TIMINGS = Path("metrics") / "timings.json"
# The hand-in notebook and its copy executed by stage `notebook` against the run (every output embedded).
NOTEBOOK = Path("notebooks") / "beta_vae_cifar10.ipynb"
NOTEBOOK_EXECUTED = Path("reports") / "beta_vae_cifar10.ipynb"
PERFORMANCE_DOC = Path("docs") / "performance.md"


def timing_file(stage: str) -> Path:
    """Where stage `stage` (as DVC names it: judge, train@1) writes its wall time."""
    return TIMINGS_DIR / f"{stage}.json"


# Results of params.yaml's presets (python -m vaelab.stages.preset NAME): small, git-tracked, read by the report.
PRESET_RESULTS = Path("reports") / "presets"


def preset_results_file(name: str) -> Path:
    """Where a preset's measured numbers are written (and read by the report stage)."""
    return PRESET_RESULTS / f"{name}.json"


class ModelFolder:
    """The two files of a model folder (every classifier's, every VAE's): its weights and the record of its MLflow
    run."""

    @property
    def model_dir(self) -> Path:
        raise NotImplementedError

    @property
    def model(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def run_file(self) -> Path:
        return self.model_dir / "mlflow_run.json"


@dataclass(frozen=True)
class ClassifierPaths(ModelFolder):
    """Files of one classifier stage (judge, audit, features; the role is the stage's and its params section's
    name), as declared in dvc.yaml."""

    role: str

    @property
    def model_dir(self) -> Path:
        return Path("models") / self.role

    @property
    def model(self) -> Path:
        return self.model_dir / f"{self.role}.pt"

    @property
    def metrics(self) -> Path:
        return Path("metrics") / f"{self.role}.json"

    @property
    def history(self) -> Path:
        return Path("metrics") / f"{self.role}_history.csv"


# The two networks that score samples (never trained against) and the one whose activations define the perceptual
# term of the VAE's loss (never scoring anything).
JUDGE, AUDIT, FEATURES = ClassifierPaths("judge"), ClassifierPaths("audit"), ClassifierPaths("features")
CLASSIFIERS = {c.role: c for c in (JUDGE, AUDIT, FEATURES)}


@dataclass(frozen=True)
class BetaPaths(ModelFolder):
    """Files of one beta's model, as declared in dvc.yaml (tag = the foreach item as DVC prints it); a preset's
    runs keep the same layout under root = presets/<name>."""

    tag: str
    root: Path = Path(".")

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / f"beta_{self.tag}"

    @property
    def tuned_dir(self) -> Path:
        # Stage decoder@<beta>: the model with its decoder fine-tuned against a patch discriminator (encoder as
        # trained). The samplers, evaluation's sample sets, the figures and the CLI decode with it.
        return self.root / "models" / "decoder" / f"beta_{self.tag}"

    @property
    def tuned_model(self) -> Path:
        return self.tuned_dir / "model.pt"

    @property
    def decoder_checkpoint(self) -> Path:
        return self.root / "checkpoints" / f"beta_{self.tag}" / "decoder.pt"

    @property
    def decoder_metrics(self) -> Path:
        return self.metrics_dir / "decoder.json"

    @property
    def decoder_steps(self) -> Path:
        # One row per fine-tune step: L_rec, L_G, L_D, the adaptive λ, D's mean logits on real and fake images.
        return self.metrics_dir / "decoder_steps.csv"

    @property
    def sampler_dir(self) -> Path:
        # Stage sampler@<beta>: the ex-post density on the training codes, which evaluate, figures, the CLI and the
        # registered MLflow model all draw from, and the registered model's record.
        return self.root / "models" / "sampler" / f"beta_{self.tag}"

    @property
    def sampler(self) -> Path:
        # The sampler of params sampling.prior, which every consumer draws from ...
        return self.sampler_dir / "sampler.pt"

    @property
    def alternative_sampler(self) -> Path:
        # ... and the other kind, fitted to the same codes and judged beside it (the ablation).
        return self.sampler_dir / "alternative.pt"

    @property
    def registered(self) -> Path:
        return self.sampler_dir / "mlflow_model.json"

    @property
    def sampler_metrics(self) -> Path:
        return self.metrics_dir / "sampler.json"

    @property
    def checkpoint(self) -> Path:
        # Outside the DVC outputs on purpose: DVC deletes a stage's outputs before it runs it again.
        return self.root / "checkpoints" / f"beta_{self.tag}" / "last.pt"

    @property
    def metrics_dir(self) -> Path:
        # Under metrics/betas/, not metrics/: the report depends on every beta's folder, and metrics/ also holds the
        # stage timings, which the report writes too (a stage may not depend on its own output).
        return self.root / BETA_METRICS / f"beta_{self.tag}"

    @property
    def history(self) -> Path:
        return self.metrics_dir / "history.csv"

    @property
    def steps(self) -> Path:
        # The per-step training curve: every weighted term of the objective, the learning rate, the decoder's σ̂.
        return self.metrics_dir / "steps.csv"

    @property
    def train_metrics(self) -> Path:
        return self.metrics_dir / "train.json"

    @property
    def eval_metrics(self) -> Path:
        return self.metrics_dir / "eval.json"

    @property
    def kl_per_dim(self) -> Path:
        return self.metrics_dir / "kl_per_dim.csv"

    @property
    def factor_response(self) -> Path:
        return self.metrics_dir / "factor_response.csv"

    @property
    def figures(self) -> Path:
        return self.root / "reports" / "figures" / f"beta_{self.tag}"


# The β sweep: one model per swept beta, its measurements, and what sweep_report makes of all of them.
SWEEP_METRICS = Path("metrics") / "sweep.json"
SWEEP_POINTS = Path("metrics") / "sweep_points.csv"  # one row per beta: DVC's plots of the metrics against beta
SWEEP_FIGURES = Path("reports") / "sweep"


@dataclass(frozen=True)
class SweepPaths(ModelFolder):
    """Files of one point of the β sweep (tag = the foreach item as DVC prints it): stage sweep@<tag> with the
    top-level seed, or with a seed of sweep.spread_seeds stage sweep_seed@<tag>-<seed>."""

    tag: str
    seed: int | None = None  # None: the top-level seed

    @property
    def name(self) -> str:
        return f"beta_{self.tag}" if self.seed is None else f"beta_{self.tag}_seed_{self.seed}"

    @property
    def stage(self) -> str:
        return f"sweep@{self.tag}" if self.seed is None else f"sweep_seed@{self.tag}-{self.seed}"

    @property
    def eval_stage(self) -> str:
        return f"sweep_eval@{self.tag}" if self.seed is None else f"sweep_seed_eval@{self.tag}-{self.seed}"

    @property
    def model_dir(self) -> Path:
        return Path("models") / "sweep" / self.name

    @property
    def metrics_dir(self) -> Path:
        return Path("metrics") / "sweep" / self.name

    @property
    def history(self) -> Path:
        return self.metrics_dir / "history.csv"

    @property
    def point(self) -> Path:
        return self.metrics_dir / "point.json"

    @property
    def kl_per_dim(self) -> Path:
        return self.metrics_dir / "kl_per_dim.csv"


# The control study on the rendered dataset of known factors: one model per (beta, seed), and what control_eval
# writes from all of them.
CONTROL_MODELS = Path("models") / "control"
CONTROL_METRICS = Path("metrics") / "control.json"
CONTROL_POINTS = Path("metrics") / "control_points.csv"  # one row per (beta, seed): DVC's plot of MIG against beta
CONTROL_FIGURES = Path("reports") / "control"


@dataclass(frozen=True)
class ControlPaths(ModelFolder):
    """Files of one control model, stage control@<beta>-<seed> (tag = the matrix's beta as DVC prints it)."""

    tag: str
    seed: int

    @property
    def stage(self) -> str:
        return f"control@{self.tag}-{self.seed}"

    @property
    def model_dir(self) -> Path:
        return CONTROL_MODELS / f"beta_{self.tag}_seed_{self.seed}"

    @property
    def history(self) -> Path:
        return Path("metrics") / "control" / f"beta_{self.tag}_seed_{self.seed}.csv"


def find_beta(beta: str, root: Path = Path(".")) -> BetaPaths:
    """The paths of a trained beta, for a beta as a user types it: the tag as typed, else as DVC prints it ('5'
    for 5.0, '0.5'); raises FileNotFoundError naming the trained betas when there is no model."""
    tags = [beta]
    try:
        tags += [f"{float(beta):g}", str(float(beta))]
    except ValueError:
        raise ValueError(f"--beta must be a number, got {beta!r}") from None
    for tag in dict.fromkeys(tags):  # ordered, without duplicates
        if BetaPaths(tag, root).model.is_file():
            return BetaPaths(tag, root)
    trained = sorted(p.parent.name for p in (root / "models").glob("beta_*/model.pt")) or ["none"]
    raise FileNotFoundError(f"no model for β = {beta}: {BetaPaths(tags[0], root).model} not found "
                            f"(trained here: {', '.join(trained)}; run dvc repro)")


def repo_root() -> Path:
    """The repository the pipeline belongs to; for a queued `dvc exp run` (a copy under .dvc/tmp/exps) the
    original repository, so that every experiment writes to the same MLflow store."""
    cwd = Path.cwd().resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


