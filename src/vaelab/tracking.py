"""MLflow: the only module that imports mlflow. One run per beta, reopened by later stages via its run id."""
from __future__ import annotations

import fcntl
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import mlflow
from mlflow.entities import Metric
import numpy as np
import torch

# The parent run under which the control study's runs (control@<beta>-<seed>) nest.
CONTROL_STUDY = "control-study"
# The parent run of the β sweep's runs (sweep@<beta>, sweep_seed@<beta>-<seed>).
SWEEP = "beta-sweep"
# What each parent run's description says (shown by the MLflow UI above the nested runs).
GROUPS = {
    SWEEP: "The β sweep: the model section's VAE trained per β at the sweep's cheap recipe (stages sweep@<β>, and "
           "sweep_seed@<β>-<seed> for the seed spread), measured by sweep_eval, drawn by sweep_report.",
    CONTROL_STUDY: "The control study: VAEs on rendered images of six known factors, one per β and seed (stages "
                   "control@<β>-<seed>), scored by MIG and DCI in control_eval.",
}


def resolve_uri(configured: str, repo_root: Path) -> str:
    """Tracking URI: $MLFLOW_TRACKING_URI, else params' tracking.uri, else sqlite:///<repo_root>/mlflow.db."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if configured.strip():
        return configured.strip()
    return f"sqlite:///{(Path(repo_root) / 'mlflow.db').resolve()}"


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached or created; the message names the URI."""


def prepare_store(uri: str, experiment: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any training, if the store at `uri` is unreachable; create the store and the experiment
    if they do not exist yet. A local sqlite store is created under an exclusive file lock, so parallel stages
    (`dvc queue start -j 2`) never race to create or migrate the same database."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme in ("http", "https"):
        probe = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(probe, timeout=timeout_s) as r:  # noqa: S310 - the user's own server
                r.read(64)
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable ({e}); start it, or set "
                                f"tracking.uri / MLFLOW_TRACKING_URI to a reachable store") from None
        _create_experiment(uri, experiment)
        return
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow store {uri}: folder {db.parent} does not exist")
        with open(f"{db}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            _create_experiment(uri, experiment)
        return
    _create_experiment(uri, experiment)


# MLflow 3's UI opens an experiment of unknown kind on its GenAI trace overview; this kind opens the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _create_experiment(uri: str, experiment: str) -> None:
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
    except mlflow.exceptions.MlflowException as e:
        if "already exists" not in str(e):  # created meanwhile by a parallel stage: fine
            raise TrackingError(f"MLflow store {uri}: {e}") from None


def git_commit(cwd: Path) -> str:
    """The checked-out commit (with '-dirty' if the tree has changes), or 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def run(uri: str, experiment: str, run_name: str, run_id: str | None = None,
        tags: Mapping[str, str] | None = None, description: str | None = None) -> Iterator[str]:
    """Start (or, given run_id, reopen) a run and yield its id; a failure inside marks the run FAILED."""
    mlflow.set_tracking_uri(uri)
    if run_id is not None and not run_exists(run_id):
        run_id = None  # the store was reset since training: log into a fresh run of the same name
    if run_id is None:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, description=description,
                          tags=dict(tags or {})) as active:
        yield active.info.run_id


def parent_run(uri: str, experiment: str, group: str) -> str:
    """The id of the one parent run of a group of runs (SWEEP, CONTROL_STUDY), made on first use with the group's
    description: the runs of the group name it in their tag mlflow.parentRunId, so the MLflow UI nests them."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.vaelab_group = '{group}'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    parent = client.create_run(exp_id, run_name=group, tags={"vaelab_group": group,
                                                              "mlflow.note.content": GROUPS[group]})
    client.set_terminated(parent.info.run_id)
    return parent.info.run_id


def run_exists(run_id: str) -> bool:
    """Whether the current tracking store has a run with this id."""
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def set_tags(tags: Mapping[str, str]) -> None:
    """Set tags on the active run."""
    mlflow.set_tags(dict(tags))


def log_params(params: Mapping[str, Any]) -> None:
    """Log flat params (lists become their string form)."""
    mlflow.log_params({k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in params.items()})


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics, at `step` (the epoch) for histories."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def log_rows(rows: Sequence[Mapping[str, float]], step_key: str = "step", prefix: str = "") -> None:
    """Log every finite number of each row at the row's own step (`step_key`), whole rows per request (at most
    MLflow's 1,000 metrics each), so that a kill never leaves a row half logged."""
    client, run_id, now = mlflow.MlflowClient(), mlflow.active_run().info.run_id, int(time.time() * 1000)
    batch: list[Metric] = []
    for r in rows:
        entries = [Metric(prefix + k, float(v), now, int(r[step_key])) for k, v in r.items()
                   if k != step_key and isinstance(v, (int, float)) and math.isfinite(v)]
        if len(batch) + len(entries) > 1000:
            client.log_batch(run_id, metrics=batch)
            batch = []
        batch += entries
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_artifact(path: Path, folder: str | None = None) -> None:
    """Copy a local file into the run's artifacts (under `folder`)."""
    mlflow.log_artifact(str(path), artifact_path=folder)


def log_model(module: torch.nn.Module, input_shape: tuple[int, ...], name: str = "model") -> str:
    """Log a torch module with a zero input example of shape (2, *input_shape) (which also gives it a
    signature); returns the model URI (models:/...). Pickled with this package's source attached (code_paths),
    so a loaded model is the full object (a Codec keeps `encode`; torch.export's pt2 would keep only forward)
    and loads where vaelab is not installed."""
    example = np.zeros((2, *input_shape), dtype=np.float32)
    package = Path(sys.modules[type(module).__module__.split(".")[0]].__file__).parent
    info = mlflow.pytorch.log_model(
        module.cpu().eval(),
        name=name,
        input_example=example,
        serialization_format="pickle",
        code_paths=[str(package)],
        # Explicit requirements: inferring them would import the model in a subprocess, slowly.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pyyaml"],
    )
    return info.model_uri


def model_alias(beta: float) -> str:
    """The registry alias of a beta's model: beta-5, beta-0_5 (aliases allow letters, digits, '_' and '-')."""
    return "beta-" + f"{beta:g}".replace(".", "_").replace("+", "")


def register_model(model_uri: str, name: str, alias: str, description: str) -> int:
    """Register a logged model as a new version of `name` (created if needed), point `alias` at it and
    describe it; returns the version number. A retrained beta gets a new version and the alias moves."""
    mv = mlflow.register_model(model_uri, name)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, alias, mv.version)
    client.update_model_version(name, mv.version, description=description)
    return int(mv.version)


def set_description(text: str) -> None:
    """Set the active run's description (shown on the run page and in the runs table of the MLflow UI)."""
    mlflow.set_tag("mlflow.note.content", text)


def model_versions(uri: str, name: str) -> list[dict[str, Any]]:
    """Versions of a registered model as dicts of version, run_id, aliases and description."""
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    # search results may omit aliases: read each version in full
    found = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name = '{name}'")]
    return sorted(({"version": int(v.version), "run_id": v.run_id, "aliases": sorted(v.aliases),
                    "description": v.description, "source": v.source} for v in found), key=lambda v: v["version"])


def find_runs(uri: str, experiment: str) -> list[dict[str, Any]]:
    """All runs of an experiment as dicts of name, status, params and metrics (for tests and reports)."""
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    return [{"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "name": r.info.run_name,
             "status": r.info.status,
             "params": dict(r.data.params), "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)}
            for r in runs]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of a run."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def load_model(model_uri: str, uri: str) -> torch.nn.Module:
    """Load a logged model from the store at `uri` (a VAE's is a Codec: z (B, z) -> images (B, 3, 32, 32) in
    [0, 1], and encode). A missing store, run, model, version or alias raises TrackingError naming the URI."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        # MLflow would silently create an empty store here, then report the model as missing.
        raise TrackingError(f"no MLflow store at {uri} (pass --tracking-uri or set MLFLOW_TRACKING_URI)")
    # A progress bar per artifact download would bury the tool's one-line output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except mlflow.exceptions.MlflowException as e:
        raise TrackingError(f"cannot load {model_uri} from {uri}: {e.message}") from None
    except OSError as e:  # the store lists the model but its artifact files are gone
        raise TrackingError(f"cannot load {model_uri} from {uri}: {type(e).__name__}: {e}") from None
