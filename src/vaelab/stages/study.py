"""What the training stages of the two studies share (the β sweep and the control set): training one model as an
MLflow run nested under the study's parent run (stages/publish.py is what their summary stages share)."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from vaelab import layout, storage, tracking
from vaelab.params import flatten
from vaelab.precision import precision_name
from vaelab.train import NonFiniteLossError, train


class ModelFiles(Protocol):
    """What a study's per-model layout provides (layout.SweepPaths, layout.ControlPaths)."""

    @property
    def model(self) -> Path: ...

    @property
    def run_file(self) -> Path: ...

    @property
    def history(self) -> Path: ...


def train_nested(params, group: str, model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], beta: float,
                 seed: int, recipe, paths: ModelFiles, config: Mapping, run_name: str, tags: Mapping[str, str],
                 description: str) -> list[dict] | None:
    """Train `model` on data = (train uint8, test uint8) at `recipe` (a TrainConfig) as an MLflow run nested under
    `group`'s parent run; save it with `config` and its run record; the per-epoch history goes to paths.history and
    MLflow. Returns the history, or None after a message on stderr when the store is unusable or the loss diverged."""
    name = tags["dvc_stage"].split("@")[0]
    root = layout.repo_root()
    uri = tracking.resolve_uri(params.tracking.uri, root)
    try:
        tracking.prepare_store(uri, params.tracking.experiment)
    except tracking.TrackingError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return None
    rows: list[dict] = []

    def on_epoch(row: dict, state: dict) -> None:
        rows.append(row)
        storage.write_text(paths.history, pd.DataFrame(rows).to_csv(index=False))
        tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    parent = tracking.parent_run(uri, params.tracking.experiment, group)
    tags = {"mlflow.parentRunId": parent, "git_commit": tracking.git_commit(root), **tags}
    device = next(model.parameters()).device
    try:
        with tracking.run(uri, params.tracking.experiment, run_name, tags=tags, description=description) as run_id:
            tracking.log_params(flatten(config))
            history = train(model, data[0], data[1], beta, recipe, seed, device, on_epoch=on_epoch)
            storage.save_model(paths.model, model, dict(config))
            storage.write_json(paths.run_file, {"run_id": run_id, "run_name": run_name, "tracking_uri": uri,
                                                "experiment": params.tracking.experiment,
                                                "precision": precision_name(device, recipe.bf16)})
    except NonFiniteLossError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return None
    return history
