"""What the summary stages of the two studies share (sweep_report, control_eval): their figures saved and logged,
with the study's summary, to the study's parent MLflow run (stages/study.py trains the runs nested under it)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vaelab import layout, plots, storage, tracking


def publish(params, group: str, figures: Mapping[str, plots.plt.Figure], folder: Path, summary: Path,
            metrics: Mapping[str, float] | None = None) -> None:
    """Save `figures` (file name -> figure) as PNGs under `folder`, each written whole or not at all, and log them,
    the `summary` file and `metrics` to the parent run of `group` (tracking.SWEEP, tracking.CONTROL_STUDY)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        with storage.atomic_path(folder / name) as tmp:
            plots.save(fig, tmp)
    uri = tracking.resolve_uri(params.tracking.uri, layout.repo_root())
    parent = tracking.parent_run(uri, params.tracking.experiment, group)
    with tracking.run(uri, params.tracking.experiment, group, run_id=parent):
        if metrics:
            tracking.log_metrics(dict(metrics))
        for name in figures:
            tracking.log_artifact(folder / name, "figures")
        tracking.log_artifact(summary)
