"""Where every stage reads and writes: the repository layout shared by dvc.yaml and the stage scripts."""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vaelab.params import ParamsError, Params, load_params

PARAMS_FILE = Path("params.yaml")
BATCHES = Path("cifar-10-batches-py")

# The cross-beta figures of the report stage.
COMPARISON = Path("reports") / "comparison"
# Results of params.yaml's presets (python -m vaelab.stages.preset NAME): small, git-tracked, read by the report.
PRESET_RESULTS = Path("reports") / "presets"


def preset_results_file(name: str) -> Path:
    """Where a preset's measured numbers are written (and read by the report stage)."""
    return PRESET_RESULTS / f"{name}.json"


@dataclass(frozen=True)
class ClassifierPaths:
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
    def run_file(self) -> Path:
        return self.model_dir / "mlflow_run.json"

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
class BetaPaths:
    """Files of one beta's model, as declared in dvc.yaml (tag = the foreach item as DVC prints it); a preset's
    runs keep the same layout under root = presets/<name>."""

    tag: str
    root: Path = Path(".")

    @property
    def model_dir(self) -> Path:
        return self.root / "models" / f"beta_{self.tag}"

    @property
    def model(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def sampler_dir(self) -> Path:
        # Stage sampler@<beta>: the ex-post density on the training codes, which evaluate, figures, the CLI and the
        # registered MLflow model all draw from, and the registered model's record.
        return self.root / "models" / "sampler" / f"beta_{self.tag}"

    @property
    def sampler(self) -> Path:
        return self.sampler_dir / "sampler.pt"

    @property
    def registered(self) -> Path:
        return self.sampler_dir / "mlflow_model.json"

    @property
    def sampler_metrics(self) -> Path:
        return self.metrics_dir / "sampler.json"

    @property
    def run_file(self) -> Path:
        return self.model_dir / "mlflow_run.json"

    @property
    def checkpoint(self) -> Path:
        # Outside the DVC outputs on purpose: DVC deletes a stage's outputs before it runs it again.
        return self.root / "checkpoints" / f"beta_{self.tag}" / "last.pt"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics" / f"beta_{self.tag}"

    @property
    def history(self) -> Path:
        return self.metrics_dir / "history.csv"

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


def sampler_settings(params: Params) -> dict[str, int]:
    """What sampler@<beta> fits the ex-post mixture with: saved beside it, checked by every stage that draws from
    it."""
    return {"components": params.sampling.gmm_components, "iterations": params.sampling.gmm_iterations,
            "seed": params.seed}


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


def beta_arg(argv: list[str] | None, params: Params, description: str) -> tuple[float, BetaPaths]:
    """Parse `--beta B` (the foreach item), check it is listed in train.betas, return it and its paths."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--beta", required=True, help="a value listed in params.yaml train.betas")
    args = parser.parse_args(argv)
    try:
        beta = float(args.beta)
    except ValueError:
        raise ParamsError(f"--beta must be a number, got {args.beta!r}") from None
    if not math.isfinite(beta) or beta not in params.train.betas:
        raise ParamsError(f"--beta {args.beta} is not listed in params.yaml train.betas {list(params.train.betas)}")
    return beta, BetaPaths(args.beta)


def beta_stage(name: str, argv: list[str] | None, description: str) -> tuple[Params, float, BetaPaths]:
    """The opening of every per-beta stage: read params.yaml, parse `--beta`, set the thread count.
    Bad params or a beta not listed exit with status 2 and a message naming the problem."""
    try:
        params = load_params(PARAMS_FILE)
        beta, paths = beta_arg(argv, params, description)
    except ParamsError as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    set_threads(params.train.threads)
    return params, beta, paths


def device() -> torch.device:
    """CUDA when present, else CPU (LOCAL_RANK picks the GPU under torchrun)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def set_threads(n: int) -> None:
    """Use n intra-op threads (0 = this machine's cores shared out over torchrun's processes on it)."""
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(n or max(1, per_process))


class StaleSamplerError(RuntimeError):
    """The sampler file was fitted with other settings or to another model's codes; the message says what to run."""


def load_sampler(paths: BetaPaths, params: Params | None = None):
    """The ex-post mixture sampler@<beta> fitted for the model in paths.model. Raises StaleSamplerError when it was
    fitted to another model or (given params) with other settings than params.yaml's."""
    from vaelab import density, storage  # the layout itself needs neither

    state, settings = storage.load_state(paths.sampler)
    expected = {"model_md5": storage.weights_md5(paths.model)}
    if params is not None:
        expected |= sampler_settings(params)
    if {k: settings.get(k) for k in expected} != expected:
        raise StaleSamplerError(f"{paths.sampler} was fitted with {settings}, not with {expected}; run "
                                f"`dvc repro sampler@{paths.tag}` first")
    return density.GaussianMixture(**state)
